"""Score-to-audio: a neural harmonic synthesizer that renders a piano-roll as a waveform.

Every (instrument group, pitch) channel of the roll is one voice. A small dilated conv stack,
shared by all voices and run over each voice's own roll and onsets at the frame rate (with
its pitch and group as inputs), predicts the amplitude of each of the voice's harmonics per
frame, kept only while its note is on and `release_frames` after; sinusoids at those
harmonics (only below Nyquist), weighted by the amplitudes interpolated linearly between
frames, sum to the waveform (DDSP's harmonic synthesizer,
Engel et al. 2020, driven by a score as in Manzelli et al. 2018 and MIDI-DDSP). An optional
dilated conv stack at the audio rate adds a learned residual (noise, reverb).

Why oscillators instead of a decoder from the roll alone: a convolutional upsampler of
frame-rate inputs produces, while its input holds still, a signal that repeats every hop
samples, so it can only sound harmonics of the frame rate (100 Hz at 100 fps), not the pitches.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax
import ml_collections
import numpy as np

from musicflax.models.layers import ResStack

NUM_PITCHES = 128


def default_model_config() -> ml_collections.ConfigDict:
    """The score-to-audio model's settings (configs/score_audio.py patches these)."""
    return ml_collections.ConfigDict(dict(
        width=16,            # the per-voice controller's channels
        depth=4,             # its dilated residual blocks (dilations 1, 3, 9, ...)
        dilation_growth=3,
        harmonics=16,        # partials per voice (those above Nyquist are silent)
        min_pitch=21,        # voices with an oscillator: MIDI pitches min_pitch..max_pitch
        max_pitch=108,
        # A voice sounds only while its note is on and release_frames after: elsewhere it is
        # exactly silent, so the controller never learns to hush the hundreds of idle voices.
        release_frames=20,
        filter_width=16,     # the audio-rate residual stack (filter_depth 0: none)
        filter_depth=0,
        dtype="float32",
        loss=dict(stft_resolutions=((2048, 512, 2048), (1024, 256, 1024), (512, 128, 512)),
                  spectral_weight=1.0),
    ))


def oscillator_tables(num_frames: int, hop: int, sample_rate: int, pitches: np.ndarray,
                      harmonics: int) -> dict[str, np.ndarray]:
    """sin(w t) at t = f * hop + k split as sin(w f hop) cos(w k) + cos(w f hop) sin(w k), so
    [frames, P, H] and [hop, P, H] tables replace one [frames * hop, P, H]; partials at or
    above Nyquist are zero."""
    hz = 440.0 * 2.0 ** ((pitches[:, None] - 69) / 12.0) * np.arange(1, harmonics + 1)
    omega = 2 * np.pi * hz / sample_rate                          # [P, H] radians/sample
    audible = (hz < sample_rate / 2).astype(np.float64)
    frame_phase = omega * (np.arange(num_frames) * hop)[:, None, None]
    inner_phase = omega * np.arange(hop)[:, None, None]
    return {"sin_frame": np.sin(frame_phase) * audible, "cos_frame": np.cos(frame_phase) * audible,
            "sin_inner": np.sin(inner_phase), "cos_inner": np.cos(inner_phase)}


class ScoreToAudio(nn.Module):
    """Roll and onsets [B, F, 2 * G * 128] (roll first) -> waveform [B, F * hop, 1]."""

    num_groups: int
    hop: int                  # audio samples per roll frame
    sample_rate: int
    width: int = 16
    depth: int = 4
    dilation_growth: int = 3
    harmonics: int = 16
    min_pitch: int = 21
    max_pitch: int = 108
    release_frames: int = 20
    filter_width: int = 16
    filter_depth: int = 0
    dtype: Any = None

    @property
    def pitches(self) -> np.ndarray:
        return np.arange(self.min_pitch, self.max_pitch + 1)

    @nn.compact
    def __call__(self, score: jnp.ndarray) -> jnp.ndarray:
        batch, frames, channels = score.shape
        groups, pitches, h = self.num_groups, self.pitches, self.harmonics
        if channels != 2 * groups * NUM_PITCHES:
            raise ValueError(f"score has {channels} channels, expected 2 x {groups} x 128")
        voices = score.reshape(batch, frames, 2, groups, NUM_PITCHES)[..., pitches]
        voices = jnp.transpose(voices, (0, 3, 4, 1, 2))            # [B, G, P, F, 2]
        # What a voice is: its group (one-hot) and pitch, constant over time.
        num = len(pitches)
        identity = np.concatenate([
            np.broadcast_to(np.eye(groups)[:, None, :], (groups, num, groups)),
            np.broadcast_to(((pitches - 60) / 24.0)[None, :, None], (groups, num, 1))], -1)
        identity = jnp.broadcast_to(jnp.asarray(identity, score.dtype)[None, :, :, None, :],
                                    (batch, groups, num, frames, groups + 1))
        x = jnp.concatenate([voices, identity], -1)
        x = x.reshape(-1, frames, groups + 3)                       # one sequence per voice
        x = nn.Conv(self.width, (3,), dtype=self.dtype)(x)
        x = ResStack(self.width, self.depth, self.dilation_growth, self.depth,
                     dtype=self.dtype)(x)
        # ReLU lets a voice fall silent; the small positive bias keeps every voice trainable
        # at the start.
        amplitude = nn.relu(nn.Dense(h, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                                     bias_init=nn.initializers.constant(1e-2))(nn.relu(x)))
        release = self.release_frames
        sounding = lax.reduce_window(voices[..., 0], -jnp.inf, lax.max, (1, 1, 1, 1 + release),
                                     (1, 1, 1, 1), [(0, 0)] * 3 + [(release, 0)])
        amplitude = amplitude.reshape(batch, groups, num, frames, h) * sounding[..., None]
        amplitude = amplitude.sum(1)
        amplitude = jnp.moveaxis(amplitude, -2, 1).astype(jnp.float32)  # [B, F, P, H]
        wave = self._oscillators(amplitude)
        if self.filter_depth:
            y = nn.Conv(self.filter_width, (3,), dtype=self.dtype)(wave)
            y = ResStack(self.filter_width, self.filter_depth, self.dilation_growth,
                         self.filter_depth, dtype=self.dtype)(y)
            wave = wave + nn.Conv(1, (3,), dtype=self.dtype, kernel_init=nn.initializers.zeros)(
                nn.relu(y))
        return wave

    def _oscillators(self, amplitude: jnp.ndarray) -> jnp.ndarray:
        """Sum over voices and partials of the amplitudes (linear from frame f's value at its
        first sample to frame f + 1's) times the partials' sinusoids: [B, F * hop, 1]."""
        batch, frames = amplitude.shape[:2]
        tables = {k: jnp.asarray(v, jnp.float32) for k, v in oscillator_tables(
            frames, self.hop, self.sample_rate, self.pitches, self.harmonics).items()}
        following = jnp.concatenate([amplitude[:, 1:], amplitude[:, -1:]], axis=1)
        ramp = jnp.arange(self.hop, dtype=jnp.float32) / self.hop    # [hop]
        wave = 0.0
        for amp, weight in ((amplitude, 1.0 - ramp), (following, ramp)):
            # sin(w (f hop + k)) = sin(w f hop) cos(w k) + cos(w f hop) sin(w k)
            part = (jnp.einsum("bfph,kph->bfk", amp * tables["sin_frame"], tables["cos_inner"])
                    + jnp.einsum("bfph,kph->bfk", amp * tables["cos_frame"], tables["sin_inner"]))
            wave = wave + part * weight
        return wave.reshape(batch, frames * self.hop, 1)


def score_to_audio_from_config(cfg: ml_collections.ConfigDict, num_groups: int, hop: int,
                               sample_rate: int) -> ScoreToAudio:
    return ScoreToAudio(
        num_groups=num_groups, hop=hop, sample_rate=sample_rate, width=cfg.width,
        depth=cfg.depth, dilation_growth=cfg.dilation_growth, harmonics=cfg.harmonics,
        min_pitch=cfg.min_pitch, max_pitch=cfg.max_pitch,
        release_frames=cfg.release_frames, filter_width=cfg.filter_width,
        filter_depth=cfg.filter_depth, dtype=jnp.dtype(cfg.dtype))
