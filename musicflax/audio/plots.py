"""Piano-roll and spectrogram figures, as RGB arrays (for TensorBoard) or PNG files.

Figures are built on matplotlib's object API with an explicit Agg canvas, never through
pyplot, so nothing is registered in global state and a figure is freed with its last reference
(the trainer renders many of them in a long-running process). Each PNG writer saves what the
matching render_* function returns, so both always show the same picture.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from scipy import signal

NUM_PITCHES = 128
# One colour per instrument group (tab10's first entries), cycled if there are more groups.
GROUP_COLOURS = np.array([[0.12, 0.47, 0.71], [0.84, 0.15, 0.16], [0.17, 0.63, 0.17],
                          [0.58, 0.40, 0.74], [1.00, 0.50, 0.05], [0.55, 0.34, 0.29]])
DYNAMIC_RANGE_DB = 80.0


def _to_rgb(figure: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _groups(roll: np.ndarray) -> np.ndarray:
    """[T, G * 128] -> [G, T, 128] as float in 0..1."""
    roll = np.clip(np.asarray(roll, np.float32), 0.0, 1.0)
    if roll.ndim != 2 or roll.shape[1] % NUM_PITCHES:
        raise ValueError(f"a roll must be [T, G * {NUM_PITCHES}], got {roll.shape}")
    return roll.reshape(roll.shape[0], -1, NUM_PITCHES).transpose(1, 0, 2)


def _pitch_range(*rolls: np.ndarray) -> tuple[int, int]:
    """The sounding pitches of all rolls with a little margin; everything if all are silent."""
    sounding = np.flatnonzero(np.any([(g > 0.05).any(axis=(0, 1)) for g in rolls], axis=0))
    if not len(sounding):
        return 0, NUM_PITCHES - 1
    return max(int(sounding[0]) - 2, 0), min(int(sounding[-1]) + 2, NUM_PITCHES - 1)


def _roll_image(groups: np.ndarray, low: int, high: int) -> np.ndarray:
    """[G, T, 128] intensities -> RGB [pitch, T, 3] on white, one colour per group."""
    ink = np.zeros((high - low + 1, groups.shape[1], 3), np.float32)
    for g, intensity in enumerate(groups[..., low:high + 1]):
        colour = GROUP_COLOURS[g % len(GROUP_COLOURS)]
        ink += intensity.T[..., None] * (1.0 - colour)
    return np.clip(1.0 - ink, 0.0, 1.0)


def _draw_roll(axes, groups: np.ndarray, frame_rate: float, low: int, high: int,
               label: str) -> None:
    seconds = groups.shape[1] / frame_rate
    axes.imshow(_roll_image(groups, low, high), aspect="auto", origin="lower",
                interpolation="nearest", extent=(0, seconds, low - 0.5, high + 0.5))
    c_pitches = [p for p in range(low, high + 1) if p % 12 == 0]
    axes.set_yticks(c_pitches, [f"C{p // 12 - 1}" for p in c_pitches])
    axes.set_ylabel(f"{label}\npitch" if label else "pitch")


def _legend(figure: Figure, num_groups: int, group_names: Sequence[str] | None) -> None:
    if num_groups < 2 and not group_names:
        return
    names = group_names or [f"group {g}" for g in range(num_groups)]
    handles = [Patch(color=GROUP_COLOURS[g % len(GROUP_COLOURS)], label=name)
               for g, name in enumerate(names)]
    figure.legend(handles=handles, loc="outside upper right", fontsize="small", ncols=len(handles))


def render_pianoroll(roll: np.ndarray, frame_rate: float, title: str | None = None,
                     onsets: np.ndarray | None = None,
                     group_names: Sequence[str] | None = None) -> np.ndarray:
    """A roll [T, G * 128] as uint8 RGB [H, W, 3]: groups in colour, onsets as black ticks."""
    groups = _groups(roll)
    low, high = _pitch_range(groups)
    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    _draw_roll(axes, groups, frame_rate, low, high, "")
    if onsets is not None:
        frame, channel = np.nonzero(np.asarray(onsets) >= 0.5)
        pitch = channel % NUM_PITCHES
        axes.scatter(frame / frame_rate, pitch, marker="|", s=20, color="black", linewidths=0.8)
    axes.set_xlabel("time (s)")
    _legend(figure, len(groups), group_names)
    if title:
        figure.suptitle(title)
    return _to_rgb(figure)


def render_roll_comparison(original: np.ndarray, reconstruction: np.ndarray, frame_rate: float,
                           title: str | None = None,
                           group_names: Sequence[str] | None = None) -> np.ndarray:
    """Original above reconstruction (probabilities in 0..1 shade), as uint8 RGB [H, W, 3]."""
    groups = _groups(original), _groups(reconstruction)
    if groups[0].shape != groups[1].shape:
        raise ValueError(f"original {np.shape(original)} and reconstruction "
                         f"{np.shape(reconstruction)} differ in shape")
    low, high = _pitch_range(*groups)
    figure = Figure(figsize=(10, 6), dpi=100, layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    _draw_roll(top, groups[0], frame_rate, low, high, "original")
    _draw_roll(bottom, groups[1], frame_rate, low, high, "reconstruction")
    bottom.set_xlabel("time (s)")
    _legend(figure, len(groups[0]), group_names)
    if title:
        figure.suptitle(title)
    return _to_rgb(figure)


def _log_spectrogram(wave: np.ndarray, sample_rate: int, window: int) -> np.ndarray:
    """[frequency, time] magnitude in dB."""
    wave = np.asarray(wave, np.float64)
    _, _, stft = signal.stft(wave, fs=sample_rate, nperseg=min(window, len(wave)))
    return 20.0 * np.log10(np.abs(stft) + 1e-10)


def render_spectrogram_comparison(original_wave: np.ndarray, reconstructed_wave: np.ndarray,
                                  sample_rate: int, title: str | None = None) -> np.ndarray:
    """Log-magnitude STFTs of two waves, one above the other, as uint8 RGB [H, W, 3].

    Both share one dB scale (the top DYNAMIC_RANGE_DB below the louder peak) so that a quieter
    reconstruction looks quieter.
    """
    # About 64 ms windows at any rate: fine enough in frequency to separate semitones in the
    # bass, short enough in time to show note boundaries.
    window = 2 ** round(np.log2(0.064 * sample_rate))
    waves = original_wave, reconstructed_wave
    spectra = [_log_spectrogram(w, sample_rate, window) for w in waves]
    top_db = max(float(db.max()) for db in spectra)
    figure = Figure(figsize=(10, 6), dpi=100, layout="constrained")
    panels = figure.subplots(2, 1, sharex=True)
    for axes, wave, db, label in zip(panels, waves, spectra, ("original", "reconstruction")):
        image = axes.imshow(db, aspect="auto", origin="lower", cmap="magma",
                            vmin=top_db - DYNAMIC_RANGE_DB, vmax=top_db,
                            extent=(0, len(wave) / sample_rate, 0, sample_rate / 2000))
        axes.set_ylabel(f"{label}\nfrequency (kHz)")
    panels[1].set_xlabel("time (s)")
    figure.colorbar(image, ax=panels, label="dB")
    if title:
        figure.suptitle(title)
    return _to_rgb(figure)


def save_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes a uint8 RGB image [H, W, 3] as a PNG."""
    matplotlib.image.imsave(os.fspath(path), image)


def pianoroll_figure_png(path: str | os.PathLike, roll: np.ndarray, frame_rate: float,
                         title: str | None = None, onsets: np.ndarray | None = None,
                         group_names: Sequence[str] | None = None) -> None:
    """Writes render_pianoroll's image as a PNG."""
    save_png(path, render_pianoroll(roll, frame_rate, title, onsets, group_names))


def roll_comparison_png(path: str | os.PathLike, original: np.ndarray,
                        reconstruction: np.ndarray, frame_rate: float, title: str | None = None,
                        group_names: Sequence[str] | None = None) -> None:
    """Writes render_roll_comparison's image as a PNG."""
    save_png(path, render_roll_comparison(original, reconstruction, frame_rate, title,
                                          group_names))


def spectrogram_comparison_png(path: str | os.PathLike, original_wave: np.ndarray,
                               reconstructed_wave: np.ndarray, sample_rate: int,
                               title: str | None = None) -> None:
    """Writes render_spectrogram_comparison's image as a PNG."""
    save_png(path, render_spectrogram_comparison(original_wave, reconstructed_wave, sample_rate,
                                                 title))
