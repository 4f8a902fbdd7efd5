"""Note-level and frame-level transcription scores with mir_eval, the field's reference code.

Notes are dicts of parallel arrays: start and end in seconds, MIDI pitch and instrument group.
Scores are counts that add up over recordings (so the split's precision and recall are over
all of its notes, however they are distributed):

- note onsets: `mir_eval.transcription.match_notes` with its standard 50 ms onset tolerance
  and offsets ignored; "with offsets" adds its standard offset rule (within 20% of the
  reference note's length or 50 ms, whichever is larger). A note matches only a note of the
  same pitch and instrument group, each at most once (a maximum matching).
- frames: `mir_eval.multipitch` true positives and counts on the frame grid, pitches of all
  groups together (multi-pitch ignores instruments).
"""

from __future__ import annotations

import os

import mir_eval
import numpy as np

from musicflax.audio import midi
from musicflax.data import musicnet

ONSET_TOLERANCE = 0.05    # mir_eval's default, seconds
OFFSET_RATIO = 0.2        # mir_eval's default
OFFSET_MIN_TOLERANCE = 0.05


def _hz(pitch: np.ndarray) -> np.ndarray:
    return mir_eval.util.midi_to_hz(np.asarray(pitch, np.float64))


def note_counts(ref: dict, est: dict) -> dict[str, float]:
    """Matched / reference / estimated note counts, onsets only and with offsets."""
    out = {"onset_tp": 0.0, "offset_tp": 0.0, "ref": float(len(ref["start"])),
           "est": float(len(est["start"]))}
    ref_key = ref["group"] * 128 + ref["pitch"]
    est_key = est["group"] * 128 + est["pitch"]
    # Different pitches never match (they are 100 cents apart, the tolerance is 50), so
    # matching key by key is mir_eval's matching of the whole list, on far smaller problems.
    for key in np.intersect1d(ref_key, est_key):
        r, e = ref_key == key, est_key == key
        ref_iv = np.stack([ref["start"][r], ref["end"][r]], 1)
        est_iv = np.stack([est["start"][e], est["end"][e]], 1)
        hz_r, hz_e = _hz(ref["pitch"][r]), _hz(est["pitch"][e])
        out["onset_tp"] += len(mir_eval.transcription.match_notes(
            ref_iv, hz_r, est_iv, hz_e, onset_tolerance=ONSET_TOLERANCE, offset_ratio=None))
        out["offset_tp"] += len(mir_eval.transcription.match_notes(
            ref_iv, hz_r, est_iv, hz_e, onset_tolerance=ONSET_TOLERANCE,
            offset_ratio=OFFSET_RATIO, offset_min_tolerance=OFFSET_MIN_TOLERANCE))
    return out


def note_scores(counts: dict[str, float], prefix: str = "note_") -> dict[str, float]:
    """P/R/F1 of summed `note_counts`, onsets only and with offsets."""
    out = {}
    for kind, name in (("onset_tp", "onset"), ("offset_tp", "onset_offset")):
        tp = counts[kind]
        p = tp / counts["est"] if counts["est"] else 0.0
        r = tp / counts["ref"] if counts["ref"] else 0.0
        out.update({f"{prefix}{name}_precision": p, f"{prefix}{name}_recall": r,
                    f"{prefix}{name}_f1": 2 * p * r / (p + r) if p + r else 0.0})
    return out


def multipitch_counts(ref_roll: np.ndarray, est_roll: np.ndarray) -> dict[str, float]:
    """mir_eval.multipitch counts for binary rolls [T, G * 128] (groups merged)."""
    def freqs(roll):  # per frame, in mir_eval's units after its Hz -> MIDI conversion
        sounding = np.asarray(roll).reshape(len(roll), -1, 128).any(axis=1)
        return mir_eval.multipitch.frequencies_to_midi(
            [_hz(np.flatnonzero(frame)) for frame in sounding])
    ref, est = freqs(ref_roll), freqs(est_roll)
    return {"tp": float(mir_eval.multipitch.compute_num_true_positives(ref, est).sum()),
            "ref": float(mir_eval.multipitch.compute_num_freqs(ref).sum()),
            "est": float(mir_eval.multipitch.compute_num_freqs(est).sum())}


def multipitch_scores(counts: dict[str, float]) -> dict[str, float]:
    p = counts["tp"] / counts["est"] if counts["est"] else 0.0
    r = counts["tp"] / counts["ref"] if counts["ref"] else 0.0
    return {"multipitch_precision": p, "multipitch_recall": r,
            "multipitch_f1": 2 * p * r / (p + r) if p + r else 0.0}


def write_recording(out_dir: os.PathLike, rec_id: int, notes: dict,
                    group_programs: tuple[int, ...]) -> None:
    """The notes of one recording as a MusicNet label CSV (`<id>.csv`) and a MIDI file."""
    instrument = np.asarray(group_programs, np.int64)[notes["group"]]
    musicnet.write_labels(os.path.join(out_dir, f"{rec_id}.csv"), notes["start"], notes["end"],
                          instrument, notes["pitch"])
    midi.write_midi(os.path.join(out_dir, f"{rec_id}.mid"), notes["start"], notes["end"],
                    notes["pitch"], instrument)
