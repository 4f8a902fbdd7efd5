"""Stage two: a transformer prior over one level's codes of a trained VQ-VAE.

The model's pure parts are musicflax.train.prior_model. The task is handed its VQ-VAE run
(opened by musicflax.train.run at the step the prior is pinned to); the VQ-VAE's codes are
encoded once and cached (musicflax.train.codes).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from musicflax import app
from musicflax.data import input_pipeline
from musicflax.train import codes
from musicflax.train.prior_model import PriorModel
from musicflax.train.task import Task, process_shard


class PriorTask(PriorModel, Task):
    """A prior over the codes of `vqvae_run` at level `config.prior.level`: a top-level prior,
    or with `config.prior.upper_level` (the next coarser level) an upsampler that reads that
    level's codes."""

    def __init__(self, config: ml_collections.ConfigDict, vqvae_run):
        self.config = config
        self.vqvae = vqvae_run
        self.level = int(config.prior.level)
        self.upper_level = int(config.prior.get("upper_level", -1))
        hops = vqvae_run.task.model.hops
        if not 0 <= self.level < len(hops):
            raise app.UserError(f"prior.level={self.level}: the VQ-VAE has levels "
                                f"0..{len(hops) - 1}")
        self._codes = {}
        self.pitch_shift = int(config.prior.get("pitch_shift", 0))
        if self.pitch_shift and vqvae_run.config.data.representation != "pianoroll":
            raise app.UserError("prior.pitch_shift transposes piano-rolls; this VQ-VAE reads "
                                f"{vqvae_run.config.data.representation}s")
        self.train_codes = self.training_codes(self.level)
        self.vocab = self.train_codes.vocab
        self.codes_per_second = self.train_codes.codes_per_second
        upper_vocab, self.upper_hop = 0, 1
        if self.upper_level >= 0:
            if self.upper_level != self.level + 1 or self.upper_level >= len(hops):
                raise app.UserError(f"prior.upper_level={self.upper_level}: an upsampler of "
                                    f"level {self.level} reads level {self.level + 1}")
            upper = self.training_codes(self.upper_level)
            if upper.stages != 1:
                raise app.UserError(f"level {self.upper_level} has {upper.stages} codes a "
                                    "position (residual VQ): an upsampler reads one")
            upper_vocab = upper.vocab_size
            # This level's tokens per coarse code: the ratio of hops, times its stages.
            self.upper_hop = hops[self.upper_level] // hops[self.level] * self.train_codes.stages
        super().__init__(config, self.train_codes.vocab_size, len(self.vocab["composers"]),
                         len(self.vocab["ensembles"]), upper_vocab, self.upper_hop,
                         self.train_codes.stages)

    @property
    def align(self) -> int:
        """Tokens that stay together: a coarse code's (upsampler) or a position's stages."""
        return self.upper_hop if self.upper_level >= 0 else self.train_codes.stages

    def codes(self, split: str, data: ml_collections.ConfigDict | None = None,
              level: int | None = None) -> codes.CodeSet:
        """The VQ-VAE's codes of a split at a level (default this prior's; of its own data,
        or of `data`), loaded once."""
        level = self.level if level is None else level
        key = (split, level, None if data is None else data.to_json(sort_keys=True))
        if key not in self._codes:
            self._codes[key] = codes.encode_split(self.vqvae, split, level, data)
        return self._codes[key]

    def training_codes(self, level: int) -> codes.CodeSet:
        """What the prior trains on at a level: the train split's codes, and with
        prior.pitch_shift those of its transpositions after them."""
        if not self.pitch_shift:
            return self.codes("train", level=level)
        key = ("train", level, "transposed")
        if key not in self._codes:
            self._codes[key] = codes.concatenate(
                [self.codes("train", level=level)] +
                [codes.encode_split(self.vqvae, "train", level, transpose=t)
                 for t in range(-self.pitch_shift, self.pitch_shift + 1) if t])
        return self._codes[key]

    def codesets(self) -> list[codes.CodeSet]:
        return [self.codes(s) for s in ("train", "validation")]

    def data_record(self) -> dict:
        return {"codes_of": str(self.vqvae.workdir), "vqvae_step": int(self.vqvae.state.step),
                "level": self.level, "upper_level": self.upper_level,
                **self.vqvae.task.data_record()}

    def _windows(self, split: str, hop: int, train: bool,
                 data: ml_collections.ConfigDict | None = None) -> input_pipeline.CodeWindows:
        if train:
            main = self.train_codes
            upper = self.training_codes(self.upper_level) if self.upper_level >= 0 else None
        else:
            main = self.codes(split, data)
            upper = self.codes(split, data, self.upper_level) if self.upper_level >= 0 else None
        return input_pipeline.CodeWindows(main, self.length, hop, train, upper, self.upper_hop)

    # -- evaluation ------------------------------------------------------------------------
    def eval_windows(self, split: str, data: ml_collections.ConfigDict | None = None
                     ) -> input_pipeline.CodeWindows:
        """Non-overlapping windows of `max_len` codes over a split's code sequences."""
        return self._windows(split, self.length, False, data)

    def tokens_to_codes(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens [N, L] -> the VQ-VAE's codes of this level, [N, L] or [N, L / stages,
        stages] for residual VQ (token s*K + c is code c of stage s)."""
        stages = self.train_codes.stages
        if stages == 1:
            return np.asarray(tokens)
        tokens = np.asarray(tokens).reshape(len(tokens), -1, stages)
        return tokens - np.arange(stages) * (self.train_codes.vocab_size // stages)

    def decode(self, code_batch: np.ndarray) -> list[dict]:
        """Tokens [N, L] -> per sample a dict: roll/onsets (piano-roll) or wave (waveform)."""
        vq_config, vq_task, vq_state = self.vqvae.config, self.vqvae.task, self.vqvae.state
        out = vq_task.model.apply({"params": vq_state.params, **vq_state.model_state},
                                  jnp.asarray(self.tokens_to_codes(code_batch)), self.level,
                                  method="decode")
        if vq_config.data.representation == "pianoroll":
            roll, onsets = (np.asarray(x, np.uint8) for x in vq_task.predicted_rolls(out))
            return [{"roll": r, "onsets": o, "frame_rate": vq_config.data.frame_rate,
                     "group_programs": vq_task.groups.programs,
                     "group_names": vq_task.groups.names} for r, o in zip(roll, onsets)]
        return [{"wave": w[:, 0], "sample_rate": vq_config.data.sample_rate}
                for w in np.asarray(out)]

    # -- data ------------------------------------------------------------------------------
    def train_batches(self, start_step: int):
        stream = self._windows("train", int(self.config.prior.train_hop), True)
        ds = stream.train_dataset(self.config.batch_size, self.config.seed, start_step,
                                  shard=process_shard())
        return input_pipeline.as_numpy(ds)
