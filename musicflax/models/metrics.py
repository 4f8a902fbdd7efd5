"""Metrics of piano-rolls and codebooks as pure jnp, for use inside jit (and on host arrays).

Counting functions return true-positive / false-positive / false-negative counts per window,
which add up over batches; `f1` turns summed counts into precision, recall and F1. Counting
(rather than averaging per batch) makes a result exact over a whole split and independent of
batch size and padding.

Onset matching is mir_eval's transcription rule on the frame grid: a predicted onset matches a
reference onset of the same channel (pitch and instrument group) at most `tolerance` frames
away, each onset at most once, as many pairs as possible (a maximum matching). On a line,
matching every onset whose tolerance runs out first with the earliest partner still free is
such a maximum matching, so one scan over time computes it exactly. mir_eval's 50 ms is
`onset_tolerance_frames(frame_rate)` frames (1 at 31.25 fps).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MIR_EVAL_ONSET_SECONDS = 0.05


def onset_tolerance_frames(frame_rate: float, seconds: float = MIR_EVAL_ONSET_SECONDS) -> int:
    """The largest whole number of frames within `seconds` (as mir_eval rounds: 4 decimals)."""
    frames = 0
    while round((frames + 1) / frame_rate, 4) <= seconds:
        frames += 1
    return frames


def _per_window(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Sum of a [B, ...] map per window, [B] float32; windows that `mask` [B] drops count 0."""
    per_window = jnp.sum(x.reshape(x.shape[0], -1), axis=1).astype(jnp.float32)
    return per_window if mask is None else per_window * mask.astype(jnp.float32)


def frame_counts(pred: jax.Array, ref: jax.Array, mask: jax.Array | None = None) -> dict:
    """Frame-level tp/fp/fn per window ([B] each) for binary rolls [B, T, C]; mask [B] zeroes
    padded windows."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    return {"tp": _per_window(pred & ref, mask), "fp": _per_window(pred & ~ref, mask),
            "fn": _per_window(~pred & ref, mask)}


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


def matched_onsets(pred_onsets: jax.Array, ref_onsets: jax.Array, tolerance: int) -> jax.Array:
    """Per window, the size of a maximum one-to-one matching of predicted to reference onsets
    of the same channel within ±tolerance frames. Onset maps [B, T, C] -> [B] float32."""
    pred = jnp.moveaxis(pred_onsets.astype(bool), 1, 0)
    ref = jnp.moveaxis(ref_onsets.astype(bool), 1, 0)
    shape = pred.shape[1:]

    def step(carry, frame):
        # waiting[a]: an unmatched onset `a` frames old (a = 1..tolerance); only one kind can
        # wait at a time (a waiting prediction and reference would have been matched).
        waiting, waiting_is_pred, matches = carry
        p, r = frame
        oldest = jnp.zeros(shape, jnp.int32)
        for age in range(1, tolerance + 1):  # the oldest waiting onset runs out first
            oldest = jnp.where(waiting[age - 1], age, oldest)
        has_wait = oldest > 0
        use_p = has_wait & ~waiting_is_pred & p    # a waiting reference takes this prediction
        use_r = has_wait & waiting_is_pred & r     # a waiting prediction takes this reference
        taken = use_p | use_r
        ages = jnp.arange(1, tolerance + 1).reshape((-1,) + (1,) * len(shape))
        waiting = waiting & ~(taken[None] & (ages == oldest[None]))
        p, r = p & ~use_p, r & ~use_r
        both = p & r
        matches = matches + taken.astype(jnp.float32) + both.astype(jnp.float32)
        p, r = p & ~both, r & ~both
        new = p | r
        waiting_is_pred = jnp.where(new, p, waiting_is_pred)
        # Age everything by a frame; what was `tolerance` frames old can no longer match.
        waiting = jnp.concatenate([new[None], waiting[:-1]], axis=0)
        return (waiting, waiting_is_pred, matches), None

    if tolerance == 0:
        return jnp.sum(pred & ref, axis=(0, 2)).astype(jnp.float32)
    init = (jnp.zeros((tolerance,) + shape, bool), jnp.zeros(shape, bool),
            jnp.zeros(shape, jnp.float32))
    (_, _, matches), _ = lax.scan(step, init, (pred, ref))
    return jnp.sum(matches, axis=-1)


def onset_counts(pred_onsets: jax.Array, ref_onsets: jax.Array, tolerance: int = 1,
                 mask: jax.Array | None = None) -> dict:
    """One-to-one onset matching within ±tolerance frames per channel: tp/fp/fn per window
    ([B] each) for onset maps [B, T, C]; mask [B] zeroes padded windows."""
    tp = matched_onsets(pred_onsets, ref_onsets, tolerance)
    tp = tp if mask is None else tp * mask.astype(jnp.float32)
    return {"tp": tp, "fp": _per_window(pred_onsets.astype(bool), mask) - tp,
            "fn": _per_window(ref_onsets.astype(bool), mask) - tp}


def f1(counts: dict, prefix: str = "") -> dict[str, float]:
    """Precision, recall and F1 from tp/fp/fn counts (summed first; 0 where undefined)."""
    tp, fp, fn = (float(np.sum(np.asarray(counts[k]))) for k in ("tp", "fp", "fn"))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {f"{prefix}precision": precision, f"{prefix}recall": recall, f"{prefix}f1": score}


def codebook_stats(counts: jax.Array, ema_counts: jax.Array | None = None,
                   threshold: float = 1.0) -> dict[str, jax.Array]:
    """Statistics of how codes are used, from code counts [K] (K >= 2), float32 scalars.

    usage: fraction of the K codes used at least once; perplexity: exp of the entropy of the
    code distribution (K when uniform); normalized_entropy: that entropy / log K;
    dead_codes / dead_fraction: codes whose EMA count is under `threshold` (EMA quantizers),
    or without EMA counts, codes never used.
    """
    counts = jnp.asarray(counts, jnp.float32)
    k = counts.shape[0]
    entropy = jnp.sum(jax.scipy.special.entr(counts / jnp.maximum(counts.sum(), 1.0)))
    dead = counts == 0 if ema_counts is None else jnp.asarray(ema_counts) < threshold
    return {"usage": jnp.mean(counts > 0, dtype=jnp.float32), "perplexity": jnp.exp(entropy),
            "normalized_entropy": entropy / math.log(k),
            "dead_codes": jnp.sum(dead, dtype=jnp.float32),
            "dead_fraction": jnp.mean(dead, dtype=jnp.float32)}
