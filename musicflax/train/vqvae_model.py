"""The VQ-VAE stage's pure parts: the module of a config, its loss, its per-window outputs
for the evaluators, how its outputs are read back as notes, and its figures.

Plain JAX (no data pipeline; matplotlib only when it draws), so a train step can be built
and timed from a config alone; musicflax.train.vqvae_task adds the data. Piano-roll models
see and reconstruct the roll and its onsets side by side (2C channels), so repeated notes,
which the roll alone cannot show, survive the round trip.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from musicflax import app
from musicflax.audio import midi
from musicflax.data import instruments
from musicflax.models import losses, metrics, search, vqvae


class VQVAEModel:
    """A VQ-VAE of a config: its module, loss, per-window outputs, read-back and figures."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.representation = config.data.representation
        self.groups = instruments.InstrumentGroups.parse(config.data.instrument_groups)
        self.num_channels = self.groups.num_channels
        self.model = vqvae.vqvae_from_config(
            config.model, 2 * self.num_channels if self.representation == "pianoroll" else 1)
        specs = [self.model.quantizer_of(level) for level in range(self.model.levels)]
        self.codebook_sizes = [math.prod(q["fsq_levels"]) if q["type"] == "fsq" else
                               int(q["codebook_size"]) for q in specs]
        # Codes per position: residual VQ gives `stages` of them ([B, T, stages]).
        self.level_stages = [int(q["stages"]) if q["type"] == "rvq" else 1 for q in specs]
        self.codebook_size, self.stages = self.codebook_sizes[0], self.level_stages[0]
        settings = config.get("encode", {})
        self.search_candidates = int(settings.get("search_candidates", 0))
        self.search_sweeps = int(settings.get("search_sweeps", 0))
        if self.search_candidates:
            if self.search_candidates < 0 or self.search_sweeps < 1:
                raise app.UserError(f"encode.search_candidates={self.search_candidates} and "
                                    f"search_sweeps={self.search_sweeps}: need >= 0 and >= 1")
            for level, q in enumerate(specs):
                if q["type"] not in ("ema_vq", "rvq"):
                    raise app.UserError(f"encode.search_candidates needs 'ema_vq' or 'rvq' "
                                        f"quantizers; level {level} has {q['type']!r}")
                if self.search_candidates > q["codebook_size"]:
                    raise app.UserError(f"encode.search_candidates={self.search_candidates} "
                                        f"exceeds level {level}'s {q['codebook_size']} codes")
        if self.representation == "pianoroll":
            self.best_metric, self.best_mode = "reconstruction/note_onset_f1", "max"
        else:
            self.best_metric, self.best_mode = "loss/loss", "min"

    @property
    def frame_rate(self) -> float:
        return float(self.config.data.frame_rate)

    def codes_per_second(self, level: int) -> float:
        """Codes per second of music at a level: the input rate over the level's hop."""
        rate = self.frame_rate if self.representation == "pianoroll" else \
            float(self.config.data.sample_rate)
        return rate / self.model.hops[level]

    # -- model ---------------------------------------------------------------------------
    def model_inputs(self, batch) -> jax.Array:
        if self.representation == "pianoroll":
            return jnp.concatenate([batch["inputs"], batch["onsets"]], -1).astype(jnp.float32)
        return batch["inputs"].astype(jnp.float32)

    def _example(self) -> jax.Array:
        if self.representation == "pianoroll":
            window = int(self.config.data.window_frames)
            return jnp.zeros((1, window, 2 * self.num_channels))
        return jnp.zeros((1, int(self.config.data.window_samples), 1))

    def init(self, rng):
        params_rng, restart_rng = jax.random.split(rng)
        variables = self.model.init({"params": params_rng, "restart": restart_rng},
                                    self._example(), train=False)
        params = variables.pop("params")
        return params, dict(variables)

    def _apply(self, params, model_state, batch, rng, train: bool):
        variables = {"params": params, **model_state}
        if train:
            (outputs, aux), updated = self.model.apply(
                variables, self.model_inputs(batch), train=True, rngs={"restart": rng},
                mutable=list(model_state))
            return outputs, aux, dict(updated)
        outputs, aux = self.model.apply(variables, self.model_inputs(batch), train=False)
        return outputs, aux, model_state

    def _targets(self, batch) -> dict:
        if self.representation == "pianoroll":
            # The second half of the channels holds the onsets.
            return {"inputs": self.model_inputs(batch),
                    "onset_channels": jnp.arange(2 * self.num_channels) >= self.num_channels}
        return {"inputs": batch["inputs"].astype(jnp.float32)}

    def loss(self, params, model_state, batch, rng, train: bool):
        outputs, aux, new_state = self._apply(params, model_state, batch, rng, train)
        loss, parts = losses.vqvae_loss(outputs, self._targets(batch), aux, self.config.model)
        return loss, (parts, new_state)

    def encode(self, params, model_state, batch) -> list[jax.Array]:
        """Per level, the codes of the batch's windows: the nearest codes, or with
        `config.encode.search_candidates` k > 0 the codes `models.search.refine_codes`
        finds among each position's k nearest (`search_sweeps` passes) for the lowest
        reconstruction loss of that level."""
        variables = {"params": params, **model_state}
        x = self.model_inputs(batch)
        if not self.search_candidates:
            return self.model.apply(variables, x, method="encode")
        k, targets = self.search_candidates, self._targets(batch)
        repeated = {**targets, "inputs": jnp.repeat(targets["inputs"], k, axis=0)}
        out = []
        for level in range(self.model.levels):
            candidates = self.model.apply(variables, x, level, k, method="candidates")
            # Residual VQ: every (position, stage) is one coordinate of the search.
            shape = candidates.shape[1:-1]

            def window_loss(trial, level=level, shape=shape):
                decoded = self.model.apply(variables, trial.reshape(-1, *shape), level,
                                           method="decode")
                loss, _ = losses.reconstruction_loss(decoded, repeated, self.config.model)
                return loss.reshape(trial.shape[:2])
            found = search.refine_codes(
                window_loss, candidates.reshape(len(candidates), -1, k), self.search_sweeps)
            out.append(found.reshape(-1, *shape))
        return out

    # -- evaluation ------------------------------------------------------------------------
    def predicted_rolls(self, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(roll, onsets) booleans from piano-roll logits [B, T, 2C]: the roll where a note is
        more likely on than off, onsets peak-picked from the onset channels."""
        c, decode = self.num_channels, self.config.decode
        onsets = metrics.pick_onsets(logits[..., c:], decode.onset_radius,
                                     decode.onset_threshold)
        return logits[..., :c] > 0, onsets

    def read_notes(self, roll: np.ndarray, onsets: np.ndarray) -> dict[str, np.ndarray]:
        """Notes from a predicted roll and onsets [T, C], the way every output is read back
        (`config.decode`; see midi.roll_to_notes): start/end (s), pitch, instrument."""
        return midi.roll_to_notes(roll, self.frame_rate, self.groups.programs, onsets=onsets,
                                  max_gap=int(self.config.decode.get("max_gap_frames", 0)))

    def eval_outputs(self, params, model_state, batch) -> dict:
        """Per window: the losses, and per level the codes, the mean latent ("pooled"), and
        the predicted roll and onsets with their in-jit counts (piano-rolls) or the
        reconstructed wave and the latents per code (waveforms)."""
        outputs, aux, _ = self._apply(params, model_state, batch, None, train=False)
        if self.search_candidates:  # decode the searched codes instead (commitment as is)
            variables = {"params": params, **model_state}
            codes = self.encode(params, model_state, batch)
            latents = [self.model.apply(variables, c,
                                        method=lambda m, c, i=i: m.quantizers[i].lookup(c))
                       for i, c in enumerate(codes)]
            outputs = [self.model.apply(variables, v, i, method="decode_vectors")
                       for i, v in enumerate(latents)]
            aux = {**aux, "codes": codes, "latents": latents}
        loss, parts = losses.window_losses(outputs, self._targets(batch), aux,
                                           self.config.model)
        out = {"loss": loss, **{f"loss/{k}": v for k, v in parts.items()}}
        tolerance = metrics.onset_tolerance_frames(self.frame_rate)
        for level, (output, codes, latents) in enumerate(zip(outputs, aux["codes"],
                                                              aux["latents"])):
            out[f"codes{level}"] = codes
            out[f"pooled{level}"] = jnp.mean(latents, axis=1)
            if self.representation == "pianoroll":
                roll, onsets = self.predicted_rolls(output)
                out[f"roll{level}"], out[f"onsets{level}"] = roll, onsets
                for name, counts in (("frame", metrics.frame_counts(roll, batch["inputs"])),
                                     ("onset", metrics.onset_counts(onsets, batch["onsets"],
                                                                    tolerance))):
                    out.update({f"{name}_{k}{level}": v for k, v in counts.items()})
            else:
                out[f"recon{level}"] = output[..., 0]
                out[f"latents{level}"] = latents
        return out

    # -- images ----------------------------------------------------------------------------
    def image_outputs(self, params, model_state, batch) -> dict:
        outputs, _, _ = self._apply(params, model_state, batch, None, train=False)
        return {"recon": outputs[0], **{f"recon_level{level}": out
                                        for level, out in enumerate(outputs) if level}}

    def render_images(self, batch, outputs, step: int) -> np.ndarray:
        """Original vs reconstruction of each window of the batch, stacked."""
        if self.representation != "pianoroll":
            return spectrogram_comparisons(batch, outputs["recon"],
                                           int(self.config.data.sample_rate), step)
        from musicflax.audio import plots  # pylint: disable=g-import-not-at-top
        images = []
        for i in range(len(batch["recording_id"])):
            probs = 1 / (1 + np.exp(-outputs["recon"][i][:, :self.num_channels]))
            images.append(plots.render_roll_comparison(
                batch["inputs"][i], probs, self.frame_rate, _title(batch, i, step),
                self.groups.names))
        return np.concatenate(images, axis=0)

    @property
    def levels(self) -> int:
        return self.model.levels


def _title(batch, i: int, step: int) -> str:
    return (f"step {step}: recording {batch['recording_id'][i]} at "
            f"{batch['start_time'][i]:.1f} s")


def spectrogram_comparisons(batch, recon: np.ndarray, sample_rate: int, step: int) -> np.ndarray:
    """Spectrograms of each window's audio vs its reconstruction [B, T, 1], stacked."""
    from musicflax.audio import plots  # pylint: disable=g-import-not-at-top
    return np.concatenate([plots.render_spectrogram_comparison(
        batch["inputs"][i, :, 0], recon[i, :, 0], sample_rate, _title(batch, i, step))
        for i in range(len(batch["recording_id"]))], axis=0)
