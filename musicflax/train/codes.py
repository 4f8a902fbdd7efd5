"""Code sequences: every recording of a split encoded by a trained VQ-VAE, cached on disk.

The prior trains on these, so the encoder never runs during prior training. A cache lives in
`<vqvae workdir>/codes/step_<N>/<dataset>/level<L>_<split>.npz` and carries a fingerprint:
the VQ-VAE's config hash, checkpoint step, level, window, the dataset's fingerprint and the
split ids. A cache whose fingerprint does not match what is asked for is rebuilt (with a
warning), never silently reused.

A recording's sequence is the concatenation of the codes of its non-overlapping windows, in
time order (the encoder is convolutional, so this is what it sees in training).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from musicflax.data import input_pipeline
from musicflax.train import identity


@dataclasses.dataclass(frozen=True)
class CodeSet:
    """One split's code sequences (concatenated; recording r is codes[offsets[r]:offsets[r+1]]).

    A residual-VQ level has `stages` codes per position; they are flattened position-major
    (stage 0, 1, ... of position 0, then of position 1) and stage s's code c is token s*K + c,
    so that one vocabulary of vocab_size = stages * K tokens covers them all.
    """

    codes: np.ndarray      # [total] int32 tokens
    offsets: np.ndarray    # [R + 1] int64
    ids: np.ndarray        # [R] int32 recording ids
    composer: np.ndarray   # [R] int32
    ensemble: np.ndarray   # [R] int32
    vocab_size: int        # tokens: stages * codebook size
    codes_per_second: float  # tokens per second of music
    vocab: Mapping[str, list]
    stages: int = 1

    def sequences(self) -> list[np.ndarray]:
        return [self.codes[a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]


def encode_split(vqvae_run, split: str, level: int = 0,
                 data: ml_collections.ConfigDict | None = None,
                 batch_size: int = 64, transpose: int = 0) -> CodeSet:
    """Loads the cache for (checkpoint, level, dataset, split), or encodes the split and
    writes it. `vqvae_run` is an opened VQ-VAE run (musicflax.train.run.Run); `data`
    evaluates other data than the run's own (same windows); `transpose` encodes the split's
    piano-rolls moved by that many semitones."""
    config, task, state = vqvae_run.config, vqvae_run.task, vqvae_run.state
    step = int(state.step)
    data_cfg = ml_collections.ConfigDict((data or config.data).to_dict())
    data_cfg.eval_hop_frames = 0  # non-overlapping windows tile each recording
    builder = input_pipeline.get_builder(data_cfg)
    windows = input_pipeline.create_windows(data_cfg, split, train=False, builder=builder)
    windows.transpose = int(transpose)
    fingerprint = {
        "format": 2,  # 2: tokens of residual-VQ stages, vocab_size
        "vqvae_config": identity.config_hash(config), "step": step, "level": level, "split": split,
        "window": windows.window, "dataset": builder.info.metadata["fingerprint"],
        "ids": windows.data.ids.tolist(),
    }
    moved = ""
    if transpose:
        fingerprint["transpose"] = moved = f"{int(transpose):+d}"
    path = (epath.Path(vqvae_run.workdir) / "codes" / f"step_{step}" /
            builder.builder_config.name / f"level{level}_{split}{moved}.npz")
    if path.exists():
        with path.open("rb") as f:
            cached = dict(np.load(f, allow_pickle=False))
        if json.loads(str(cached["fingerprint"])) == fingerprint:
            return _codeset(cached)
        logging.warning("%s does not match the checkpoint or data asked for: rebuilding", path)
    encode = jax.jit(lambda params, batch: task.encode(params, state.model_state, batch)[level])
    rows = []
    for batch in input_pipeline.as_numpy(windows.eval_dataset(batch_size)):
        rows.extend(np.asarray(encode(state.params, batch))[batch["mask"]])
    # Eval batches follow the window table, which is recording-major and time-ordered.
    rows = np.stack(rows)  # [windows, T] or, for residual VQ, [windows, T, stages]
    stages, size = task.level_stages[level], task.codebook_sizes[level]
    if stages > 1:
        rows = rows + np.arange(stages) * size
    recordings = np.unique(windows.rec)
    sequences = [rows[windows.rec == r].reshape(-1).astype(np.int32) for r in recordings]
    arrays = {
        "codes": np.concatenate(sequences),
        "offsets": np.concatenate([[0], np.cumsum([len(s) for s in sequences])]).astype(np.int64),
        "ids": windows.data.ids[recordings], "composer": windows.data.composer[recordings],
        "ensemble": windows.data.ensemble[recordings],
        "vocab_size": np.int64(size * stages), "stages": np.int64(stages),
        "codes_per_second": np.float64(task.codes_per_second(level) * stages),
        "vocab": np.asarray(json.dumps(dict(windows.data.vocab))),
        "fingerprint": np.asarray(json.dumps(fingerprint)),
    }
    if jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / (path.name + ".tmp")
        with tmp.open("wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)  # atomic: a killed run never leaves half a cache behind
        logging.info("encoded %s (%d recordings, %d codes) -> %s", split, len(sequences),
                     len(arrays["codes"]), path)
    return _codeset(arrays)


def concatenate(codesets: list[CodeSet]) -> CodeSet:
    """One CodeSet holding the recordings of all of `codesets` (the same level's), in order."""
    first = codesets[0]
    lengths = np.concatenate([np.diff(c.offsets) for c in codesets])
    return dataclasses.replace(
        first, codes=np.concatenate([c.codes for c in codesets]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        **{k: np.concatenate([getattr(c, k) for c in codesets])
           for k in ("ids", "composer", "ensemble")})


def _codeset(arrays: Mapping[str, np.ndarray]) -> CodeSet:
    return CodeSet(codes=np.asarray(arrays["codes"], np.int32),
                   offsets=np.asarray(arrays["offsets"], np.int64),
                   ids=np.asarray(arrays["ids"], np.int32),
                   composer=np.asarray(arrays["composer"], np.int32),
                   ensemble=np.asarray(arrays["ensemble"], np.int32),
                   vocab_size=int(arrays["vocab_size"]), stages=int(arrays["stages"]),
                   codes_per_second=float(arrays["codes_per_second"]),
                   vocab=json.loads(str(arrays["vocab"])))
