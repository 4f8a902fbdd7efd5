"""Evaluators: plug-ins named in the eval config (`config.evals.<name>`), big_vision style.

Each evaluator takes the shared `Context` (the loaded VQ-VAE, the split's windows, one pass
of encodings over the whole split) and returns a section of the report (a dict of numbers,
lists and file names). Everything is computed over every window of the split.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from musicflax.audio import midi, plots
from musicflax.data import input_pipeline, musicnet
from musicflax.data import windows as windows_lib
from musicflax.eval import audio_metrics, probes, statistics
from musicflax.models import metrics
from musicflax.train import sharding


@dataclasses.dataclass
class Context:
    """What every evaluator may read; passes over data are computed once, on first use."""

    config: ml_collections.ConfigDict        # the VQ-VAE run's config
    eval_config: ml_collections.ConfigDict   # the eval config
    task: Any                                # musicflax.train.tasks.VQVAETask
    state: Any                               # its TrainState
    split: str
    out_dir: epath.Path
    mesh: Any = None                         # batches are split over its data axis
    data: ml_collections.ConfigDict | None = None  # the evaluated data (default: as trained)
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.data = self.data or self.config.data

    @functools.cached_property
    def builder(self):
        return input_pipeline.get_builder(self.data)

    @functools.cached_property
    def windows(self) -> input_pipeline.Windows:
        return input_pipeline.create_windows(self.data, self.split, train=False,
                                             builder=self.builder)

    @functools.cached_property
    def encoded(self) -> dict[str, np.ndarray]:
        """One pass over every window of the split (see `encode_windows`)."""
        return encode_windows(self, self.windows, reconstruct=True)

    @functools.cached_property
    def encoded_train(self) -> dict[str, np.ndarray]:
        """Pooled latents of (at most eval.max_train_windows) train windows, for probes."""
        windows = input_pipeline.create_windows(self.data, "train", train=False,
                                                builder=self.builder)
        return encode_windows(self, windows, reconstruct=False,
                              limit=self.eval_config.max_train_windows)

    @property
    def is_pianoroll(self) -> bool:
        return self.config.data.representation == "pianoroll"

    def codes_per_second(self, level: int) -> float:
        hop = self.task.model.hops[level]
        rate = self.config.data.frame_rate if self.is_pianoroll else self.config.data.sample_rate
        return rate / hop


# Data fields an evaluation may point elsewhere; the rest must stay as the model was trained.
DATA_OVERRIDES = ("source", "tfds_data_dir", "split_scheme", "split_lists",
                  "validation_fraction", "test_fraction", "instrument_groups", "audio_source",
                  "on_bad_row")


def data_for_eval(trained: ml_collections.ConfigDict,
                  overrides: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
    """The run's data config with the eval config's non-empty `data` fields applied.

    Windows must look as the model was trained on: the representation, rates and window
    length cannot be overridden, and other instrument groups must keep the channel count.
    """
    data = ml_collections.ConfigDict(trained.to_dict())
    for key, value in (overrides or {}).items():
        if not value:  # empty: as trained
            continue
        if key not in DATA_OVERRIDES:
            raise musicnet.DataError(f"data.{key} cannot change at evaluation: the checkpoint was "
                             f"trained with data.{key}={trained.get(key)!r}")
        data[key] = value
    before = windows_lib.InstrumentGroups.parse(trained.instrument_groups)
    after = windows_lib.InstrumentGroups.parse(data.instrument_groups)
    if len(after.names) != len(before.names):
        raise musicnet.DataError(f"data.instrument_groups={data.instrument_groups!r} has "
                         f"{len(after.names)} groups; the model was trained on "
                         f"{len(before.names)} ({trained.instrument_groups!r})")
    return data


def encode_windows(ctx: Context, windows: input_pipeline.Windows, reconstruct: bool,
                   limit: int = 0) -> dict[str, np.ndarray]:
    """Codes, pooled latents and metadata of every window (and reconstruction counts).

    Returned per window: codes{l} [N, T_l], pooled{l} [N, D] (mean quantized latent), and
    composer, ensemble, recording_id, start_time; for waveforms also frame latents and pitch
    labels for the transcription probe; with `reconstruct`, summed reconstruction metrics.
    """
    task, state = ctx.task, ctx.state
    variables = {"params": state.params, **state.model_state}

    @jax.jit
    def run(batch):
        x = task.model_inputs(batch)
        vectors = task.model.apply(variables, x, method="embed")
        out = {f"pooled{l}": v.mean(axis=1) for l, v in enumerate(vectors)}
        out.update({f"codes{l}": c for l, c in enumerate(
            task.model.apply(variables, x, method="encode"))})
        if not ctx.is_pianoroll:
            out["frames0"] = vectors[0]
        if reconstruct:
            out["recon"] = task.model.apply(variables, vectors[0], 0, method="decode_vectors")
        return out

    keep = {k: [] for k in ("composer", "ensemble", "recording_id", "start_time")}
    sums: dict[str, Any] = {}
    audio_rows = []
    collected: dict[str, list] = {}
    seen = 0
    for batch in input_pipeline.as_numpy(windows.eval_dataset(ctx.eval_config.batch_size)):
        mask = batch["mask"]
        out = jax.device_get(run(sharding.global_batch(batch, ctx.mesh) if ctx.mesh else batch))
        for k in keep:
            keep[k].append(batch[k][mask])
        for k, v in out.items():
            if k != "recon":
                collected.setdefault(k, []).append(np.asarray(v)[mask])
        if not ctx.is_pianoroll:
            collected.setdefault("pitch_labels", []).append(batch["pitch_labels"][mask])
            collected.setdefault("raw_frames", []).append(raw_frame_features(
                batch["inputs"][mask, :, 0], batch["pitch_labels"].shape[1]))
        if reconstruct:
            if ctx.is_pianoroll:
                roll, onsets = task.predicted_rolls(jnp.asarray(out["recon"]))
                counts = {"frame": metrics.frame_counts(roll, batch["inputs"], mask),
                          "onset": metrics.onset_counts(onsets, batch["onsets"], 1, mask)}
                sums = jax.tree.map(lambda a, b: a + float(b), sums, counts) if sums else \
                    jax.tree.map(float, counts)
            else:
                ref, est = batch["inputs"][mask, :, 0], np.asarray(out["recon"])[mask, :, 0]
                audio_rows.append(waveform_scores(ref, est, ctx.config.data.sample_rate))
        seen += int(mask.sum())
        if limit and seen >= limit:
            break
    result = {k: np.concatenate(v) for k, v in {**keep, **collected}.items()}
    if reconstruct:
        result["recon_counts"] = sums
        if audio_rows:
            result["audio_scores"] = {k: float(np.mean(np.concatenate([r[k] for r in audio_rows])))
                                      for k in audio_rows[0]}
    return result


def raw_frame_features(wave: np.ndarray, frames: int) -> np.ndarray:
    """Log-magnitude spectra per label frame: the raw-input reference for the pitch probe."""
    n, t = wave.shape
    hop = t // frames
    framed = wave[:, :frames * hop].reshape(n, frames, hop) * np.hanning(hop)
    return np.log1p(np.abs(np.fft.rfft(framed, axis=-1))).astype(np.float32)


def waveform_scores(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """Per-window audio metrics (so that means are over windows, independent of batching)."""
    rows = {"spectral_convergence_db": [], "mr_stft": [], "log_mel_l1": [], "si_sdr_db": []}
    for r, e in zip(ref, est):
        rows["spectral_convergence_db"].append(audio_metrics.spectral_convergence(r, e))
        rows["mr_stft"].append(audio_metrics.multi_resolution_stft_distance(r, e))
        rows["log_mel_l1"].append(audio_metrics.log_mel_l1(r, e, sample_rate))
        rows["si_sdr_db"].append(audio_metrics.si_sdr(r, e))
    return {k: np.asarray(v, np.float64) for k, v in rows.items()}


# ---------------------------------------------------------------------------- evaluators

def codebook(ctx: Context, cfg) -> dict:
    """Per level: usage, perplexity, normalized entropy, dead codes, bitrate; a histogram."""
    del cfg
    from musicflax.train.tasks import ema_cluster_sizes  # pylint: disable=g-import-not-at-top
    ema = ema_cluster_sizes(jax.device_get(ctx.state.model_state))
    threshold = ctx.config.model.quantizer.restart_threshold
    section = {}
    for level in range(ctx.config.model.levels):
        counts = np.bincount(ctx.encoded[f"codes{level}"].ravel(),
                             minlength=ctx.task.codebook_size)
        stats = metrics.histogram_stats(counts, ema[level] if ema else None, threshold)
        rate = ctx.codes_per_second(level)
        entropy_bits = stats["normalized_entropy"] * math.log2(ctx.task.codebook_size)
        stats.update(codebook_size=ctx.task.codebook_size, codes_per_second=rate,
                     bitrate_max=rate * math.log2(ctx.task.codebook_size),
                     bitrate_entropy=rate * entropy_bits)
        path = ctx.out_dir / f"codebook_level{level}.png"
        statistics.code_histogram_png(path, counts, f"level {level}: code frequencies")
        stats["figure"] = path.name
        section[f"level{level}"] = stats
    return section


def reconstruction(ctx: Context, cfg) -> dict:
    """Piano-roll frame/onset P/R/F1, or waveform SC/MR-STFT/log-mel/SI-SDR; figures."""
    enc = ctx.encoded
    if ctx.is_pianoroll:
        section = {**metrics.f1(enc["recon_counts"]["frame"], "frame_"),
                   **metrics.f1(enc["recon_counts"]["onset"], "onset_"),
                   "onset_tolerance_frames": 1}
    else:
        section = dict(enc["audio_scores"])
    figures = []
    batch = next(input_pipeline.as_numpy(ctx.windows.eval_dataset(cfg.figures)))
    variables = {"params": ctx.state.params, **ctx.state.model_state}
    outputs, _ = ctx.task.model.apply(variables, ctx.task.model_inputs(batch), train=False)
    recon = np.asarray(outputs[0])
    for i in range(cfg.figures):
        title = f"recording {batch['recording_id'][i]} at {batch['start_time'][i]:.1f} s"
        path = ctx.out_dir / f"reconstruction_{i}.png"
        if ctx.is_pianoroll:
            probs = np.asarray(jax.nn.sigmoid(recon[i, :, :ctx.task.num_channels]))
            image = plots.render_roll_comparison(batch["inputs"][i], probs,
                                                 ctx.config.data.frame_rate, title,
                                                 ctx.task.groups.names)
        else:
            image = plots.render_spectrogram_comparison(batch["inputs"][i, :, 0], recon[i, :, 0],
                                                        ctx.config.data.sample_rate, title)
        plots.save_png(path, image)
        ctx.images[f"reconstruction_{i}"] = image
        figures.append(path.name)
    section["figures"] = figures
    return section


def probes_section(ctx: Context, cfg) -> dict:
    """Linear probes on frozen latents: composer, ensemble (and pitch for waveforms)."""
    train, held = ctx.encoded_train, ctx.encoded
    vocab = ctx.windows.data.vocab
    section = {}
    for label, names in (("composer", vocab["composers"]), ("ensemble", vocab["ensembles"])):
        for level in range(ctx.config.model.levels):
            probe = probes.train_linear_probe(train[f"pooled{level}"], train[label], len(names),
                                              l2=cfg.l2)
            predicted = probe.predict(held[f"pooled{level}"])
            section[f"{label}_level{level}"] = {
                "accuracy": float(np.mean(predicted == held[label])),
                "majority_baseline": probes.majority_baseline(train[label], held[label]),
                "classes": len(names), "train_windows": int(len(train[label])),
                "eval_windows": int(len(held[label]))}
    if not ctx.is_pianoroll:
        section["pitch"] = pitch_probe(ctx, cfg)
    return section


def pitch_probe(ctx: Context, cfg) -> dict:
    """Frame-level multi-pitch AP (MusicNet's metric) from latents vs from raw spectra.

    Probes fit on the first half of the split's windows (by recording) and are scored on the
    second half, so no recording is in both.
    """
    enc = ctx.encoded
    labels = enc["pitch_labels"].astype(np.float32)          # [N, F, 128]
    frames = labels.shape[1]
    latents = enc["frames0"]                                 # [N, T0, D]
    pooled = latents[:, :(latents.shape[1] // frames) * frames].reshape(
        latents.shape[0], frames, -1, latents.shape[-1]).mean(axis=2)
    recs = np.unique(enc["recording_id"])
    fit = np.isin(enc["recording_id"], recs[:max(1, len(recs) // 2)])
    out = {}
    for name, features in (("latent", pooled), ("raw_spectrum", enc["raw_frames"])):
        flat = features.reshape(-1, features.shape[-1])
        targets = labels.reshape(-1, labels.shape[-1])
        rows = np.repeat(fit, frames)
        if rows.all() or not rows.any():
            return {"skipped": "needs at least two recordings in the split"}
        probe = probes.train_multilabel_probe(flat[rows], targets[rows], l2=cfg.l2)
        out[f"{name}_average_precision"] = probes.average_precision(
            targets[~rows], probe.predict_proba(flat[~rows]))
    return out


def latent_space(ctx: Context, cfg) -> dict:
    """PCA of window embeddings coloured by composer; an interpolation decoded to MIDI."""
    enc = ctx.encoded
    points = statistics.pca_2d(enc["pooled0"][:cfg.max_points])
    path = ctx.out_dir / "latent_pca_composer.png"
    statistics.scatter_png(path, points, enc["composer"][:cfg.max_points],
                           ctx.windows.data.vocab["composers"], "window embeddings (PCA)")
    section = {"pca_figure": path.name}
    if ctx.is_pianoroll:
        section["interpolation_midi"] = interpolate_to_midi(ctx, cfg.interpolation_steps)
    return section


def interpolate_to_midi(ctx: Context, steps: int) -> str:
    """Decodes latents on the line between two fixed windows (different recordings)."""
    batch = next(input_pipeline.as_numpy(ctx.windows.eval_dataset(ctx.eval_config.batch_size)))
    other = int(np.flatnonzero(batch["recording_id"] != batch["recording_id"][0])[0]) \
        if (batch["recording_id"] != batch["recording_id"][0]).any() else 1
    variables = {"params": ctx.state.params, **ctx.state.model_state}
    x = ctx.task.model_inputs(batch)
    z = ctx.task.model.apply(variables, x, method="embed")[0]
    alphas = np.linspace(0.0, 1.0, steps)[:, None, None]
    line = (1 - alphas) * np.asarray(z[0]) + alphas * np.asarray(z[other])
    logits = ctx.task.model.apply(variables, jnp.asarray(line), 0, method="decode_vectors")
    roll, onsets = (np.asarray(a, np.uint8) for a in ctx.task.predicted_rolls(logits))
    # One after the other in time: window 0 ... window `other`.
    roll, onsets = roll.reshape(-1, roll.shape[-1]), onsets.reshape(-1, onsets.shape[-1])
    notes = midi.roll_to_notes(roll, ctx.config.data.frame_rate, ctx.task.groups.programs,
                               onsets=onsets)
    path = ctx.out_dir / "interpolation.mid"
    midi.write_midi(path, **notes)
    return path.name


@functools.lru_cache(maxsize=None)
def _load_prior(workdir: str):
    from musicflax.train import trainer  # pylint: disable=g-import-not-at-top
    return trainer.load_state(workdir)


def prior_section(ctx: Context, cfg) -> dict:
    """Bits per code / per second and top-1 accuracy of the prior on the split's codes,
    beside uniform, unigram and bigram baselines fit on the training codes."""
    from musicflax.train import codes  # pylint: disable=g-import-not-at-top
    if not cfg.workdir:
        return {"skipped": "no prior given (--config.evals.prior.workdir=...)"}
    prior_config, prior_task, prior_state = _load_prior(cfg.workdir)
    split_codes = codes.encode_split(prior_config.prior.vqvae_workdir, ctx.split,
                                     prior_config.prior.level, prior_task.vqvae_step)
    stream = input_pipeline.CodeWindows(split_codes, prior_task.length, prior_task.length,
                                        train=False)
    step = jax.jit(lambda batch: prior_task.eval_sums(prior_state.params, {}, batch))
    sums = None
    for batch in input_pipeline.as_numpy(stream.eval_dataset(ctx.eval_config.batch_size)):
        out = jax.device_get(step(batch))
        sums = out if sums is None else jax.tree.map(np.add, sums, out)
    section = prior_task.finalize_eval(sums, {})
    section.update(codes.baseline_bits(prior_task.train_codes, split_codes))
    section.update(prior_step=int(prior_state.step), level=int(prior_config.prior.level),
                   context_codes=prior_task.length)
    return section


def generated(ctx: Context, cfg) -> dict:
    """Statistics of sampled music vs held-out windows (same length, same split)."""
    if not cfg.workdir:
        return {"skipped": "no prior given (--config.evals.generated.workdir=...)"}
    if not ctx.is_pianoroll:
        return {"skipped": "music statistics need a piano-roll VQ-VAE"}
    _, prior_task, prior_state = _load_prior(cfg.workdir)
    hop = ctx.task.model.hops[prior_task.config.prior.level]
    length = ctx.windows.window // hop
    sampled = prior_task.model.sample(prior_state.params, jax.random.PRNGKey(cfg.seed),
                                      cfg.num_samples, length)
    rolls = np.stack([s["roll"] for s in prior_task.decode(np.asarray(sampled))])
    held = next(input_pipeline.as_numpy(ctx.windows.eval_dataset(cfg.num_samples)))
    reference = held["inputs"][held["mask"]]
    rate = ctx.config.data.frame_rate
    gen_stats = statistics.music_statistics(rolls, rate)
    ref_stats = statistics.music_statistics(reference, rate)
    return {"samples": int(cfg.num_samples), "generated": gen_stats, "held_out": ref_stats,
            "pitch_class_distance": statistics.pitch_class_distance(
                statistics.pitch_class_histogram(rolls),
                statistics.pitch_class_histogram(reference))}


EVALUATORS: dict[str, Callable[[Context, Any], dict]] = {
    "codebook": codebook,
    "reconstruction": reconstruction,
    "probes": probes_section,
    "latent_space": latent_space,
    "prior": prior_section,
    "generated": generated,
}
