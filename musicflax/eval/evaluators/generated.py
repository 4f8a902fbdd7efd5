"""Music sampled from the prior against the whole evaluated split: polyphony, pitch range,
note density and the pitch-class histogram (Jensen–Shannon divergence, bits)."""

from __future__ import annotations

import math

import jax
import numpy as np

from musicflax.eval import statistics


def run(ctx, cfg) -> dict:
    prior = ctx.prior
    if prior is None:
        return {"skipped": "no prior given (--config.evals.generated.workdir=...)"}
    vqvae_task = prior.task.vqvae.task
    if vqvae_task.representation != "pianoroll":
        return {"skipped": "music statistics need a piano-roll VQ-VAE"}
    seconds = float(cfg.get("seconds", 0)) or (vqvae_task.windows(ctx.split).window
                                              / vqvae_task.frame_rate)
    length = math.ceil(seconds * prior.task.codes_per_second)
    sampled = prior.task.model.sample(prior.state.params, jax.random.PRNGKey(cfg.seed),
                                      cfg.num_samples, length)
    decoded = prior.task.decode(np.asarray(sampled))
    rolls = np.stack([d["roll"] for d in decoded])
    onsets = np.stack([d["onsets"] for d in decoded])
    rate = vqvae_task.frame_rate
    generated = statistics.music_statistics(rolls, rate, onsets)
    held_out = statistics.from_sums(ctx.reference_sums, rate)
    section = {"samples": int(cfg.num_samples), "seconds": seconds,
               "generated": generated, "held_out": held_out,
               "held_out_windows": int(ctx.reference_sums["windows"]),
               "pitch_class_js_divergence_bits": statistics.pitch_class_js_divergence(
                   generated["pitch_class_histogram"], held_out["pitch_class_histogram"])}
    for key in ("polyphony", "pitch_range", "note_density"):
        section[f"{key}_relative_difference"] = generated[key] / held_out[key] - 1.0
    return section
