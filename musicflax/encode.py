"""Encodes a split with a trained VQ-VAE into code sequences, cached for the prior.

    python -m musicflax.encode --workdir=workdirs/default --split=train [--level=0 --step=N]

Prior training calls the same function itself, so running this first is optional; it is
handy to inspect the codes or to encode the test split. The cache is keyed by the
checkpoint step and fingerprinted (config hash, level, window, split ids): a mismatched
cache is rebuilt, never reused.
"""

from __future__ import annotations

import numpy as np
from absl import flags

from musicflax import app

_WORKDIR = flags.DEFINE_string("workdir", None, "VQ-VAE workdir.")
_SPLIT = flags.DEFINE_enum("split", "train", ["train", "validation", "test"], "Split.")
_LEVEL = flags.DEFINE_integer("level", 0, "VQ-VAE level.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.mark_flags_as_required(["workdir"])


def entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / len(symbols)
    return float(-np.sum(p[p > 0] * np.log2(p[p > 0])))


def main(argv):
    del argv
    from musicflax.train import codes, run  # pylint: disable=g-import-not-at-top
    codeset = codes.encode_split(run.open_run(_WORKDIR.value, _STEP.value), _SPLIT.value,
                                 _LEVEL.value)
    lengths = np.diff(codeset.offsets)
    used = len(np.unique(codeset.codes))
    print(f"{_SPLIT.value}: {len(codeset.ids)} recordings, {len(codeset.codes)} codes "
          f"({codeset.codes_per_second:.2f}/s, {lengths.min()}..{lengths.max()} per recording), "
          f"{used}/{codeset.vocab_size} codes used; {entropy_bits(codeset.codes):.3f} "
          "bits/code unigram entropy")


if __name__ == "__main__":
    app.run(main)
