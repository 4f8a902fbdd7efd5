"""Windows over one split held in memory: the window table, and batch assembly in TF ops.

A split is kept as note events (frames, channel) plus, for audio configs, one PCM16 array of
all its audio. Piano-rolls are painted per batch from the events (one scatter of each
note's frames) rather than stored densely, so memory grows with the number of notes, not
with hours x channels, and the work runs in TF's threads outside the GIL.

Channel layout of a piano-roll: `group * 128 + pitch`, groups from `InstrumentGroups`.
Waveform windows carry their audio, the pitches sounding per frame (`pitch_labels`, groups
merged) and the aligned score (`score_roll`, `score_onsets`).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from musicflax.data import musicnet
from musicflax.data.instruments import NUM_PITCHES, InstrumentGroups

@dataclasses.dataclass(frozen=True)
class SplitData:
    """One split in memory. Per-recording arrays have length R; note arrays are sorted by
    (recording, start frame)."""

    ids: np.ndarray          # [R] int32 MusicNet ids
    composer: np.ndarray     # [R] int32 index into vocab["composers"]
    ensemble: np.ndarray     # [R] int32 index into vocab["ensembles"]
    num_frames: np.ndarray   # [R] int64
    note_rec: np.ndarray     # [N] int64
    note_start: np.ndarray   # [N] int64 frame
    note_end: np.ndarray     # [N] int64 frame (exclusive, >= start + 1)
    note_group: np.ndarray   # [N] int32
    note_pitch: np.ndarray   # [N] int32
    note_onset: np.ndarray   # [N] float64 seconds, as labelled (not rounded to frames)
    note_offset: np.ndarray  # [N] float64 seconds
    frame_rate: float
    vocab: Mapping[str, Sequence[str]]
    audio: np.ndarray | None = None          # [sum of lengths] int16
    audio_offset: np.ndarray | None = None   # [R] int64
    sample_rate: int = 0


def notes_to_frames(start_time: np.ndarray, end_time: np.ndarray, frame_rate: float):
    """Label sample indices (44.1 kHz) -> [start, end) frames; every note lasts >= 1 frame."""
    start = np.round(start_time * (frame_rate / musicnet.LABEL_RATE)).astype(np.int64)
    end = np.round(end_time * (frame_rate / musicnet.LABEL_RATE)).astype(np.int64)
    return start, np.maximum(end, start + 1)


def window_table(num_frames: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """All windows [start, start + window) inside each recording, every `hop` frames.

    A recording shorter than a window gives none (padding would teach silence).
    """
    recs, starts = [], []
    for r, n in enumerate(num_frames):
        if n >= window:
            s = np.arange(0, n - window + 1, hop, dtype=np.int64)
            recs.append(np.full(len(s), r, np.int64))
            starts.append(s)
    if not recs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(recs), np.concatenate(starts)


class WindowAssembler:
    """Cuts batches of windows out of a SplitData, as TF ops (for use inside tf.data)."""

    def __init__(self, data: SplitData, groups: InstrumentGroups, window: int,
                 representation: str, window_samples: int = 0):
        if representation not in ("pianoroll", "waveform"):
            raise musicnet.DataError(f"unknown representation {representation!r}")
        if representation == "waveform" and data.audio is None:
            raise musicnet.DataError("waveform windows need a dataset with audio (data.sample_rate > 0)")
        self.representation, self.window, self.window_samples = representation, window, window_samples
        self.num_channels = groups.num_channels
        self.frame_rate, self.sample_rate = data.frame_rate, data.sample_rate
        # Sorting key: recording-major, start-minor, so one searchsorted finds a window's notes.
        self._stride = int(data.num_frames.max(initial=0)) + window + 1
        self._key = tf.constant(data.note_rec * self._stride + data.note_start)
        self._start = tf.constant(data.note_start)
        self._end = tf.constant(data.note_end)
        self._channel = tf.constant(data.note_group.astype(np.int64) * NUM_PITCHES
                                    + data.note_pitch)
        self._pitch = tf.constant(data.note_pitch.astype(np.int64))
        longest = np.zeros(len(data.ids), np.int64)
        np.maximum.at(longest, data.note_rec, data.note_end - data.note_start)
        self._longest = tf.constant(longest)
        self._ids = tf.constant(data.ids)
        self._composer = tf.constant(data.composer)
        self._ensemble = tf.constant(data.ensemble)
        if representation == "waveform":
            self._audio = tf.constant(data.audio)
            self._audio_offset = tf.constant(data.audio_offset)

    def _paint(self, rec: tf.Tensor, start: tf.Tensor, channel: tf.Tensor, num_channels: int,
               transpose: tf.Tensor | None = None):
        """(roll, onsets) uint8 [B, window, num_channels] for windows (rec, start frame), each
        window's notes moved by `transpose` [B] semitones (those it moves out of 0..127 dropped)."""
        window, batch = self.window, tf.shape(rec, out_type=tf.int64)[0]
        base = rec * self._stride + start
        lo = tf.searchsorted(self._key, base - tf.gather(self._longest, rec), side="left")
        hi = tf.searchsorted(self._key, base + window, side="left")
        candidates = tf.ragged.range(lo, hi)
        note, row = candidates.flat_values, candidates.value_rowids()
        onset = tf.gather(self._start, note) - tf.gather(start, row)
        offset = tf.gather(self._end, note) - tf.gather(start, row)
        keep = (offset > 0) & (onset < window)
        note, row, onset, offset = (tf.boolean_mask(t, keep) for t in (note, row, onset, offset))
        ch = tf.gather(channel, note)
        if transpose is not None:
            move = tf.gather(transpose, row)
            inside = (ch % NUM_PITCHES + move >= 0) & (ch % NUM_PITCHES + move < NUM_PITCHES)
            ch = ch + move
            row, onset, offset, ch = (tf.boolean_mask(t, inside) for t in (row, onset, offset, ch))
        # Paint each note's frames directly: ~notes x length cells, far fewer than B*T*C.
        frames = tf.ragged.range(tf.maximum(onset, 0), tf.minimum(offset, window))
        owner = frames.value_rowids()
        cells = tf.stack([tf.gather(row, owner), frames.flat_values, tf.gather(ch, owner)], 1)
        shape = tf.stack([batch, window, num_channels])
        zeros = tf.zeros(shape, tf.uint8)
        roll = tf.tensor_scatter_nd_update(zeros, cells, tf.ones_like(owner, tf.uint8))
        starts_inside = onset >= 0
        heads = tf.stack([row, onset, ch], 1)[starts_inside]
        onsets = tf.tensor_scatter_nd_update(zeros, heads, tf.ones_like(heads[:, 0], tf.uint8))
        return roll, onsets

    def __call__(self, rec: tf.Tensor, start: tf.Tensor,
                 transpose: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """The batch for window indices: rec, start (frames) int64 [B]; piano-roll windows
        transposed by `transpose` int64 [B] semitones if given."""
        batch = {
            "recording_id": tf.gather(self._ids, rec),
            "composer": tf.gather(self._composer, rec),
            "ensemble": tf.gather(self._ensemble, rec),
            "start_time": tf.cast(start, tf.float32) / self.frame_rate,
        }
        if self.representation == "pianoroll":
            batch["inputs"], batch["onsets"] = self._paint(rec, start, self._channel,
                                                           self.num_channels, transpose)
        else:
            first = tf.gather(self._audio_offset, rec) + tf.cast(
                tf.round(tf.cast(start, tf.float64) * (self.sample_rate / self.frame_rate)),
                tf.int64)
            idx = first[:, None] + tf.range(self.window_samples, dtype=tf.int64)[None, :]
            wave = tf.cast(tf.gather(self._audio, idx), tf.float32) / 32767.0
            batch["inputs"] = wave[:, :, None]
            batch["pitch_labels"], _ = self._paint(rec, start, self._pitch, NUM_PITCHES)
            # The score of the window, aligned to its audio (what score-to-audio reads).
            batch["score_roll"], batch["score_onsets"] = self._paint(
                rec, start, self._channel, self.num_channels)
        return batch
