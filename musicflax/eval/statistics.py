"""Music statistics of binary piano-rolls (as sums over batches), a 2-D PCA of features, and
their figures.

Rolls are [T, G * 128] or [N, T, G * 128] with channel = group * 128 + pitch. Pitch statistics
(pitch classes, polyphony, range) look at sounding pitches, so a pitch played by two instrument
groups at once counts once; note density counts onsets per channel, so two instruments starting
the same pitch are two notes. Statistics of rolls without a single note are NaN.

Figures use matplotlib's object API on an Agg canvas, never pyplot (see musicflax.audio.plots).
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import special

from musicflax.audio.plots import NUM_PITCHES

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _windows(rolls) -> np.ndarray:
    """Rolls as bool [N, T, C]."""
    rolls = np.asarray(rolls) >= 0.5
    if rolls.ndim == 2:
        rolls = rolls[None]
    if rolls.ndim != 3 or rolls.shape[-1] % NUM_PITCHES:
        raise ValueError(f"rolls must be [T, G * {NUM_PITCHES}] or [N, T, G * {NUM_PITCHES}], "
                         f"got {rolls.shape}")
    return rolls


def _sounding(rolls) -> np.ndarray:
    """bool [N, T, 128]: whether any group plays each pitch."""
    rolls = _windows(rolls)
    return rolls.reshape(*rolls.shape[:2], -1, NUM_PITCHES).any(axis=2)


def music_sums(rolls, onsets=None) -> dict[str, np.ndarray]:
    """Sufficient statistics of rolls that add up over batches (see `from_sums`).

    onsets (same shape as rolls, >= 0.5 marks an onset) count as given; if None they are the
    frames where a channel switches on, a note sounding from a window's first frame included.
    """
    windows = _windows(rolls)
    sounding = _sounding(windows)
    per_frame = sounding.sum(axis=-1)
    if onsets is None:
        onsets = windows & ~np.pad(windows[:, :-1], ((0, 0), (1, 0), (0, 0)))
    else:
        onsets = _windows(onsets)
    pitches = np.arange(NUM_PITCHES)
    playing = sounding.any(axis=1)                                      # [N, 128]
    has_notes = playing.any(axis=-1)
    highest = np.max(np.where(playing, pitches, -1), axis=-1)
    lowest = np.min(np.where(playing, pitches, NUM_PITCHES), axis=-1)
    per_pitch = sounding.sum(axis=(0, 1))
    return {"sounding_cells": np.float64(per_frame.sum()),
            "active_frames": np.float64((per_frame > 0).sum()),
            "pitch_class_cells": np.bincount(pitches % 12, weights=per_pitch, minlength=12),
            "range_sum": np.float64(np.sum((highest - lowest)[has_notes])),
            "windows_with_notes": np.float64(has_notes.sum()),
            "onsets": np.float64(onsets.sum()),
            "frames": np.float64(windows.shape[0] * windows.shape[1]),
            "windows": np.float64(windows.shape[0])}


def add_sums(a: dict | None, b: dict) -> dict:
    return dict(b) if a is None else {k: a[k] + b[k] for k in a}


def from_sums(sums: dict, frame_rate: float) -> dict:
    """Music statistics from summed `music_sums`; NaN where no note sounds.

    pitch_class_histogram [12] (C first): share of sounding (frame, pitch) cells per class;
    polyphony: mean sounding pitches per frame, over frames with at least one; pitch_range:
    highest minus lowest sounding pitch per window, averaged over windows with notes;
    note_density: onsets per second.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"pitch_class_histogram": sums["pitch_class_cells"] / sums["pitch_class_cells"].sum(),
                "polyphony": float(sums["sounding_cells"] / sums["active_frames"])
                if sums["active_frames"] else float("nan"),
                "pitch_range": float(sums["range_sum"] / sums["windows_with_notes"])
                if sums["windows_with_notes"] else float("nan"),
                "note_density": float(sums["onsets"] / (sums["frames"] / frame_rate))}


def music_statistics(rolls, frame_rate: float, onsets=None) -> dict:
    """`from_sums` of one set of rolls."""
    return from_sums(music_sums(rolls, onsets), frame_rate)


def pitch_class_js_divergence(h1, h2) -> float:
    """Jensen–Shannon divergence in bits between two pitch-class histograms: 0 for equal ones,
    1 for disjoint ones; symmetric, and finite where a class is absent from one histogram.
    (Its square root is the Jensen–Shannon distance, a metric.)"""
    p, q = np.asarray(h1, np.float64), np.asarray(h2, np.float64)
    m = 0.5 * (p + q)
    # rel_entr takes 0 · log(0 / m) as 0, so absent classes need no special case.
    return float(np.sum(special.rel_entr(p, m) + special.rel_entr(q, m)) / (2 * np.log(2)))


def entropy_bits(symbols) -> float:
    """Entropy in bits of the empirical distribution of a 1-D array of integers."""
    _, counts = np.unique(np.asarray(symbols), return_counts=True)
    p = counts / counts.sum()
    return float(-np.sum(p * np.log2(p)))


def note_event_bits(data) -> dict:
    """The rate of a plain note-event stream of a split (windows.SplitData): each note as
    (onset delta, duration, pitch, instrument group) on the frame grid, every field coded
    with its own unigram entropy over the split. Lossless at the frame resolution: the
    reference line of a rate-distortion table."""
    order = np.lexsort((data.note_pitch, data.note_group, data.note_start, data.note_rec))
    rec, start = data.note_rec[order], data.note_start[order]
    previous = np.where(np.r_[True, rec[1:] != rec[:-1]], 0, np.r_[0, start[:-1]])
    fields = {"onset_delta": start - previous,
              "duration": (data.note_end - data.note_start)[order],
              "pitch": data.note_pitch[order], "group": data.note_group[order]}
    bits = {k: entropy_bits(v) for k, v in fields.items()}
    per_note = sum(bits.values())
    seconds = float(np.sum(data.num_frames)) / data.frame_rate
    return {"bits_per_note": per_note, "notes_per_second": len(order) / seconds,
            "bits_per_second": per_note * len(order) / seconds,
            **{f"{k}_bits": v for k, v in bits.items()}}


def pca_2d(features) -> np.ndarray:
    """[N, D] -> [N, 2] coordinates on the first two principal axes of the centred features.

    Each axis's sign is fixed so that its largest-magnitude loading is positive, which makes
    the result independent of the SVD implementation's sign choices.
    """
    centred = np.asarray(features, np.float64)
    centred = centred - centred.mean(axis=0)
    if min(centred.shape) < 2:
        raise ValueError(f"need at least 2 points and 2 dimensions, got {centred.shape}")
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2]
    signs = np.sign(axes[np.arange(2), np.argmax(np.abs(axes), axis=1)])
    return centred @ (axes * signs[:, None]).T


def _save(figure: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(figure).print_png(os.fspath(path))


def scatter_png(path: str | os.PathLike, points, labels, label_names, title: str) -> None:
    """Writes a scatter plot of points [N, 2] coloured by integer labels [N], with a legend
    naming label i label_names[i]; colours come from tab20, cycled past 20 labels."""
    points, labels = np.asarray(points), np.asarray(labels)
    colours = matplotlib.colormaps["tab20"].colors
    figure = Figure(figsize=(7, 6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    for label in np.unique(labels):
        chosen = labels == label
        axes.scatter(points[chosen, 0], points[chosen, 1], s=8, alpha=0.7,
                     color=colours[label % len(colours)], label=label_names[label])
    axes.legend(fontsize="small", markerscale=2, loc="best")
    axes.set_title(title)
    _save(figure, path)


def code_histogram_png(path: str | os.PathLike, counts, title: str) -> None:
    """Writes code counts [K] as bars sorted from most to least frequent, on a log y-axis.

    Unused codes have no bar; the x-label says how many of the K codes were used.
    """
    counts = np.sort(np.asarray(counts))[::-1]
    figure = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.bar(np.arange(len(counts)), counts, width=1.0, color="tab:blue")
    axes.set_yscale("log")
    axes.set_xlabel(f"code rank ({np.count_nonzero(counts)} of {len(counts)} codes used)")
    axes.set_ylabel("count")
    axes.set_title(title)
    _save(figure, path)
