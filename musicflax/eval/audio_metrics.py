"""Waveform reconstruction metrics (numpy): spectral convergence, multi-resolution STFT distance,
log-mel L1 and SI-SDR.

Every metric takes a reference and an estimate of the same shape, [N, T] or [T] (a single item),
computes one value per item and, with `reduce=True` (the default), returns the batch mean as a
python float; `reduce=False` returns the per-item values as a float64 array [N].

STFTs follow torch.stft's defaults, which the published numbers were computed with: frames are
centred (the signal is reflect-padded by n_fft // 2 on both sides), the window is a periodic Hann
window of `win_length` samples zero-padded to n_fft in the middle of the frame, and there is no
normalisation. It is the training loss's STFT (`musicflax.models.losses.stft_magnitude`) with
reflect padding, computed in float32.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from musicflax.models import losses

JUKEBOX_STFT = (2048, 256, 1536)  # (n_fft, hop, win_length) of Jukebox's spectral convergence
JUKEBOX_EPSILON = 2e-3            # Jukebox's clamp on the reference spectrogram's norm
SC_FLOOR = 1e-10                  # ratio floor: a perfect reconstruction reads -200 dB
SI_SDR_FLOOR = 1e-20              # noise/target energy floor: a perfect estimate reads 200 dB
LOG_STFT_FLOOR = 1e-7             # magnitude clamp before the log (as in Parallel WaveGAN)
LOG_MEL_FLOOR = 1e-5              # mel magnitude clamp before the log (as in HiFi-GAN)


def _pair(ref, est) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as float64 [N, T]."""
    ref, est = np.asarray(ref, np.float64), np.asarray(est, np.float64)
    if ref.shape != est.shape or ref.ndim not in (1, 2):
        raise ValueError(f"ref {ref.shape} and est {est.shape} must both be [N, T] or [T]")
    return np.atleast_2d(ref), np.atleast_2d(est)


def _reduce(values: np.ndarray, reduce: bool) -> float | np.ndarray:
    return float(np.mean(values)) if reduce else values


def stft_magnitude(waves: np.ndarray, n_fft: int, hop: int, win_length: int) -> np.ndarray:
    """|STFT| of waves [N, T] as [N, frames, n_fft // 2 + 1], laid out as torch.stft's
    (reflect padding): the training loss's STFT (`losses.stft_magnitude`), float32."""
    magnitude = losses.stft_magnitude(jnp.asarray(waves, jnp.float32), n_fft, hop, win_length,
                                      pad_mode="reflect", floor=0.0)
    return np.asarray(magnitude, np.float64)


def _frobenius(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(x ** 2, axis=(1, 2)))


def _convergence_ratio(ref_mag: np.ndarray, est_mag: np.ndarray,
                       epsilon: float) -> np.ndarray:
    """‖|S_ref| − |S_est|‖_F / ‖|S_ref|‖_F per item; 0 where the reference norm ≤ epsilon."""
    ref_norm, error = _frobenius(ref_mag), _frobenius(ref_mag - est_mag)
    return np.divide(error, ref_norm, out=np.zeros_like(error), where=ref_norm > epsilon)


def spectral_convergence_ratio(ref, est) -> np.ndarray:
    """Jukebox's spectral convergence of each item, as a linear ratio [N] (see below)."""
    ref, est = _pair(ref, est)
    return _convergence_ratio(stft_magnitude(ref, *JUKEBOX_STFT),
                              stft_magnitude(est, *JUKEBOX_STFT), JUKEBOX_EPSILON)


def ratio_db(ratio) -> float | np.ndarray:
    """20·log10 of a spectral convergence ratio, floored at 1e-10 (-200 dB)."""
    return 20.0 * np.log10(np.maximum(ratio, SC_FLOOR))


def spectral_convergence(ref, est, reduce: bool = True) -> float | np.ndarray:
    """Jukebox's spectral convergence in dB (lower is better).

    Per item, SC = ‖|STFT(ref)| − |STFT(est)|‖_F / ‖|STFT(ref)|‖_F with n_fft=2048, hop=256 and
    a 1536-sample Hann window (Jukebox's `spectral_convergence`, including its quirk that a
    reference whose spectrogram norm is ≤ 2e-3, i.e. silence, scores 0). The reported value is
    20·log10(max(SC, 1e-10)): 0 dB means an error as large as the signal, 20·log10(0.5) ≈ −6.02
    dB a spectrogram off by half, and −200 dB a perfect reconstruction. With `reduce`, the
    linear ratio is averaged over the batch before the conversion (Jukebox averages the ratio),
    so one near-perfect item cannot drag the mean towards −200 dB; a split is reduced the same
    way (mean of `spectral_convergence_ratio` over all its windows, then `ratio_db`).
    """
    ratio = spectral_convergence_ratio(ref, est)
    return float(ratio_db(np.mean(ratio))) if reduce else ratio_db(ratio)


def multi_resolution_stft_distance(
        ref, est, resolutions=((2048, 512, 2048), (1024, 256, 1024), (512, 128, 512)),
        reduce: bool = True) -> float | np.ndarray:
    """Mean over (n_fft, hop, win_length) resolutions of SC + log-magnitude L1 (lower is better).

    The multi-resolution STFT loss of Parallel WaveGAN (Yamamoto et al. 2020) used as a metric:
    per resolution, the linear spectral convergence ratio (as above, without Jukebox's silence
    rule) plus mean |log|S_ref| − log|S_est|| with magnitudes clamped at 1e-7. Identical signals
    give 0; est = a·ref gives |1 − a| + |ln a| wherever the spectrum stays above the clamp.
    """
    ref, est = _pair(ref, est)
    total = np.zeros(len(ref))
    for n_fft, hop, win_length in resolutions:
        ref_mag = stft_magnitude(ref, n_fft, hop, win_length)
        est_mag = stft_magnitude(est, n_fft, hop, win_length)
        log_l1 = np.abs(np.log(np.maximum(ref_mag, LOG_STFT_FLOOR))
                        - np.log(np.maximum(est_mag, LOG_STFT_FLOOR))).mean(axis=(1, 2))
        total += _convergence_ratio(ref_mag, est_mag, np.finfo(np.float64).tiny) + log_l1
    return _reduce(total / len(resolutions), reduce)


def hz_to_mel(hz):
    """HTK mel scale: 2595·log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] on the HTK mel scale.

    n_mels + 2 points equally spaced in mel between f_min and f_max (default Nyquist) give each
    filter's left edge, peak and right edge; the triangles are evaluated at the exact bin
    frequencies and have unit peak, without area normalisation (torchaudio's MelSpectrogram
    defaults: mel_scale="htk", norm=None). Neighbouring triangles therefore sum to one between
    the first and the last peak, and every bin strictly between f_min and f_max has weight.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    left, peak, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - left) / (peak - left)
    falling = (right - bins) / (right - peak)
    return np.maximum(0.0, np.minimum(rising, falling))


def log_mel_l1(ref, est, sample_rate: int, n_fft: int = 1024, hop: int = 256,
               n_mels: int = 80, reduce: bool = True) -> float | np.ndarray:
    """Mean |log mel(ref) − log mel(est)| (natural log; lower is better).

    mel(x) applies `mel_filterbank` to the STFT magnitude (n_fft-sample Hann window, hop `hop`)
    and clamps it at 1e-5 before the log, as HiFi-GAN's mel loss does; est = a·ref therefore
    gives |ln a| wherever the mel spectrum stays above the clamp.
    """
    ref, est = _pair(ref, est)
    filters = mel_filterbank(sample_rate, n_fft, n_mels)

    def log_mel(waves):
        return np.log(np.maximum(stft_magnitude(waves, n_fft, hop, n_fft) @ filters.T,
                                 LOG_MEL_FLOOR))
    return _reduce(np.abs(log_mel(ref) - log_mel(est)).mean(axis=(1, 2)), reduce)


def si_sdr(ref, est, reduce: bool = True) -> float | np.ndarray:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al. 2019; higher is better).

    Both signals are made zero-mean; the target is the projection α·ref of est onto ref and the
    noise est − α·ref, and SI-SDR = 10·log10(‖α·ref‖² / ‖est − α·ref‖²). Rescaling est leaves it
    unchanged. The noise energy is floored at 1e-20 of the target's, so a perfect (or merely
    rescaled) estimate reads 200 dB. With `reduce`, the dB values are averaged, as is usual.
    """
    ref, est = _pair(ref, est)
    ref = ref - ref.mean(axis=1, keepdims=True)
    est = est - est.mean(axis=1, keepdims=True)
    tiny = np.finfo(np.float64).tiny
    alpha = np.sum(est * ref, axis=1) / (np.sum(ref ** 2, axis=1) + tiny)
    target = alpha[:, None] * ref
    target_energy = np.sum(target ** 2, axis=1)
    noise_energy = np.maximum(np.sum((est - target) ** 2, axis=1), SI_SDR_FLOOR * target_energy)
    return _reduce(10.0 * np.log10((target_energy + tiny) / (noise_energy + tiny)), reduce)


# (lowest MIDI pitch, n_fft) of the bands of `log_frequency_features`: long windows where
# semitones are a few Hz apart, short ones where they are far apart.
LOG_FREQUENCY_BANDS = ((21, 16384), (48, 4096), (72, 1024))


def log_frequency_features(waves, sample_rate: int, hop: int, frames: int) -> np.ndarray:
    """log(1 + magnitude) on a semitone grid (MIDI 21..108), [N, frames, 88], per `hop`.

    A poor man's constant-Q transform: each band of pitches reads an STFT whose bins are at
    least as narrow as its semitones (16384 samples below MIDI 48 at 16 kHz: 1 Hz bins where
    A0 and A#0 are 1.6 Hz apart), through triangular filters centred on the semitones.
    """
    waves = np.asarray(waves, np.float32)
    pitches = np.arange(21, 109)
    features = []
    bounds = [b[0] for b in LOG_FREQUENCY_BANDS[1:]] + [109]
    for (low, n_fft), high in zip(LOG_FREQUENCY_BANDS, bounds):
        magnitude = np.asarray(losses.stft_magnitude(jnp.asarray(waves), n_fft, hop, n_fft,
                                                     floor=0.0))[:, :frames]
        bins = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
        band = pitches[(pitches >= low) & (pitches < high)]
        centre = 440.0 * 2.0 ** ((band - 69) / 12)
        below, above = centre * 2 ** (-1 / 12), centre * 2 ** (1 / 12)
        weights = np.maximum(0.0, np.minimum((bins - below[:, None]) / (centre - below)[:, None],
                                             (above[:, None] - bins) / (above - centre)[:, None]))
        features.append(np.log1p(magnitude @ weights.T))
    return np.concatenate(features, axis=-1).astype(np.float32)
