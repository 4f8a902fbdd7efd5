"""A small deterministic additive synthesizer that renders MusicNet note lists to audio.

Each note reads a one-period wavetable of its instrument family's harmonic spectrum, shaped by
an attack/decay/sustain/release envelope. Every family keeps one table per number of partials
(1..MAX_HARMONICS) so a note simply reads the table holding only the partials below Nyquist:
band-limiting costs nothing per sample. Loudness is a fixed gain per voice followed by a soft
limiter, so a note sounds equally loud whatever else is in the piece (no per-file
normalisation), and the output never leaves [-1, 1].
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

TABLE_SIZE = 2048          # samples in one period; a power of two so wrapping is a bit mask
MAX_HARMONICS = 16
DEFAULT_GAIN = 0.15        # per voice: four voices at full peak stay below the limiter's knee
LIMITER_KNEE = 0.6         # below this the limiter is exactly linear
RELEASE_SECONDS = 0.1      # every note fades to zero over this long after its end time


@dataclasses.dataclass(frozen=True)
class Timbre:
    """Harmonic amplitudes (fundamental first) and envelope of one instrument family."""

    harmonics: tuple[float, ...]
    attack: float          # seconds of linear rise
    decay: float           # seconds: time constant of the fall from 1 to `sustain`
    sustain: float         # level held until the note ends (0: the sound dies away, as a piano)
    # Keyboards: the decay time constant is scaled by 2 ** ((60 - pitch) / 24), so low strings
    # ring longer than high ones, as on a real piano.
    pitch_dependent_decay: bool = False


TIMBRES: dict[str, Timbre] = {
    "keyboard": Timbre((1.0, 0.45, 0.3, 0.18, 0.12, 0.08, 0.05, 0.035, 0.02, 0.012),
                       attack=0.004, decay=1.2, sustain=0.0, pitch_dependent_decay=True),
    "bowed": Timbre(tuple(1.0 / k for k in range(1, MAX_HARMONICS + 1)),
                    attack=0.06, decay=0.15, sustain=0.8),
    "woodwind": Timbre((1.0, 0.4, 0.35, 0.15, 0.12, 0.06, 0.05, 0.03),
                       attack=0.04, decay=0.1, sustain=0.9),
    "brass": Timbre((1.0, 0.8, 0.6, 0.45, 0.3, 0.2, 0.12, 0.08, 0.05, 0.03),
                    attack=0.05, decay=0.2, sustain=0.85),
    "default": Timbre((1.0, 0.5, 0.25, 0.125), attack=0.02, decay=0.2, sustain=0.8),
}

# 1-based General MIDI programs (MusicNet's codes) by family, from the GM categories: pianos,
# solo bowed strings (violin .. contrabass, tremolo), brass, reeds and pipes.
_FAMILY_PROGRAMS = {"keyboard": range(1, 9), "bowed": range(41, 46), "brass": range(57, 65),
                    "woodwind": range(65, 81)}
_FAMILY_NAMES = tuple(TIMBRES)


def _family_lookup() -> np.ndarray:
    """Family index for every program 0..128; 0 and anything outside a family get 'default'."""
    lookup = np.full(129, _FAMILY_NAMES.index("default"), np.int64)
    for name, programs in _FAMILY_PROGRAMS.items():
        lookup[list(programs)] = _FAMILY_NAMES.index(name)
    return lookup


_FAMILY_OF_PROGRAM = _family_lookup()


def _wavetables(timbre: Timbre) -> tuple[np.ndarray, np.ndarray]:
    """(tables, slopes) float32 [MAX_HARMONICS + 1, TABLE_SIZE]; row k holds partials 1..k.

    Every row is scaled by the full spectrum's peak, not its own, so dropping the partials above
    Nyquist makes a high note slightly quieter instead of louder. `slopes` is the difference to
    the next sample, precomputed for linear interpolation.
    """
    phase = np.arange(TABLE_SIZE + 1) / TABLE_SIZE
    amplitudes = np.zeros(MAX_HARMONICS)
    amplitudes[:len(timbre.harmonics)] = timbre.harmonics
    partials = amplitudes[:, None] * np.sin(2 * np.pi * np.arange(1, MAX_HARMONICS + 1)[:, None]
                                            * phase)
    tables = np.concatenate([np.zeros((1, TABLE_SIZE + 1)), np.cumsum(partials, axis=0)])
    tables /= np.abs(tables[-1]).max()
    return tables[:, :-1].astype(np.float32), np.diff(tables, axis=1).astype(np.float32)


_TABLES = [_wavetables(TIMBRES[name]) for name in _FAMILY_NAMES]


def midi_to_hz(pitch: np.ndarray | int) -> np.ndarray:
    """Equal temperament, A4 (MIDI 69) = 440 Hz."""
    return 440.0 * 2.0 ** ((np.asarray(pitch, np.float64) - 69.0) / 12.0)


def soft_limit(x: np.ndarray, knee: float = LIMITER_KNEE) -> np.ndarray:
    """Identity below `knee`; above it a tanh curve that approaches 1 with a continuous slope."""
    magnitude = np.abs(x)
    over = magnitude > knee
    limited = knee + (1.0 - knee) * np.tanh((magnitude[over] - knee) / (1.0 - knee))
    out = x.copy()
    out[over] = np.copysign(limited, x[over]).astype(x.dtype)
    return out


def synthesize(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, instrument: np.ndarray,
               sample_rate: int, duration: float | None = None,
               gain: float = DEFAULT_GAIN) -> np.ndarray:
    """Renders notes (seconds, MIDI pitch, 1-based GM program) to float32 mono audio in [-1, 1].

    The output lasts ceil(max(duration or 0, max(end) + RELEASE_SECONDS) * sample_rate)
    samples. Unknown programs use the default timbre; notes whose fundamental is at or above
    Nyquist are silent; a note that ends before it starts sounds only its release.
    """
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    pitch, instrument = np.asarray(pitch, np.int64), np.asarray(instrument, np.int64)
    if not start.shape == end.shape == pitch.shape == instrument.shape or start.ndim != 1:
        raise ValueError("start, end, pitch and instrument must be 1-D arrays of equal length")
    if len(pitch) and (pitch.min() < 0 or pitch.max() > 127):
        raise ValueError("pitch must be a MIDI note number in 0..127")
    if len(start) and start.min() < 0:
        raise ValueError("note start times must be >= 0")
    end = np.maximum(end, start)
    last = end.max() + RELEASE_SECONDS if len(end) else 0.0
    out = np.zeros(math.ceil(max(duration or 0.0, last) * sample_rate), np.float32)

    frequency = midi_to_hz(pitch)
    # Partials h with h * f < Nyquist; zero means the note would only alias, so it is skipped.
    num_partials = np.minimum(np.ceil(sample_rate / 2 / frequency) - 1, MAX_HARMONICS)
    first = np.round(start * sample_rate).astype(np.int64)
    held = np.maximum(np.round(end * sample_rate).astype(np.int64) - first, 0)
    release = round(RELEASE_SECONDS * sample_rate)
    # Codes outside 1..128 clip onto 0 or 128, neither of which is in a family: the default.
    family = _FAMILY_OF_PROGRAM[np.clip(instrument, 0, 128)]

    # Shared by all notes, so the per-note work is slicing plus a handful of array operations.
    time_index = np.arange(int(held.max(initial=0)) + release, dtype=np.float64)
    time_s = (time_index / sample_rate).astype(np.float32)
    fade_out = np.linspace(1.0, 0.0, release + 1, dtype=np.float32)[1:]
    fade_in = {name: np.minimum(time_s[:max(round(t.attack * sample_rate), 1)] / t.attack, 1.0)
               for name, t in TIMBRES.items()}

    for i in np.flatnonzero(num_partials > 0).tolist():
        name = _FAMILY_NAMES[family[i]]
        timbre = TIMBRES[name]
        tables, slopes = _TABLES[family[i]]
        k, n = int(num_partials[i]), int(held[i]) + release

        position = time_index[:n] * (frequency[i] * TABLE_SIZE / sample_rate)
        index = position.astype(np.int64)
        fraction = (position - index).astype(np.float32)
        index &= TABLE_SIZE - 1
        wave = tables[k][index] + fraction * slopes[k][index]

        decay = timbre.decay
        if timbre.pitch_dependent_decay:
            decay *= 2.0 ** ((60 - int(pitch[i])) / 24)
        envelope = np.exp(time_s[:n] * np.float32(-1.0 / decay))
        if timbre.sustain:
            envelope *= 1.0 - timbre.sustain
            envelope += timbre.sustain
        attack = fade_in[name][:n]
        envelope[:len(attack)] *= attack
        envelope[n - release:] *= fade_out
        wave *= envelope
        # Rounding start and length separately can overshoot the rounded total by a sample.
        out[first[i]:first[i] + n] += wave[:len(out) - first[i]]
    out *= gain
    return soft_limit(out)
