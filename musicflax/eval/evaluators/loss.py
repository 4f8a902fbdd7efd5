"""Validation loss: the mean of every per-window loss term over the windows of the split.

Padding rows of the last batch never count, so the number does not depend on batch size.
"""

from __future__ import annotations

import numpy as np


def run(ctx, cfg) -> dict:
    del cfg
    if ctx.is_prior:
        return {"skipped": "a prior's loss is the prior evaluator's bits per code"}
    out = ctx.outputs
    section = {"windows": int(len(out["loss"]))}
    for key in sorted(k for k in out if k == "loss" or k.startswith("loss/")):
        section[key.removeprefix("loss/")] = float(np.mean(out[key]))
    return section
