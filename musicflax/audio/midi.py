"""Conversions between note lists, piano-rolls and MIDI files (via pretty_midi).

Notes are parallel arrays: start and end in seconds, MIDI pitch, and MusicNet's 1-based General
MIDI program as the instrument code. A roll is [T, G * 128] with channel g * 128 + pitch for
instrument group g; `onsets` of the same shape marks the frames where notes start, so that a
note repeated without a gap is still two notes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pretty_midi

NUM_PITCHES = 128
# pretty_midi's default of 220 ticks per beat is 2.3 ms at 120 bpm; 960 keeps the rounding of
# note times to ticks within 0.3 ms.
MIDI_RESOLUTION = 960

INSTRUMENT_NAMES: dict[int, str] = {
    1: "Piano", 7: "Harpsichord", 41: "Violin", 42: "Viola", 43: "Cello", 44: "Contrabass",
    61: "Horn", 69: "Oboe", 71: "Bassoon", 72: "Clarinet", 74: "Flute"}


def instrument_name(code: int) -> str:
    """MusicNet's name for its codes, General MIDI's for any other 1-based program."""
    if code in INSTRUMENT_NAMES:
        return INSTRUMENT_NAMES[code]
    if not 1 <= code <= 128:
        raise ValueError(f"instrument {code} is not a 1-based General MIDI program (1..128)")
    return pretty_midi.program_to_instrument_name(code - 1)


def roll_to_notes(roll: np.ndarray, frame_rate: float, group_programs: Sequence[int],
                  onsets: np.ndarray | None = None, max_gap: int = 0,
                  min_frames: int = 1) -> dict[str, np.ndarray]:
    """Reads notes off a roll [T, G * 128]; values >= 0.5 count as on.

    With `onsets` (same shape, >= 0.5 marks one; what a model predicts) a note starts at every
    marked onset and only there, so a dip inside a sustained note never starts another one.
    It lasts through the frames that are on, bridging runs of at most `max_gap` off frames
    between on frames, and ends after its last on frame (it has at least its onset frame), or
    at the channel's next onset. Without `onsets`, onsets are the frames where a channel turns
    on (and nothing is bridged): each run of on frames is one note. Notes shorter than
    `min_frames` are dropped. Returns start/end (seconds, float64), pitch and instrument (the
    group's program), sorted by start, then group and pitch.
    """
    active = np.asarray(roll) >= 0.5
    num_frames, num_channels = active.shape
    if num_channels != NUM_PITCHES * len(group_programs):
        raise ValueError(f"roll has {num_channels} channels; {len(group_programs)} groups need "
                         f"{NUM_PITCHES * len(group_programs)}")
    if onsets is None:
        starts = active & ~np.pad(active[:-1], ((1, 0), (0, 0)))
        max_gap = 0
    else:
        if onsets.shape != active.shape:
            raise ValueError(f"onsets {onsets.shape} and roll {active.shape} differ in shape")
        starts = np.asarray(onsets) >= 0.5
    out_start, out_end, out_channel = [], [], []
    for channel in np.flatnonzero(starts.any(axis=0)):
        onset = np.flatnonzero(starts[:, channel])
        on = np.flatnonzero(active[:, channel])
        off = np.flatnonzero(~active[:, channel])
        if max_gap and len(on):
            # An off frame between two on frames at most max_gap + 1 apart is bridged.
            k = np.searchsorted(on, off)
            inside = (k > 0) & (k < len(on))
            gap = np.full(len(off), num_frames)
            gap[inside] = on[k[inside]] - on[k[inside] - 1] - 1
            off = off[gap > max_gap]
        next_onset = np.append(onset[1:], num_frames)
        first_off = np.append(off, num_frames)[np.searchsorted(off, onset, side="right")]
        stop = np.minimum(next_onset, first_off)
        # Back to the last on frame before the stop, but never before the onset itself.
        last_on = np.searchsorted(on, stop, side="left") - 1
        last = on[np.maximum(last_on, 0)] if len(on) else np.full(len(onset), -1)
        last = np.where(last_on >= 0, last, -1)
        end = np.where(last >= onset, last + 1, onset + 1)
        out_start.append(onset)
        out_end.append(end)
        out_channel.append(np.full(len(onset), channel))
    start, end, channel = (np.concatenate(x) if x else np.zeros(0, np.int64)
                           for x in (out_start, out_end, out_channel))
    keep = end - start >= min_frames
    start, end, channel = start[keep], end[keep], channel[keep]
    order = np.lexsort((channel, start))
    start, end, channel = start[order], end[order], channel[order]
    return {"start": start / frame_rate, "end": end / frame_rate,
            "pitch": (channel % NUM_PITCHES).astype(np.int64),
            "instrument": np.asarray(group_programs, np.int64)[channel // NUM_PITCHES]}


def notes_to_roll(start: np.ndarray, end: np.ndarray, pitch: np.ndarray, instrument: np.ndarray,
                  frame_rate: float, num_frames: int,
                  instrument_to_group: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(roll, onsets) uint8 [num_frames, G * 128] for notes; the reference implementation.

    A note covers frames [round(start * rate), round(end * rate)), at least one. Notes beyond
    the last frame are cut; a note starting before frame 0 is painted without an onset.
    """
    pitch, instrument = np.asarray(pitch, np.int64), np.asarray(instrument, np.int64)
    unknown = sorted(set(instrument.tolist()) - set(instrument_to_group))
    if unknown:
        raise ValueError(f"instrument {unknown[0]} is in no group (groups cover "
                         f"{sorted(instrument_to_group)})")
    num_groups = max(instrument_to_group.values()) + 1
    group = np.array([instrument_to_group[i] for i in instrument.tolist()], np.int64)
    channel = group * NUM_PITCHES + pitch
    first = np.round(np.asarray(start, np.float64) * frame_rate).astype(np.int64)
    last = np.maximum(np.round(np.asarray(end, np.float64) * frame_rate).astype(np.int64),
                      first + 1)
    inside = (first < num_frames) & (last > 0)
    first, last, channel = first[inside], last[inside], channel[inside]

    # +1 where a note turns on, -1 after it ends, then a running sum: overlapping notes on one
    # channel merge instead of one's end cutting the other short.
    delta = np.zeros((num_frames + 1, num_groups * NUM_PITCHES), np.int32)
    np.add.at(delta, (np.maximum(first, 0), channel), 1)
    np.add.at(delta, (np.minimum(last, num_frames), channel), -1)
    roll = (np.cumsum(delta[:-1], axis=0) > 0).astype(np.uint8)
    onsets = np.zeros_like(roll)
    starts_inside = first >= 0
    onsets[first[starts_inside], channel[starts_inside]] = 1
    return roll, onsets


def notes_to_pretty_midi(start: np.ndarray, end: np.ndarray, pitch: np.ndarray,
                         instrument: np.ndarray, tempo_bpm: float = 120.0,
                         velocity: int = 80) -> pretty_midi.PrettyMIDI:
    """One track per instrument code (its 0-based GM program and name), notes in time order."""
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    pitch, instrument = np.asarray(pitch, np.int64), np.asarray(instrument, np.int64)
    midi = pretty_midi.PrettyMIDI(resolution=MIDI_RESOLUTION, initial_tempo=tempo_bpm)
    for code in np.unique(instrument).tolist():
        track = pretty_midi.Instrument(program=code - 1, is_drum=False,
                                       name=instrument_name(code))
        mine = np.flatnonzero(instrument == code)
        for i in mine[np.lexsort((pitch[mine], start[mine]))].tolist():
            track.notes.append(pretty_midi.Note(velocity=velocity, pitch=int(pitch[i]),
                                                start=float(start[i]), end=float(end[i])))
        midi.instruments.append(track)
    return midi


def write_midi(path: str | os.PathLike, start: np.ndarray, end: np.ndarray, pitch: np.ndarray,
               instrument: np.ndarray, tempo_bpm: float = 120.0, velocity: int = 80) -> None:
    """Writes notes as a standard MIDI file (see notes_to_pretty_midi)."""
    notes_to_pretty_midi(start, end, pitch, instrument, tempo_bpm, velocity).write(os.fspath(path))


def read_midi(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The notes of a MIDI file (drum tracks left out), instrument = 1-based GM program + 1,
    in time order; ValueError naming the file when it cannot be read."""
    try:
        midi = pretty_midi.PrettyMIDI(os.fspath(path))
    except Exception as e:  # pretty_midi/mido raise many types on a broken file
        raise ValueError(f"{path}: not a readable MIDI file ({str(e).splitlines()[0][:120]})"
                         ) from None
    rows = [(n.start, n.end, n.pitch, track.program + 1) for track in midi.instruments
            if not track.is_drum for n in track.notes]
    rows.sort()
    start, end, pitch, instrument = (np.asarray(c) for c in zip(*rows)) if rows else \
        (np.zeros(0), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return {"start": start.astype(np.float64), "end": end.astype(np.float64),
            "pitch": pitch.astype(np.int64), "instrument": instrument.astype(np.int64)}
