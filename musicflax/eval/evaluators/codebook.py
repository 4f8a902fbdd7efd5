"""Per level (and per stage of residual VQ): how the split uses the codebook (usage,
perplexity, normalized entropy, dead codes) and the bitrate it implies (codes/s x stages x
log2 K at most; codes/s x the stages' entropies in practice)."""

from __future__ import annotations

import math

import numpy as np

from musicflax.eval import statistics
from musicflax.models import metrics, quantizers


def run(ctx, cfg) -> dict:
    del cfg
    if not ctx.is_vqvae:
        return {"skipped": f"a {ctx.task.config.task} run has no codebook of its own"}
    task, out = ctx.task, ctx.outputs
    ema = quantizers.ema_cluster_sizes(ctx.state.model_state)
    threshold = task.config.model.quantizer.restart_threshold
    section = {}
    for level in range(task.model.levels):
        size = task.codebook_sizes[level]
        codes = out[f"codes{level}"]
        codes = codes.reshape(*codes.shape[:2], -1)  # [N, T, stages]
        rate = task.codes_per_second(level)
        stats = {"codebook_size": size, "stages": codes.shape[-1], "codes_per_second": rate,
                 "bitrate_max": rate * codes.shape[-1] * math.log2(size), "bitrate_entropy": 0.0}
        for stage in range(codes.shape[-1]):
            counts = np.bincount(codes[..., stage].ravel(), minlength=size)
            counts_ema = ema[level] if ema else None
            if counts_ema is not None and counts_ema.ndim == 2:
                counts_ema = counts_ema[stage]
            one = {k: float(v) for k, v in metrics.codebook_stats(counts, counts_ema,
                                                                   threshold).items()}
            stats["bitrate_entropy"] += rate * one["normalized_entropy"] * math.log2(size)
            name = "" if codes.shape[-1] == 1 else f"stage{stage}_"
            path = ctx.write_path(f"codebook_level{level}{'_' + name[:-1] if name else ''}.png")
            if path is not None:
                statistics.code_histogram_png(path, counts, f"level {level} {name[:-1]}: "
                                              "code frequencies")
                one["figure"] = path.name
            if codes.shape[-1] == 1:
                stats.update(one)
            else:
                stats.update({f"stage{stage}/{k}": v for k, v in one.items()})
        section[f"level{level}"] = stats
    if ctx.is_pianoroll:
        # Reference: what a lossless note-event stream of the same split costs.
        section["note_event_stream"] = statistics.note_event_bits(ctx.windows.data)
    return section
