"""Stage two: a transformer prior over one level's codes of a trained VQ-VAE.

The model's pure parts are musicflax.train.prior_model. The task is handed its VQ-VAE run
(opened by musicflax.train.run at the step the prior is pinned to); the VQ-VAE's codes are
encoded once and cached (musicflax.train.codes).
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from musicflax.data import input_pipeline
from musicflax.train import codes
from musicflax.train.prior_model import PriorModel
from musicflax.train.task import Task, process_shard


class PriorTask(PriorModel, Task):
    """A prior over the codes of `vqvae_run` at level `config.prior.level`."""

    def __init__(self, config: ml_collections.ConfigDict, vqvae_run):
        self.config = config
        self.vqvae = vqvae_run
        self.level = int(config.prior.level)
        self._codes = {}
        self.train_codes = self.codes("train")
        self.vocab = self.train_codes.vocab
        self.codes_per_second = self.train_codes.codes_per_second
        super().__init__(config, self.train_codes.codebook_size, len(self.vocab["composers"]),
                         len(self.vocab["ensembles"]))

    def codes(self, split: str, data: ml_collections.ConfigDict | None = None) -> codes.CodeSet:
        """The VQ-VAE's codes of a split (of its own data, or of `data`), loaded once."""
        key = (split, None if data is None else data.to_json(sort_keys=True))
        if key not in self._codes:
            self._codes[key] = codes.encode_split(self.vqvae, split, self.level, data)
        return self._codes[key]

    def codesets(self) -> list[codes.CodeSet]:
        return [self.codes(s) for s in ("train", "validation")]

    def data_record(self) -> dict:
        return {"codes_of": str(self.vqvae.workdir), "vqvae_step": int(self.vqvae.state.step),
                "level": self.level, **self.vqvae.task.data_record()}

    # -- evaluation ------------------------------------------------------------------------
    def eval_windows(self, split: str, codeset: codes.CodeSet | None = None
                     ) -> input_pipeline.CodeWindows:
        """Non-overlapping windows of `max_len` codes over a split's code sequences."""
        return input_pipeline.CodeWindows(codeset or self.codes(split), self.length,
                                          self.length, train=False)

    def decode(self, code_batch: np.ndarray) -> list[dict]:
        """Codes [N, L] -> per sample a dict: roll/onsets (piano-roll) or wave (waveform)."""
        vq_config, vq_task, vq_state = self.vqvae.config, self.vqvae.task, self.vqvae.state
        out = vq_task.model.apply({"params": vq_state.params, **vq_state.model_state},
                                  jnp.asarray(code_batch), self.level, method="decode")
        if vq_config.data.representation == "pianoroll":
            roll, onsets = (np.asarray(x, np.uint8) for x in vq_task.predicted_rolls(out))
            return [{"roll": r, "onsets": o, "frame_rate": vq_config.data.frame_rate,
                     "group_programs": vq_task.groups.programs,
                     "group_names": vq_task.groups.names} for r, o in zip(roll, onsets)]
        return [{"wave": w[:, 0], "sample_rate": vq_config.data.sample_rate}
                for w in np.asarray(out)]

    # -- data ------------------------------------------------------------------------------
    def train_batches(self, start_step: int):
        stream = input_pipeline.CodeWindows(self.train_codes, self.length,
                                            int(self.config.prior.train_hop), train=True)
        ds = stream.train_dataset(self.config.batch_size, self.config.seed, start_step,
                                  shard=process_shard())
        return input_pipeline.as_numpy(ds)
