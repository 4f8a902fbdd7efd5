"""Reconstruction metrics on piano-rolls, as sums that add up over batches (pure jnp).

Each function returns true-positive / false-positive / false-negative counts; `f1` turns
accumulated counts into precision, recall and F1. Counting (rather than averaging per batch)
makes the result exact over a whole split and independent of batch size and padding.

Note-onset matching follows mir_eval's transcription rule at frame resolution: a predicted
onset matches a reference onset of the same channel within ±`tolerance` frames, each onset
at most once. Matches are counted as min(predictions near a reference, references near a
prediction): exact whenever onsets of one channel are more than 2*tolerance frames apart
(repeated notes at 31 fps are), and never below the one-to-one count otherwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _masked_total(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Sum of a [B, T, C] map over the windows that `mask` [B] keeps (all without a mask)."""
    per_window = jnp.sum(x, axis=(1, 2)).astype(jnp.float32)
    return jnp.sum(per_window if mask is None else per_window * mask.astype(jnp.float32))


def frame_counts(pred: jax.Array, ref: jax.Array, mask: jax.Array | None = None) -> dict:
    """Frame-level counts for binary rolls [B, T, C]; mask [B] drops padded windows."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    return {"tp": _masked_total(pred & ref, mask), "fp": _masked_total(pred & ~ref, mask),
            "fn": _masked_total(~pred & ref, mask)}


def onsets_from_roll(roll: jax.Array) -> jax.Array:
    """Frames where a channel switches on (a note starts), for rolls [B, T, C]."""
    roll = roll.astype(bool)
    before = jnp.pad(roll[:, :-1], ((0, 0), (1, 0), (0, 0)))
    return roll & ~before


def pick_onsets(logits: jax.Array, radius: int = 1, threshold: float = 0.5) -> jax.Array:
    """Onsets [B, T, C] (bool) from onset logits by peak picking.

    A frame is an onset where its probability is the largest within ±`radius` frames (the
    earliest frame wins a tie) and the probability mass within those frames exceeds
    `threshold`. A model unsure of an onset's exact frame spreads its probability over
    neighbours, none of which need pass 0.5 alone; the mass still says an onset is there and
    the peak says where.
    """
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    t = p.shape[1]
    mass, peak = p, jnp.ones(p.shape, bool)
    for s in range(1, radius + 1):
        earlier = jnp.pad(p[:, :t - s], ((0, 0), (s, 0), (0, 0)))
        later = jnp.pad(p[:, s:], ((0, 0), (0, s), (0, 0)))
        mass = mass + earlier + later
        peak = peak & (p > earlier) & (p >= later)
    return peak & (mass > threshold)


def onset_counts(pred_onsets: jax.Array, ref_onsets: jax.Array, tolerance: int = 1,
                 mask: jax.Array | None = None) -> dict:
    """Onset matching within ±tolerance frames per channel, for onset maps [B, T, C]."""
    pred, ref = pred_onsets.astype(bool), ref_onsets.astype(bool)
    t = pred.shape[1]

    def dilate(x):
        out = x
        for s in range(1, tolerance + 1):
            out = out | jnp.pad(x[:, s:], ((0, 0), (0, s), (0, 0))) \
                      | jnp.pad(x[:, :t - s], ((0, 0), (s, 0), (0, 0)))
        return out
    # Matches counted from each side, per window; their minimum is the one-to-one count.
    per_window = lambda x: jnp.sum(x, axis=(1, 2)).astype(jnp.float32)
    tp = jnp.minimum(per_window(pred & dilate(ref)), per_window(ref & dilate(pred)))
    weight = 1.0 if mask is None else mask.astype(jnp.float32)
    tp = jnp.sum(tp * weight)
    return {"tp": tp, "fp": _masked_total(pred, mask) - tp,
            "fn": _masked_total(ref, mask) - tp}


def f1(counts: dict, prefix: str = "") -> dict[str, float]:
    tp, fp, fn = (float(counts[k]) for k in ("tp", "fp", "fn"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {f"{prefix}precision": precision, f"{prefix}recall": recall, f"{prefix}f1": score}


def histogram_stats(counts, ema_counts=None, threshold: float = 1.0) -> dict[str, float]:
    """Codebook statistics from code counts [K] accumulated over a whole split.

    usage: fraction of the K codes used; perplexity: exp(entropy) of the code distribution
    (K when uniform); normalized_entropy: entropy / log K; dead_codes: codes whose EMA count
    is under `threshold` (EMA quantizers) or, without EMA counts, codes never used.
    """
    counts = np.asarray(counts, np.float64)
    p = counts / max(counts.sum(), 1.0)
    entropy = float(-np.sum(p[p > 0] * np.log(p[p > 0])))
    dead = (np.asarray(ema_counts) < threshold) if ema_counts is not None else counts == 0
    return {"usage": float(np.mean(counts > 0)), "perplexity": float(np.exp(entropy)),
            "normalized_entropy": entropy / float(np.log(len(counts))),
            "dead_codes": float(np.sum(dead)), "dead_fraction": float(np.mean(dead))}
