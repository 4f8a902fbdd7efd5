"""Pictures of the latent space: a PCA of window embeddings coloured by composer (PNG), and
for piano-rolls an interpolation between two windows of different recordings decoded to
MIDI. Files only: it runs where the evaluation writes files (offline)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from musicflax.audio import midi
from musicflax.eval import statistics


def run(ctx, cfg) -> dict:
    if not ctx.is_vqvae:
        return {"skipped": f"a {ctx.task.config.task} run has no latent space of its own"}
    if ctx.out_dir is None:
        return {"skipped": "latent-space figures are written by offline evaluation"}
    out = ctx.outputs
    chosen = np.linspace(0, len(out["pooled0"]) - 1, min(cfg.max_points, len(out["pooled0"])))
    chosen = chosen.round().astype(int)
    path = ctx.write_path("latent_pca_composer.png")
    statistics.scatter_png(path, statistics.pca_2d(out["pooled0"][chosen]),
                           out["composer"][chosen], ctx.windows.data.vocab["composers"],
                           "window embeddings (PCA)")
    section = {"pca_figure": path.name, "points": int(len(chosen))}
    if ctx.is_pianoroll:
        section["interpolation_midi"] = interpolate_to_midi(ctx, cfg.interpolation_steps)
    return section


def interpolate_to_midi(ctx, steps: int) -> str:
    """Decodes latents on the line between the split's first window and the first window of
    another recording, one after the other in time, read back as the evaluation reads notes."""
    task, state = ctx.task, ctx.state
    batch = next(ctx.batches(ctx.windows))
    ids = batch["recording_id"]
    other = int(np.flatnonzero(ids != ids[0])[0]) if (ids != ids[0]).any() else 1
    variables = {"params": state.params, **state.model_state}
    z = task.model.apply(variables, task.model_inputs(batch), method="embed")[0]
    alphas = np.linspace(0.0, 1.0, steps)[:, None, None]
    line = (1 - alphas) * np.asarray(z[0]) + alphas * np.asarray(z[other])
    logits = task.model.apply(variables, jnp.asarray(line), 0, method="decode_vectors")
    roll, onsets = (np.asarray(a) for a in task.predicted_rolls(logits))
    notes = task.read_notes(roll.reshape(-1, roll.shape[-1]),
                            onsets.reshape(-1, onsets.shape[-1]))
    path = ctx.write_path("interpolation.mid")
    midi.write_midi(path, **notes)
    return path.name
