"""How well each level's reconstruction matches the split.

Piano-rolls: the notes users get — each recording's windows in time order, read back as
notes (roll + peak-picked onsets, `config.decode`), scored against the recording's labelled
notes by mir_eval (onset F1 at 50 ms, and with offsets), summed over the split; beside them
the in-jit counters of the frames and of the onset channels (one-to-one within the same
tolerance), and optionally mir_eval's multi-pitch frame metrics. Offline, every recording's
reconstructed notes are written as a MusicNet label CSV and a MIDI file.

Waveforms: Jukebox's spectral convergence (the linear ratio averaged over the split, then dB),
multi-resolution STFT distance, log-mel L1 and SI-SDR, averaged over windows; offline, the
first validation windows and every level's reconstruction of them as WAVs and spectrograms.
"""

from __future__ import annotations

import numpy as np

from musicflax.audio import plots
from musicflax.eval import audio_metrics, notes as notes_lib
from musicflax.models import metrics


def run(ctx, cfg) -> dict:
    if ctx.is_prior:
        return {"skipped": "a prior reconstructs nothing"}
    section = {}
    for level in range(ctx.levels):
        scores = pianoroll_scores(ctx, cfg, level) if ctx.is_pianoroll else \
            waveform_scores(ctx, level)
        section.update({(k if level == 0 else f"level{level}/{k}"): v for k, v in scores.items()})
    if cfg.get("figures", 0) and ctx.out_dir is not None:
        section["figures"] = figures(ctx, int(cfg.figures))
    return section


def waveform_scores(ctx, level: int) -> dict:
    out = ctx.outputs
    return {"spectral_convergence_db": float(audio_metrics.ratio_db(np.mean(out[f"sc_ratio{level}"]))),
            **{k: float(np.mean(out[f"{k}{level}"])) for k in ("mr_stft", "log_mel_l1",
                                                               "si_sdr_db")}}


def _unpack(bits: np.ndarray, channels: int) -> np.ndarray:
    return np.unpackbits(bits, axis=-1, count=channels).astype(bool)


def recording_rows(recording_id: np.ndarray) -> list[np.ndarray]:
    """Row indices of each recording's windows (consecutive in table order)."""
    cuts = np.flatnonzero(np.diff(recording_id)) + 1
    return np.split(np.arange(len(recording_id)), cuts)


def reference_notes(data, rec_index: int, frames: int) -> dict:
    """The labelled notes of a recording that start in its first `frames` frames, offsets
    cut there (the span its windows cover), as mir_eval compares them: exact label times."""
    mine = (data.note_rec == rec_index) & (data.note_start < frames)
    onset = data.note_onset[mine]
    # A note labelled with no length lasts a frame, as the roll paints it (mir_eval needs > 0).
    offset = np.maximum(data.note_offset[mine], onset + 1 / data.frame_rate)
    return {"start": onset, "end": np.minimum(offset, frames / data.frame_rate),
            "pitch": data.note_pitch[mine].astype(np.int64),
            "group": data.note_group[mine].astype(np.int64)}


def read_back(task, roll: np.ndarray, onsets: np.ndarray) -> dict:
    """A recording's predicted roll and onsets [T, C] -> notes, with their group."""
    notes = task.read_notes(roll, onsets)
    # Each group writes its first code, so the program names the group.
    programs = np.asarray(task.groups.programs)
    notes["group"] = np.argmax(notes["instrument"][:, None] == programs[None], axis=1)
    return notes


def pianoroll_scores(ctx, cfg, level: int) -> dict:
    task, out, windows = ctx.task, ctx.outputs, ctx.windows
    tolerance = metrics.onset_tolerance_frames(task.frame_rate)
    scores = {**metrics.f1({k: out[f"frame_{k}{level}"] for k in ("tp", "fp", "fn")}, "frame_"),
              **metrics.f1({k: out[f"onset_{k}{level}"] for k in ("tp", "fp", "fn")},
                           "onset_channel_")}
    if windows.hop != windows.window:
        scores["notes_skipped"] = "note read-back needs non-overlapping windows (eval_hop_frames 0)"
        return scores
    channels = task.num_channels
    data = windows.data
    totals = {"onset_tp": 0.0, "offset_tp": 0.0, "ref": 0.0, "est": 0.0}
    frame_totals = {"tp": 0.0, "ref": 0.0, "est": 0.0}
    per_recording = []
    for rows in recording_rows(out["recording_id"]):
        rec_id = int(out["recording_id"][rows[0]])
        rec_index = int(np.flatnonzero(data.ids == rec_id)[0])
        roll = _unpack(out[f"roll{level}"][rows], channels).reshape(-1, channels)
        onsets = _unpack(out[f"onsets{level}"][rows], channels).reshape(-1, channels)
        est = read_back(task, roll, onsets)
        ref = reference_notes(data, rec_index, len(roll))
        counts = notes_lib.note_counts(ref, est)
        totals = {k: totals[k] + counts[k] for k in totals}
        per_recording.append(notes_lib.note_scores(counts)["note_onset_f1"])
        if cfg.get("multipitch", False):
            ref_roll = _unpack(out["ref_roll"][rows], channels).reshape(-1, channels)
            mp = notes_lib.multipitch_counts(ref_roll, roll)
            frame_totals = {k: frame_totals[k] + mp[k] for k in frame_totals}
        path = ctx.write_path(f"notes/level{level}/{rec_id}.csv") if cfg.get("write_notes") \
            else None
        if path is not None:
            notes_lib.write_recording(path.parent, rec_id, est, task.groups.programs)
    scores.update(notes_lib.note_scores(totals))
    scores.update(note_onset_f1_mean_over_recordings=float(np.mean(per_recording)),
                  reference_notes=totals["ref"], estimated_notes=totals["est"],
                  recordings=len(per_recording), onset_tolerance_seconds=notes_lib.ONSET_TOLERANCE,
                  onset_tolerance_frames=tolerance, offset_ratio=notes_lib.OFFSET_RATIO)
    if cfg.get("multipitch", False):
        scores.update(notes_lib.multipitch_scores(frame_totals))
    return scores


def figures(ctx, count: int) -> list[str]:
    """Original vs reconstruction of the split's first windows, as PNGs (and TensorBoard)."""
    batch = next(ctx.batches(ctx.windows))
    batch = {k: v[:count] for k, v in batch.items()}
    _, outputs = next(ctx.runner(ctx.task.image_outputs, ctx.state, [batch],
                                 replicated_batch=True))
    names = []
    for i in range(min(count, len(batch["mask"]))):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        for level in range(ctx.levels):
            key = "recon" if level == 0 else f"recon_level{level}"
            if key not in outputs:
                continue
            suffix = "" if level == 0 else f"_level{level}"
            image = ctx.task.render_images(one, {"recon": outputs[key][i:i + 1]}, ctx.step)
            path = ctx.write_path(f"reconstruction_{i}{suffix}.png")
            plots.save_png(path, image)
            ctx.images[f"reconstruction_{i}{suffix}"] = image
            names.append(path.name)
            if not ctx.is_pianoroll:  # listen to it: the window, then each level's rendition
                if level == 0:
                    names.append(write_wav(ctx, f"reconstruction_{i}_original.wav",
                                           batch["inputs"][i, :, 0]))
                names.append(write_wav(ctx, f"reconstruction_{i}{suffix}.wav",
                                       outputs[key][i, :, 0]))
    return names


def write_wav(ctx, name: str, wave: np.ndarray) -> str:
    from scipy.io import wavfile  # pylint: disable=g-import-not-at-top
    path = ctx.write_path(name)
    with path.open("wb") as f:
        wavfile.write(f, int(ctx.task.config.data.sample_rate),
                      np.clip(np.asarray(wave, np.float32), -1.0, 1.0))
    return path.name
