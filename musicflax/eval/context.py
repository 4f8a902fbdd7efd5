"""What every evaluator reads: the evaluated run (task + state), the split, and the passes over
its windows, each computed once and shared.

The trainer builds a Context at every validation and `python -m musicflax.eval` builds one
offline; both run the same evaluators on it, so training's numbers and the offline report
are one computation. The task is duck-typed (musicflax.train's VQVAETask or PriorTask:
`eval_windows`, `eval_outputs`, ...), and `runner` (musicflax.train.run.Runner) runs its pure
per-window function over a split on the run's mesh, so nothing here imports the trainer.

The main pass keeps, for every window of the split in table order (recording-major, time
ordered): the per-window outputs of the model, the window's metadata, and for piano-rolls
the predicted and reference rolls bit-packed (for note read-back per recording); for
waveforms the audio scores per window and the features of the pitch probe.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, Callable

import numpy as np
from etils import epath

from musicflax.data import input_pipeline
from musicflax.eval import audio_metrics, statistics

META = ("recording_id", "composer", "ensemble", "start_time")
# Per-window outputs too large to keep as they are (packed, or reduced per window instead).
_STREAMED = ("roll", "onsets", "recon", "latents")


@dataclasses.dataclass
class PriorRun:
    """A prior for the prior-related evaluators: its task, state and a runner on its mesh."""

    task: Any
    state: Any
    runner: Callable
    workdir: Any = None


@dataclasses.dataclass
class Context:
    task: Any                       # the evaluated run's task
    state: Any                      # its TrainState
    runner: Callable                # (fn, state, batches) -> (host batch, outputs) per batch
    split: str
    step: int
    batch_size: int
    out_dir: epath.Path | None = None  # figures and note files go here; None: none written
    priors: tuple[PriorRun, ...] = ()  # a prior, or a hierarchy of them (coarsest first)
    shard: input_pipeline.Shard = input_pipeline.Shard()
    probe_windows: int = 4000       # train windows the probes fit on (evenly per recording)
    pitch_features: bool = True     # waveforms: keep the pitch probe's features (costly)
    images: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def is_prior(self) -> bool:
        return self.task.config.task == "prior"

    @property
    def is_vqvae(self) -> bool:
        return self.task.config.task == "vqvae"

    @property
    def levels(self) -> int:
        """Levels of reconstruction (a score-to-audio model's rendition is one)."""
        return self.task.levels

    @property
    def is_pianoroll(self) -> bool:
        return not self.is_prior and self.task.representation == "pianoroll"

    @functools.cached_property
    def windows(self) -> input_pipeline.TableStream:
        return self.task.eval_windows(self.split)

    def batches(self, windows: input_pipeline.TableStream):
        return input_pipeline.as_numpy(windows.eval_dataset(self.batch_size, shard=self.shard))

    @functools.cached_property
    def outputs(self) -> dict[str, np.ndarray]:
        """The main pass: every window of the split once (see the module docstring)."""
        return self._pass(self.windows, keep_rolls=True)

    @functools.cached_property
    def probe_outputs(self) -> dict[str, np.ndarray]:
        """Pooled latents (and pitch-probe features) of train windows drawn evenly across all
        train recordings, at most `probe_windows`."""
        train = self.task.eval_windows("train")
        return self._pass(evenly_per_recording(train, self.probe_windows), keep_rolls=False)

    def _pass(self, windows, keep_rolls: bool) -> dict[str, np.ndarray]:
        kept: dict[str, list] = {}
        task = self.task
        for batch, out in self.runner(task.eval_outputs, self.state, self.batches(windows)):
            mask = np.asarray(batch["mask"], bool)
            rows = {k: np.asarray(batch[k])[mask] for k in META if k in batch}
            for key, value in out.items():
                if not key.startswith(_STREAMED):
                    rows[key] = np.asarray(value)[mask]
            if not self.is_prior:
                rows.update(self._window_extras(batch, out, mask, keep_rolls))
            for key, value in rows.items():
                kept.setdefault(key, []).append(value)
        return {k: np.concatenate(v) for k, v in kept.items()}

    def _window_extras(self, batch, out, mask, keep_rolls: bool) -> dict[str, np.ndarray]:
        rows = {}
        if self.is_pianoroll:
            if keep_rolls:
                rows["ref_roll"] = np.packbits(batch["inputs"][mask].astype(bool), axis=-1)
                rows["ref_onsets"] = np.packbits(batch["onsets"][mask].astype(bool), axis=-1)
                for level in range(self.levels):
                    for name in ("roll", "onsets"):
                        rows[f"{name}{level}"] = np.packbits(
                            np.asarray(out[f"{name}{level}"])[mask], axis=-1)
            return rows
        wave = np.asarray(batch["inputs"], np.float32)[mask, :, 0]
        rate = int(self.task.config.data.sample_rate)
        labels = np.asarray(batch["pitch_labels"])[mask]
        frames = labels.shape[1]
        rows["pitch_labels"] = np.packbits(labels.astype(bool), axis=-1)

        def pitch_features(waves):
            return audio_metrics.log_frequency_features(waves, rate, waves.shape[1] // frames,
                                                        frames)
        if self.pitch_features:
            rows["raw_frames"] = pitch_features(wave)
        for level in range(self.levels):
            if f"latents{level}" in out and self.pitch_features:
                latents = np.asarray(out[f"latents{level}"])[mask]
                per = latents.shape[1] // frames
                # Latents per label frame: the codes under each frame, averaged.
                rows[f"frame_latents{level}"] = latents[:, :per * frames].reshape(
                    len(latents), frames, per, -1).mean(axis=2) if per else np.repeat(
                    latents, frames // latents.shape[1], axis=1)
            if keep_rolls:
                est = np.asarray(out[f"recon{level}"], np.float32)[mask]
                rows.update({f"{k}{level}": v for k, v in audio_scores(wave, est, rate).items()})
                if self.pitch_features:
                    # What a transcription probe hears in the reconstruction.
                    rows[f"recon_frames{level}"] = pitch_features(est)
        return rows

    @functools.cached_property
    def reference_sums(self) -> dict:
        """Music statistics sums of the split's reference rolls (data only, no model)."""
        windows = self.windows if not self.is_prior else \
            self.task.vqvae.task.eval_windows(self.split)
        sums = None
        for batch in self.batches(windows):
            mask = np.asarray(batch["mask"], bool)
            sums = statistics.add_sums(sums, statistics.music_sums(batch["inputs"][mask],
                                                                   batch["onsets"][mask]))
        return sums

    def write_path(self, name: str) -> epath.Path | None:
        """Where a file of this evaluation goes, or None when no files are written."""
        if self.out_dir is None:
            return None
        path = self.out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


def audio_scores(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """Per-window audio metrics [N] each: Jukebox's spectral convergence as a linear ratio
    (averaged over a split before the dB conversion), MR-STFT, log-mel L1, SI-SDR (dB)."""
    return {"sc_ratio": audio_metrics.spectral_convergence_ratio(ref, est),
            "mr_stft": audio_metrics.multi_resolution_stft_distance(ref, est, reduce=False),
            "log_mel_l1": audio_metrics.log_mel_l1(ref, est, sample_rate, reduce=False),
            "si_sdr_db": audio_metrics.si_sdr(ref, est, reduce=False)}


def evenly_per_recording(windows: input_pipeline.TableStream,
                         limit: int) -> input_pipeline.TableStream:
    """At most `limit` windows of a table: the same number from every recording (all of a
    recording's when it has fewer), evenly spaced inside it. Deterministic."""
    if len(windows) <= limit:
        return windows
    recordings = np.unique(windows.rec)
    per = max(1, limit // len(recordings))
    chosen = []
    for r in recordings:
        rows = np.flatnonzero(windows.rec == r)
        take = min(per, len(rows))
        chosen.append(rows[np.linspace(0, len(rows) - 1, take).round().astype(int)])
    chosen = np.concatenate(chosen)
    subset = copy.copy(windows)
    subset.rec, subset.start = windows.rec[chosen], windows.start[chosen]
    return subset
