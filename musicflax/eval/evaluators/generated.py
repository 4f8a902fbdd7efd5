"""Music sampled from the prior (ancestrally through a hierarchy of priors) against the whole
evaluated split: polyphony, pitch range, note density and the pitch-class histogram
(Jensen–Shannon divergence, bits). Held-out pitch ranges are per window of the split, the
generated ones per sample."""

from __future__ import annotations

import numpy as np

from musicflax.eval import statistics
from musicflax.hierarchy import Hierarchy


def run(ctx, cfg) -> dict:
    if not ctx.priors:
        return {"skipped": "no prior given (--config.evals.generated.workdir=...)"}
    hierarchy = Hierarchy(tuple(ctx.priors))
    finest = hierarchy.finest
    vqvae_task = finest.vqvae.task
    if vqvae_task.representation != "pianoroll":
        return {"skipped": "music statistics need a piano-roll VQ-VAE"}
    seconds = float(cfg.get("seconds", 0)) or (vqvae_task.windows(ctx.split).window
                                              / vqvae_task.frame_rate)
    settings = {"temperature": float(cfg.get("temperature", 1.0)),
                "top_p": float(cfg.get("top_p", 1.0))}
    tokens, levels = hierarchy.sample(int(cfg.seed), int(cfg.num_samples), seconds, **settings)
    decoded = finest.decode(tokens[-1])
    frames = int(round(seconds * vqvae_task.frame_rate))
    rolls = np.stack([d["roll"][:frames] for d in decoded])
    onsets = np.stack([d["onsets"][:frames] for d in decoded])
    rate = vqvae_task.frame_rate
    generated = statistics.music_statistics(rolls, rate, onsets)
    held_out = statistics.from_sums(ctx.reference_sums, rate)
    section = {"samples": int(cfg.num_samples), "seconds": seconds, **settings,
               "levels": [lv["level"] for lv in levels],
               "sampling_seconds": sum(lv["seconds"] for lv in levels),
               "generated": generated, "held_out": held_out,
               "held_out_windows": int(ctx.reference_sums["windows"]),
               "pitch_class_js_divergence_bits": statistics.pitch_class_js_divergence(
                   generated["pitch_class_histogram"], held_out["pitch_class_histogram"])}
    for key in ("polyphony", "pitch_range", "note_density"):
        section[f"{key}_relative_difference"] = generated[key] / held_out[key] - 1.0
    return section
