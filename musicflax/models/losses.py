"""VQ-VAE losses as pure functions: piano-roll BCE with onset weighting, waveform L2 plus
multi-resolution STFT loss, and their combination over levels with the commitment loss.

Every loss is computed per window ([B] values), so that validation can average exactly the
windows a split holds (padding rows masked out) whatever the batch size; the training loss
is their mean. The STFT here is also the one the audio metrics use.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

# (n_fft, hop, window length) per STFT resolution.
STFT_RESOLUTIONS = ((2048, 512, 2048), (1024, 256, 1024), (512, 128, 512))

# Floor on STFT power: keeps the log and the sqrt gradient finite on silence.
_MIN_POWER = 1e-7


def _window_mean(x: jax.Array) -> jax.Array:
    """Mean over every axis but the first: [B, ...] -> [B]."""
    return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def _norm(x: jax.Array) -> jax.Array:
    """L2 norm over axis 1 whose gradient is 0, not NaN, where x is 0 (a silent prediction of a
    silent window)."""
    squares = jnp.sum(x ** 2, axis=1)
    nonzero = squares > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squares, 1.0)), 0.0)


def pianoroll_loss(logits: jax.Array, targets: jax.Array, onset_channels: jax.Array,
                   onset_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per window: mean BCE over the note channels + onset_weight * mean BCE over the onset
    channels. Returns ([B], parts of [B]).

    `targets` [B, T, C] are binary; `onset_channels` [C] (bool) marks the channels that hold
    onsets. Both terms average over all their entries, positives and negatives alike, so the
    logits stay calibrated (0 is the decision threshold). Averaging over the onset positives
    alone would reward firing onsets everywhere: every positive would outweigh thousands of
    negatives.
    """
    targets = targets.astype(jnp.float32)
    onset_channels = jnp.asarray(onset_channels, bool)
    per_channel = jnp.mean(jax.nn.softplus(logits) - logits * targets, axis=1)  # [B, C]
    note_bce = jnp.sum(jnp.where(onset_channels, 0.0, per_channel), -1) / jnp.maximum(
        jnp.sum(~onset_channels), 1)
    onset_bce = jnp.sum(jnp.where(onset_channels, per_channel, 0.0), -1) / jnp.maximum(
        jnp.sum(onset_channels), 1)
    return note_bce + onset_weight * onset_bce, {"bce": note_bce, "onset_bce": onset_bce}


def stft_magnitude(signal: jax.Array, n_fft: int, hop: int, win_length: int,
                   pad_mode: str = "constant", floor: float = _MIN_POWER) -> jax.Array:
    """|STFT| [N, frames, n_fft // 2 + 1] of signals [N, T], laid out as torch.stft's: a
    periodic Hann window of `win_length` centred in `n_fft`, frames centred on multiples of
    `hop`, the signal padded by n_fft // 2 on both sides (`pad_mode` 'constant' (zeros) for
    the training loss, 'reflect' as torch.stft's default for metrics). The power is floored at
    `floor` (keeps the loss's log and sqrt gradient finite on silence; 0 for metrics)."""
    n = jnp.arange(win_length)
    window = 0.5 - 0.5 * jnp.cos(2 * jnp.pi * n / win_length)
    left = (n_fft - win_length) // 2
    window = jnp.pad(window, (left, n_fft - win_length - left))
    padded = jnp.pad(signal, ((0, 0), (n_fft // 2, n_fft // 2)), mode=pad_mode)
    starts = hop * jnp.arange(1 + signal.shape[1] // hop)
    frames = padded[:, starts[:, None] + jnp.arange(n_fft)] * window
    spectrum = jnp.fft.rfft(frames, axis=-1)
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    return jnp.sqrt(jnp.maximum(power, floor)) if floor else jnp.sqrt(power)


def waveform_loss(pred: jax.Array, target: jax.Array,
                  stft_resolutions: Sequence[Sequence[int]] = STFT_RESOLUTIONS,
                  spectral_weight: float = 1.0) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per window: L2 + spectral_weight * (spectral convergence + log-magnitude L1), the STFT
    terms averaged over resolutions. Inputs are [B, T, C] (C = 1 for mono) or [B, T]; returns
    ([B], parts of [B])."""
    pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
    batch = pred.shape[0]
    l2 = _window_mean((pred - target) ** 2)
    if pred.ndim == 3:
        # Each channel is its own signal for the STFT.
        pred, target = (jnp.moveaxis(a, -1, 1).reshape(-1, a.shape[1]) for a in (pred, target))
    convergence, log_magnitude = 0.0, 0.0
    for n_fft, hop, win_length in stft_resolutions:
        s_pred = stft_magnitude(pred, n_fft, hop, win_length).reshape(batch, -1)
        s_target = stft_magnitude(target, n_fft, hop, win_length).reshape(batch, -1)
        convergence += _norm(s_target - s_pred) / _norm(s_target)
        log_magnitude += jnp.mean(jnp.abs(jnp.log(s_target) - jnp.log(s_pred)), axis=1)
    convergence /= len(stft_resolutions)
    log_magnitude /= len(stft_resolutions)
    loss = l2 + spectral_weight * (convergence + log_magnitude)
    return loss, {"l2": l2, "spectral_convergence": convergence, "log_magnitude": log_magnitude}


def reconstruction_loss(output: jax.Array, batch: Mapping[str, jax.Array],
                        config: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
    """One level's reconstruction loss per window [B] and its parts (see `window_losses`)."""
    kind, weights = config["output"], config["loss"]
    if kind == "bernoulli":
        return pianoroll_loss(output, batch["inputs"], batch["onset_channels"],
                              weights["onset_weight"])
    if kind == "waveform":
        return waveform_loss(output, batch["inputs"], weights["stft_resolutions"],
                             weights["spectral_weight"])
    raise ValueError(f"unknown output {kind!r} (expected 'bernoulli' or 'waveform')")


def window_losses(outputs: Sequence[jax.Array], batch: Mapping[str, jax.Array],
                  aux: Mapping[str, Any], config: Mapping[str, Any]
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per window [B]: the reconstruction losses summed over levels plus the commitment loss.

    `config` is the model config (its `output` and `loss` entries are read); `batch` holds
    "inputs" [B, T, C] and, for piano-rolls, "onset_channels" [C] (bool); `aux` the model's
    per-window `commit_losses` (one [B] per level). Parts: recon_loss, commit_loss and per
    level `level{l}/...` (recon, commit and the loss parts), each [B].
    """
    parts, recon_loss = {}, 0.0
    for level, out in enumerate(outputs):
        recon, level_parts = reconstruction_loss(out, batch, config)
        recon_loss += recon
        parts.update({f"level{level}/{k}": v for k, v in
                      {"recon": recon, "commit": aux["commit_losses"][level], **level_parts}.items()})
    commit = sum(aux["commit_losses"])
    parts.update(recon_loss=recon_loss, commit_loss=commit)
    return recon_loss + commit, parts


def vqvae_loss(outputs: Sequence[jax.Array], batch: Mapping[str, jax.Array],
               aux: Mapping[str, Any], config: Mapping[str, Any]
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The training loss: the mean over the batch of `window_losses`. Metrics are float
    scalars: loss, the means of its parts, and per level the codebook statistics."""
    per_window, parts = window_losses(outputs, batch, aux, config)
    metrics = {k: jnp.mean(v) for k, v in parts.items()}
    for level, stats in enumerate(aux["codebook_stats"]):
        metrics.update({f"level{level}/{k}": v for k, v in stats.items()})
    loss = jnp.mean(per_window)
    metrics["loss"] = loss
    return loss, metrics
