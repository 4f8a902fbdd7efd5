"""Per level: how the split uses the codebook (usage, perplexity, normalized entropy, dead
codes) and the bitrate it implies (codes/s x log2 K at most; codes/s x entropy in practice)."""

from __future__ import annotations

import math

import numpy as np

from musicflax.eval import statistics
from musicflax.models import metrics, quantizers


def run(ctx, cfg) -> dict:
    del cfg
    if ctx.is_prior:
        return {"skipped": "a prior has no codebook of its own"}
    task, out = ctx.task, ctx.outputs
    ema = quantizers.ema_cluster_sizes(ctx.state.model_state)
    threshold = task.config.model.quantizer.restart_threshold
    size = task.codebook_size
    section = {}
    for level in range(task.model.levels):
        counts = np.bincount(out[f"codes{level}"].ravel(), minlength=size)
        stats = {k: float(v) for k, v in metrics.codebook_stats(
            counts, ema[level] if ema else None, threshold).items()}
        rate = task.codes_per_second(level)
        stats.update(codebook_size=size, codes_per_second=rate,
                     bitrate_max=rate * math.log2(size),
                     bitrate_entropy=rate * stats["normalized_entropy"] * math.log2(size))
        path = ctx.write_path(f"codebook_level{level}.png")
        if path is not None:
            statistics.code_histogram_png(path, counts, f"level {level}: code frequencies")
            stats["figure"] = path.name
        section[f"level{level}"] = stats
    return section
