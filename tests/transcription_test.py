"""Note metrics as the field computes them: one-to-one onset matching in jit, cross-checked
against mir_eval; reading notes back from predicted rolls; note scores split by pitch equal
mir_eval's on the whole list."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mir_eval
import numpy as np
import pytest

from musicflax.audio import midi
from musicflax.eval import notes as notes_lib
from musicflax.models import metrics


def onset_map(t, c, events):
    x = np.zeros((1, t, c), bool)
    for frame, channel in events:
        x[0, frame, channel] = True
    return x


def test_onset_matching_is_one_to_one_per_window_and_channel():
    # Channel 0: one prediction between two references; channel 1: two predictions around
    # one reference. At most one pair each: 2 true positives (a min of summed counts gave 3).
    ref = onset_map(30, 2, [(10, 0), (12, 0), (21, 1)])
    pred = onset_map(30, 2, [(11, 0), (20, 1), (22, 1)])
    counts = metrics.onset_counts(pred, ref, tolerance=1)
    assert float(counts["tp"].sum()) == 2 and float(counts["fp"].sum()) == 1
    assert float(counts["fn"].sum()) == 1
    # A chain p r p r, each 1 frame apart: two pairs, not one.
    chain = metrics.onset_counts(onset_map(10, 1, [(1, 0), (3, 0)]),
                                 onset_map(10, 1, [(2, 0), (4, 0)]), tolerance=1)
    assert float(chain["tp"].sum()) == 2
    # Masked windows count nothing.
    both = np.concatenate([ref, ref])
    masked = metrics.onset_counts(both, both, 1, mask=jnp.array([True, False]))
    assert masked["tp"].tolist() == [3.0, 0.0]


@pytest.mark.parametrize("frame_rate", [31.25, 100.0, 50.0])
def test_tolerance_in_frames_is_mir_evals_50_ms(frame_rate):
    frames = metrics.onset_tolerance_frames(frame_rate)
    assert frames == {31.25: 1, 100.0: 5, 50.0: 2}[frame_rate]
    ref = np.array([[1.0, 2.0]])
    for delta, matches in ((frames, 1), (frames + 1, 0)):
        est = ref + delta / frame_rate
        got = mir_eval.transcription.match_notes(ref, np.array([440.0]), est,
                                                 np.array([440.0]), offset_ratio=None)
        assert len(got) == matches


def test_in_jit_onset_counts_equal_mir_eval_on_random_rolls_with_close_onsets():
    rng = np.random.default_rng(0)
    frame_rate = 31.25
    tolerance = metrics.onset_tolerance_frames(frame_rate)
    pred = rng.random((3, 64, 5)) < 0.3   # dense: many onsets 1-2 frames apart
    ref = rng.random((3, 64, 5)) < 0.3
    counts = metrics.onset_counts(jnp.asarray(pred), jnp.asarray(ref), tolerance)
    expected = 0
    for b in range(3):
        for c in range(5):
            r, e = np.flatnonzero(ref[b, :, c]), np.flatnonzero(pred[b, :, c])
            if len(r) and len(e):
                iv = lambda f: np.stack([f / frame_rate, f / frame_rate + 1.0], 1)
                expected += len(mir_eval.transcription.match_notes(
                    iv(r), np.full(len(r), 440.0), iv(e), np.full(len(e), 440.0),
                    offset_ratio=None))
    assert float(counts["tp"].sum()) == expected
    assert float(counts["fp"].sum()) == pred.sum() - expected


def test_in_jit_frame_counts_equal_mir_eval_multipitch():
    rng = np.random.default_rng(1)
    pred, ref = rng.random((1, 50, 128)) < 0.05, rng.random((1, 50, 128)) < 0.05
    counts = metrics.frame_counts(pred, ref)
    mp = notes_lib.multipitch_counts(ref[0], pred[0])
    assert float(counts["tp"].sum()) == mp["tp"]
    assert float(counts["tp"].sum() + counts["fp"].sum()) == mp["est"]
    assert float(counts["tp"].sum() + counts["fn"].sum()) == mp["ref"]


def read(roll_rows, onset_frames, max_gap=0, frames=12):
    roll = np.zeros((frames, 128))
    for start, end in roll_rows:
        roll[start:end, 60] = 1.0
    onsets = np.zeros_like(roll)
    onsets[onset_frames, 60] = 1.0
    notes = midi.roll_to_notes(roll, 1.0, [1], onsets=onsets, max_gap=max_gap)
    return list(zip(notes["start"].astype(int).tolist(), notes["end"].astype(int).tolist()))


def test_notes_start_at_predicted_onsets_only():
    # A sustained note whose roll dips at frame 4: one note (cut at the dip) ...
    assert read([(1, 4), (5, 9)], [1]) == [(1, 4)]
    # ... bridged when the dip is short enough.
    assert read([(1, 4), (5, 9)], [1], max_gap=1) == [(1, 9)]
    assert read([(1, 4), (6, 9)], [1], max_gap=1) == [(1, 4)]
    # A repeated note: the second onset ends the first note there.
    assert read([(1, 9)], [1, 5]) == [(1, 5), (5, 9)]
    # A gap before the next onset is not part of the first note, even when bridgeable.
    assert read([(1, 4), (5, 9)], [1, 5], max_gap=2) == [(1, 4), (5, 9)]
    # An onset where the roll is off is a one-frame note; roll without an onset is nothing.
    assert read([(7, 10)], [2]) == [(2, 3)]
    # Without predicted onsets, each run of on frames is a note.
    roll = np.zeros((12, 128))
    roll[[1, 2, 3, 5, 6], 60] = 1
    plain = midi.roll_to_notes(roll, 1.0, [1])
    assert plain["start"].tolist() == [1.0, 5.0] and plain["end"].tolist() == [4.0, 7.0]


def test_note_counts_split_by_pitch_equal_mir_eval_on_the_whole_list():
    rng = np.random.default_rng(2)

    def notes(n):
        start = np.round(rng.random(n) * 20, 2)
        return {"start": start, "end": start + 0.1 + rng.random(n),
                "pitch": rng.integers(60, 64, n), "group": np.zeros(n, np.int64)}
    ref, est = notes(120), notes(110)
    est["start"][:60] = np.abs(ref["start"][:60] + rng.normal(0, 0.03, 60))
    est["end"][:60] = est["start"][:60] + (ref["end"] - ref["start"])[:60] * rng.uniform(0.7, 1.3, 60)
    est["pitch"][:60] = ref["pitch"][:60]
    counts = notes_lib.note_counts(ref, est)
    hz = lambda p: mir_eval.util.midi_to_hz(p.astype(float))
    iv = lambda n: np.stack([n["start"], n["end"]], 1)
    onset = mir_eval.transcription.match_notes(iv(ref), hz(ref["pitch"]), iv(est),
                                               hz(est["pitch"]), offset_ratio=None)
    offset = mir_eval.transcription.match_notes(iv(ref), hz(ref["pitch"]), iv(est),
                                                hz(est["pitch"]))
    assert counts["onset_tp"] == len(onset) > 30 and counts["offset_tp"] == len(offset)
    p, r, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
        iv(ref), hz(ref["pitch"]), iv(est), hz(est["pitch"]), offset_ratio=None)
    scores = notes_lib.note_scores(counts)
    assert scores["note_onset_precision"] == pytest.approx(p)
    assert scores["note_onset_recall"] == pytest.approx(r)
    assert scores["note_onset_f1"] == pytest.approx(f)
    # Another group never matches.
    est["group"][:] = 1
    assert notes_lib.note_counts(ref, est)["onset_tp"] == 0


def test_codebook_stats_by_hand():
    stats = jax.jit(metrics.codebook_stats)(np.full(64, 10))
    np.testing.assert_allclose(stats["perplexity"], 64, rtol=1e-5)
    np.testing.assert_allclose(stats["normalized_entropy"], 1, rtol=1e-5)
    assert stats["usage"] == 1 and stats["dead_codes"] == 0
    single = metrics.codebook_stats(np.eye(64)[3] * 50)
    np.testing.assert_allclose(single["perplexity"], 1, rtol=1e-6)
    assert single["usage"] == 1 / 64 and single["dead_codes"] == 63
    ema = metrics.codebook_stats(np.ones(4), np.array([0.5, 2, 0.9, 1]), threshold=1.0)
    assert ema["dead_codes"] == 2 and ema["dead_fraction"] == 0.5
