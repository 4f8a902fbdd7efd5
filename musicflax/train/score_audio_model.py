"""Score-to-audio's pure parts: the module of a config (musicflax.models.score_audio), its
loss against the rendered audio of the same windows, per-window outputs for the evaluators
(read as a one-level waveform reconstruction), figures, and rendering a whole score.

Batches are waveform windows: `inputs` the audio, `score_roll` / `score_onsets` its score.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from musicflax import app
from musicflax.data import instruments
from musicflax.models import losses, score_audio
from musicflax.train.vqvae_model import spectrogram_comparisons


class ScoreAudioModel:
    """A score-to-audio model of a config: module, loss, outputs, figures and rendering."""

    representation = "waveform"
    levels = 1  # one rendition, scored as a reconstruction of the rendered audio
    best_metric, best_mode = "loss/loss", "min"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        data = config.data
        if data.representation != "waveform":
            raise app.UserError("score_audio trains on waveform windows: set "
                                "data.representation='waveform' (see configs/score_audio.py)")
        self.sample_rate, self.frame_rate = int(data.sample_rate), float(data.frame_rate)
        hop = self.sample_rate / self.frame_rate
        if hop != int(hop):
            raise app.UserError(f"data.sample_rate / data.frame_rate = {hop} must be a whole "
                                "number of samples per frame")
        self.hop = int(hop)
        self.groups = instruments.InstrumentGroups.parse(data.instrument_groups)
        self.num_channels = self.groups.num_channels
        self.model = score_audio.score_to_audio_from_config(
            config.model, len(self.groups.names), self.hop, self.sample_rate)

    def model_inputs(self, batch) -> jax.Array:
        return jnp.concatenate([batch["score_roll"], batch["score_onsets"]], -1).astype(
            jnp.float32)

    def init(self, rng):
        frames = int(self.config.data.window_samples) // self.hop
        params = self.model.init(rng, jnp.zeros((1, frames, 2 * self.num_channels)))["params"]
        return params, {}

    def _render(self, params, batch) -> jax.Array:
        return self.model.apply({"params": params}, self.model_inputs(batch))

    def _window_losses(self, wave, batch):
        cfg = self.config.model.loss
        return losses.waveform_loss(wave, batch["inputs"], cfg.stft_resolutions,
                                    cfg.spectral_weight)

    def loss(self, params, model_state, batch, rng, train: bool):
        del rng, train
        per_window, parts = self._window_losses(self._render(params, batch), batch)
        loss = jnp.mean(per_window)
        return loss, ({"loss": loss, **{k: jnp.mean(v) for k, v in parts.items()}},
                      model_state)

    def eval_outputs(self, params, model_state, batch) -> dict:
        """Per window: the loss and its parts, and the rendition as level 0's `recon0`."""
        del model_state
        wave = self._render(params, batch)
        per_window, parts = self._window_losses(wave, batch)
        return {"loss": per_window, **{f"loss/{k}": v for k, v in parts.items()},
                "recon0": wave[..., 0]}

    def image_outputs(self, params, model_state, batch) -> dict:
        del model_state
        return {"recon": self._render(params, batch)}

    def render_images(self, batch, outputs, step: int) -> np.ndarray:
        """The rendered audio vs the model's rendition of the same score, per window."""
        return spectrogram_comparisons(batch, outputs["recon"], self.sample_rate, step)

    @functools.cached_property
    def _render_jit(self):
        return jax.jit(lambda params, roll, onsets: self._render(
            params, {"score_roll": roll, "score_onsets": onsets})[0, :, 0])

    def render(self, params, roll: np.ndarray, onsets: np.ndarray) -> np.ndarray:
        """A whole score, roll and onsets [F, G * 128] at the model's frame rate, as audio
        [F * hop] float32 (clipped to [-1, 1])."""
        if roll.shape[-1] != self.num_channels:
            raise app.UserError(f"the score has {roll.shape[-1] // 128} instrument groups, the "
                                f"score-to-audio model {len(self.groups.names)}")
        wave = self._render_jit(params, jnp.asarray(roll[None], jnp.float32),
                                jnp.asarray(onsets[None], jnp.float32))
        return np.clip(np.asarray(wave, np.float32), -1.0, 1.0)

    def describe(self, params) -> str:
        count = sum(x.size for x in jax.tree.leaves(params))
        return (f"{count:,} parameters; {len(self.model.pitches)} voices per group x "
                f"{self.model.harmonics} partials, hop {self.hop}")
