"""What makes two configs the same run: every field but those that only extend or observe a
run, or lay the same state out on other devices. Resuming compares this; a stage pinned to
another (a prior on its VQ-VAE) and a code cache record its hash."""

from __future__ import annotations

import hashlib
import json

import ml_collections

# Fields a resumed run may change without changing its data stream or its model.
RESUMABLE_CHANGES = ("num_train_steps", "train_seconds", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "image_every", "image_windows", "best_metric",
                     "best_mode", "mesh.", "distributed.", "param_sharding", "evals.",
                     "data.tfds_data_dir", "data.num_threads", "data.prefetch")


def flat(config: ml_collections.ConfigDict) -> dict:
    """'a.b.c' -> value for every leaf of a config."""
    def walk(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(walk(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out
    return walk(json.loads(config.to_json()))


def _identity(config: ml_collections.ConfigDict) -> dict:
    return {k: v for k, v in flat(config).items() if not k.startswith(RESUMABLE_CHANGES)}


def config_changes(saved: ml_collections.ConfigDict, new: ml_collections.ConfigDict) -> list[str]:
    """Fields whose values differ and that a resumed run may not change."""
    old, now = _identity(saved), _identity(new)
    return sorted(k for k in old.keys() | now.keys() if old.get(k) != now.get(k))


def config_hash(config: ml_collections.ConfigDict) -> str:
    """A hash of the fields that make the run what it is (not how long or where it runs)."""
    return hashlib.sha256(json.dumps(_identity(config), sort_keys=True).encode()).hexdigest()[:16]
