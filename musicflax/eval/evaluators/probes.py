"""Linear probes on frozen latents: composer and ensemble per level (accuracy and balanced
accuracy beside the majority class), and for waveform latents frame-level multi-pitch
average precision (MusicNet's metric) beside the same probe on raw log-frequency spectra.

Probes are fit on train windows drawn evenly across all train recordings (at most
`max_train_windows`) and scored on every window of the evaluated split.
"""

from __future__ import annotations

import collections

import numpy as np

from musicflax.eval import probes as probe_lib


def run(ctx, cfg) -> dict:
    if ctx.is_prior:
        return {"skipped": "probes read a VQ-VAE's latents"}
    ctx.probe_windows = int(cfg.max_train_windows)
    train, held = ctx.probe_outputs, ctx.outputs
    vocab = ctx.windows.data.vocab
    section = {}
    for label, names in (("composer", vocab["composers"]), ("ensemble", vocab["ensembles"])):
        for level in range(ctx.levels):
            if f"pooled{level}" not in train:  # a score-to-audio model has no latents
                continue
            probe = probe_lib.train_linear_probe(train[f"pooled{level}"], train[label],
                                                 len(names), l2=cfg.l2)
            predicted = probe.predict(held[f"pooled{level}"])
            majority = probe_lib.majority_class(train[label])
            section[f"{label}_level{level}"] = {
                "accuracy": probe_lib.accuracy(predicted, held[label]),
                "balanced_accuracy": probe_lib.balanced_accuracy(predicted, held[label]),
                "majority_baseline": probe_lib.accuracy(np.full(len(predicted), majority),
                                                        held[label]),
                "majority_balanced_accuracy": probe_lib.balanced_accuracy(
                    np.full(len(predicted), majority), held[label]),
                "classes": len(names), "train_windows": int(len(train[label])),
                "train_recordings": int(len(np.unique(train["recording_id"]))),
                "eval_windows": int(len(held[label])),
                "train_class_counts": _counts(train[label], names),
                "eval_class_counts": _counts(held[label], names)}
    if not ctx.is_pianoroll:
        section["pitch"] = pitch_probe(ctx, cfg, train, held)
    return section


def _counts(labels, names) -> dict[str, int]:
    counts = collections.Counter(np.asarray(labels).tolist())
    return {names[k]: int(v) for k, v in sorted(counts.items())}


def _frames(outputs, key: str, limit: int) -> np.ndarray:
    """[N, F, D] -> [N * F, D], at most `limit` rows evenly spaced (deterministic)."""
    flat = outputs[key].reshape(-1, outputs[key].shape[-1])
    if limit and len(flat) > limit:
        flat = flat[np.linspace(0, len(flat) - 1, limit).round().astype(int)]
    return flat


def pitch_probe(ctx, cfg, train, held) -> dict:
    """Multi-pitch average precision of multi-label probes from each level's latents and from
    raw log-frequency spectra (semitone resolution, see audio_metrics), and of the
    raw-spectrum probe on each level's reconstructed audio (`level<L>_audio_...`): how much
    of the labelled pitches a transcriber hears in it; for score-to-audio, in its rendition
    of the labelled score."""
    limit = int(cfg.get("pitch_train_frames", 20000))
    fit_labels = np.unpackbits(_frames(train, "pitch_labels", limit), axis=-1, count=128)
    eval_labels = np.unpackbits(_frames(held, "pitch_labels", 0), axis=-1, count=128)
    features = {f"level{l}": f"frame_latents{l}" for l in range(ctx.levels)
                if f"frame_latents{l}" in train}
    features["raw_spectrum"] = "raw_frames"
    out = {"train_frames": int(len(fit_labels)), "eval_frames": int(len(eval_labels))}
    for name, key in features.items():
        probe = probe_lib.train_multilabel_probe(_frames(train, key, limit), fit_labels,
                                                 l2=cfg.l2)
        out[f"{name}_average_precision"] = probe_lib.average_precision(
            eval_labels, probe.predict_proba(_frames(held, key, 0)))
    for level in range(ctx.levels):  # `probe` is the raw-spectrum one, fitted last
        out[f"level{level}_audio_average_precision"] = probe_lib.average_precision(
            eval_labels, probe.predict_proba(_frames(held, f"recon_frames{level}", 0)))
    return out
