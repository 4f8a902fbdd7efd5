"""Windows over one split held in memory: the window table, and batch assembly in TF ops.

A split is kept as note events (frames, channel) plus, for audio configs, one PCM16 array of
all its audio. Piano-rolls are painted per batch from the events (one scatter of each
note's frames) rather than stored densely, so memory grows with the number of notes, not
with hours x channels, and the work runs in TF's threads outside the GIL.

Channel layout of a piano-roll: `group * 128 + pitch`, groups from `InstrumentGroups`.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from musicflax.data import musicnet

NUM_PITCHES = 128


DROP_GROUP = "drop"


@dataclasses.dataclass(frozen=True)
class InstrumentGroups:
    """Named groups of instrument codes (1-based General MIDI programs, as in MusicNet's
    labels); each group is one block of 128 channels.

    Parsed from a spec like "keyboard:1,7;strings:41,42,43,44;winds:61,69,71,72,74". The first
    code of a group is the instrument used when a roll of that group is written as MIDI. A
    group named "drop" (e.g. "...;drop:46") lists codes whose notes are left out.
    """

    names: tuple[str, ...]
    codes: tuple[tuple[int, ...], ...]
    dropped: tuple[int, ...] = ()
    spec: str = ""

    @classmethod
    def parse(cls, spec: str) -> "InstrumentGroups":
        names, codes, dropped = [], [], ()
        for part in filter(None, (p.strip() for p in spec.split(";"))):
            name, sep, code_list = part.partition(":")
            try:
                group = tuple(int(c) for c in code_list.split(",") if c.strip())
            except ValueError:
                group = ()
            if not sep or not group:
                raise musicnet.DataError(f"instrument group {part!r} must look like 'name:1,7'")
            bad = sorted(c for c in group if not 1 <= c <= 128)
            if bad:
                raise musicnet.DataError(f"instrument group {name!r} has codes {bad} that are "
                                         "not 1-based General MIDI programs (1..128)")
            if name.strip() == DROP_GROUP:
                dropped += group
            else:
                names.append(name.strip())
                codes.append(group)
        seen = [c for g in codes for c in g] + list(dropped)
        if len(seen) != len(set(seen)):
            raise musicnet.DataError(f"instrument groups {spec!r} list an instrument twice")
        if not names:
            raise musicnet.DataError(f"instrument groups {spec!r} keep no instrument")
        return cls(tuple(names), tuple(codes), tuple(dropped), spec)

    @property
    def num_channels(self) -> int:
        return NUM_PITCHES * len(self.names)

    @property
    def programs(self) -> tuple[int, ...]:
        return tuple(g[0] for g in self.codes)

    def group_of(self) -> dict[int, int]:
        return {code: i for i, group in enumerate(self.codes) for code in group}

    def unknown_code_error(self, code: int, where: str) -> musicnet.DataError:
        """The one-line error for a code no group holds, saying how to map or drop it."""
        name = musicnet.INSTRUMENTS.get(code) or _gm_name(code)
        # Suggest the group holding an instrument of the same General MIDI family of eight.
        family = [i for i, c in enumerate(self.codes) if any((x - 1) // 8 == (code - 1) // 8
                                                             for x in c)]
        i = family[0] if family else len(self.names) - 1
        example = f"{self.names[i]}:{','.join(map(str, self.codes[i] + (code,)))}"
        return musicnet.DataError(
            f"{where}: instrument {code} ({name}) is in no group of data.instrument_groups="
            f"{self.spec!r}: add it to a group (e.g. '{example}') or drop its notes with "
            f"';{DROP_GROUP}:{code}'")


def _gm_name(code: int) -> str:
    import pretty_midi  # pylint: disable=g-import-not-at-top
    return pretty_midi.program_to_instrument_name(code - 1)


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

    def _paint(self, rec: tf.Tensor, start: tf.Tensor, channel: tf.Tensor, num_channels: int):
        """(roll, onsets) uint8 [B, window, num_channels] for windows (rec, start frame)."""
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

    def __call__(self, rec: tf.Tensor, start: tf.Tensor) -> dict[str, tf.Tensor]:
        """The batch for window indices: rec, start (frames) int64 [B]."""
        batch = {
            "recording_id": tf.gather(self._ids, rec),
            "composer": tf.gather(self._composer, rec),
            "ensemble": tf.gather(self._ensemble, rec),
            "start_time": tf.cast(start, tf.float32) / self.frame_rate,
        }
        if self.representation == "pianoroll":
            batch["inputs"], batch["onsets"] = self._paint(rec, start, self._channel,
                                                           self.num_channels)
        else:
            first = tf.gather(self._audio_offset, rec) + tf.cast(
                tf.round(tf.cast(start, tf.float64) * (self.sample_rate / self.frame_rate)),
                tf.int64)
            idx = first[:, None] + tf.range(self.window_samples, dtype=tf.int64)[None, :]
            wave = tf.cast(tf.gather(self._audio, idx), tf.float32) / 32767.0
            batch["inputs"] = wave[:, :, None]
            batch["pitch_labels"], _ = self._paint(rec, start, self._pitch, NUM_PITCHES)
        return batch
