"""Data layer: MusicNet reader, bad input, TFDS build, windows, determinism, resume, shards."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from scipy.io import wavfile

import conftest
from configs import default as default_config
from musicflax.audio import midi
from musicflax.data import input_pipeline, instruments, musicnet, splits, tfds_musicnet

REPO = Path(__file__).resolve().parents[1]


def data_config(source, tfds_dir, **overrides):
    cfg = default_config.data_config()
    cfg.source, cfg.tfds_data_dir = str(source), str(tfds_dir)
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------- reader: shipped sample set

def test_sample_set_reads_cleanly_and_matches_the_layout():
    layout, report = musicnet.scan(musicnet.SHIPPED_SAMPLE_SET)
    assert layout.synthesized_audio and not report.skipped
    metadata = musicnet.read_metadata(layout.metadata_csv)
    assert {r.id for r in report.recordings} == set(metadata)
    by_split = splits.assign(report.recordings, "musicnet", layout.sample_set).by_split
    composers = {name: {r.metadata["composer"] for r in by_split[name]} for name in splits.SPLITS}
    assert composers["validation"] == composers["test"] == \
        {"Bach", "Haydn", "Monteverdi", "Mozart", "Schumann"}
    assert composers["validation"] < composers["train"]
    assert all(r.folder == "test" for r in by_split["test"])
    # Shaped like MusicNet: chorales a minority, dense music (MusicNet: ~8 notes/s), no
    # Beethoven (kept back as unseen material).
    recordings = report.recordings
    chorales = sum(r.metadata["movement"] == "Chorale" for r in recordings)
    assert chorales <= len(recordings) / 3
    seconds = sum(float(r.metadata["seconds"]) for r in recordings)
    assert sum(len(r.notes) for r in recordings) / seconds >= 7.5
    assert not any(r.metadata["composer"] == "Beethoven" for r in recordings)
    notes = musicnet.read_labels(report.recordings[0].labels_path)
    assert len(notes) > 10 and (notes.end_time > notes.start_time).all()
    assert set(np.unique(notes.instrument)) <= set(musicnet.INSTRUMENTS)
    size = sum(f.stat().st_size for f in musicnet.SHIPPED_SAMPLE_SET.rglob("*") if f.is_file())
    assert size < 5 * 2**20


def test_mt3_scheme_splits_are_disjoint_and_complete():
    layout, report = musicnet.scan(musicnet.SHIPPED_SAMPLE_SET)
    by_split = splits.assign(report.recordings, "mt3", layout.sample_set).by_split
    ids = [[r.id for r in by_split[s]] for s in splits.SPLITS]
    assert sum(map(len, ids)) == len(report.recordings) == len(set().union(*map(set, ids)))
    assert set(ids[2]) == set(layout.sample_set["splits"]["mt3"]["test"])


# ---------------------------------------------------------------- reader: bad input

@pytest.mark.parametrize("row, problem", [
    ("0,abc,1,60,0,1,Quarter", "non-numeric"),
    ("44100,100,1,60,0,1,Quarter", "before start_time"),
    ("0,44100,1,130,0,1,Quarter", "pitch 130 outside 0..127"),
    ("0,44100,0,60,0,1,Quarter", "instrument 0 is not a 1-based General MIDI program"),
    ("0,44100,1", "expected 7 columns"),
])
def test_bad_label_row_names_file_line_and_problem(tmp_path, row, problem):
    path = tmp_path / "1727.csv"
    path.write_text(f"{conftest.HEADER}\n0,100,1,60,0,1,Quarter\n{row}\n")
    with pytest.raises(musicnet.MusicNetFormatError) as e:
        musicnet.read_labels(path)
    assert f"{path}:3:" in str(e.value) and problem in str(e.value)
    assert "\n" not in str(e.value)
    report = musicnet.ScanReport()
    assert len(musicnet.read_labels(path, on_bad_row="skip", report=report)) == 1
    assert report.skipped_rows == 1


def test_labels_are_sorted_and_crlf_metadata_with_quoted_commas_parses(tmp_path):
    labels = tmp_path / "1.csv"
    labels.write_text(f"{conftest.HEADER}\n44100,88200,41,62,1,1,Quarter\n"
                      "0,44100,41,60,0,1,Quarter\n")
    notes = musicnet.read_labels(labels)
    assert notes.start_time.tolist() == [0, 44100] and notes.note.tolist() == [60, 62]
    meta = tmp_path / "musicnet_metadata.csv"
    meta.write_bytes(b"id,composer,composition,movement,ensemble,source,transcriber,"
                     b"catalog_name,seconds\r\n1,Bach,\"WTK I, No 3\",1. Prelude,Solo Piano,"
                     b"x,y,BWV 848,60\r\n")
    assert musicnet.read_metadata(meta)[1]["composition"] == "WTK I, No 3"


def test_scan_skips_unpaired_and_empty_recordings_and_counts_them(tmp_path):
    root = conftest.write_musicnet(tmp_path)
    (root / "musicnet/train_data/1728.wav").unlink()                        # labels, no audio
    shutil.copy(root / "musicnet/train_data/1727.wav", root / "musicnet/train_data/9999.wav")
    (root / "musicnet/train_labels/1733.csv").write_text(conftest.HEADER + "\n")  # empty
    _, report = musicnet.scan(root, audio="wav")
    assert sorted(r.id for r in report.recordings) == [1727, 1759]
    reasons = " | ".join(f"{p}: {why}" for p, why in report.skipped)
    assert "1728.csv: no audio" in reasons
    assert "9999.wav: audio without labels" in reasons
    assert "1733.csv: empty recording" in reasons


def test_missing_root_and_missing_folders_are_clear(tmp_path):
    with pytest.raises(musicnet.MusicNetFormatError, match="does not exist"):
        musicnet.scan(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(musicnet.MusicNetFormatError, match="no train_labels"):
        musicnet.scan(tmp_path / "empty")


def test_nested_mirror_and_tar_gz_are_found(tmp_path):
    nested = conftest.write_musicnet(tmp_path / "mirror" / "deeper")
    _, report = musicnet.scan(tmp_path / "mirror", audio="wav")
    assert len(report.recordings) == 4
    archive = tmp_path / "musicnet.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(nested, arcname="musicnet_root")
    _, report = musicnet.scan(archive, audio="wav", extract_dir=tmp_path / "cache")
    assert sorted(r.id for r in report.recordings) == [1727, 1728, 1733, 1759]


def test_audio_rate_channels_and_pcm16(tmp_path):
    tone = np.sin(2 * np.pi * 440 * np.arange(44100) / 44100)
    wavfile.write(tmp_path / "pcm.wav", 44100, (tone * 16000).astype(np.int16))
    audio = musicnet.read_audio(tmp_path / "pcm.wav", 16000)
    assert audio.dtype == np.float32 and len(audio) == 16000
    assert abs(np.abs(audio).max() - 16000 / 32768) < 0.02
    wavfile.write(tmp_path / "rate.wav", 22050, tone[:22050].astype(np.float32))
    with pytest.raises(musicnet.MusicNetFormatError, match="rate.wav: sample rate 22050"):
        musicnet.read_audio(tmp_path / "rate.wav", 16000)
    assert len(musicnet.read_audio(tmp_path / "rate.wav", 16000, accept_any_rate=True)) == 16000
    wavfile.write(tmp_path / "st.wav", 44100, np.stack([tone, tone], 1).astype(np.float32))
    with pytest.raises(musicnet.MusicNetFormatError, match="st.wav: 2 channels"):
        musicnet.read_audio(tmp_path / "st.wav", 16000)
    assert musicnet.read_audio(tmp_path / "st.wav", 16000, downmix=True).ndim == 1
    (tmp_path / "junk.wav").write_bytes(b"not a wav")
    with pytest.raises(musicnet.MusicNetFormatError, match="junk.wav: not a readable WAV"):
        musicnet.read_audio(tmp_path / "junk.wav", 16000)


# ---------------------------------------------------------------- TFDS build

def test_tfds_build_offline_with_audio(tiny_musicnet, tmp_path):
    cfg = data_config(tiny_musicnet, tmp_path / "tfds", representation="waveform",
                      frame_rate=100.0)
    builder = input_pipeline.get_builder(cfg)
    assert builder.builder_config.name.startswith("src_audio16000_")
    assert {s: builder.info.splits[s].num_examples for s in splits.SPLITS} == \
        {"train": 2, "validation": 1, "test": 1}
    assert builder.info.metadata["split_ids"]["test"] == [1759]
    (ex,) = list(builder.as_dataset(split="test").as_numpy_iterator())
    assert ex["id"] == 1759 and ex["composer"] == b"Schubert"
    assert len(ex["audio"]) == 12 * 16000 and ex["audio"].dtype == np.int16


def test_cli_reports_a_bad_row_in_one_line_and_writes_nothing(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src")
    bad = root / "musicnet/train_labels/1728.csv"
    bad.write_text(bad.read_text() + "0,10,1,200,0,1,Quarter\n")
    proc = subprocess.run(
        [sys.executable, "-m", "musicflax.prepare", "--config=configs/default.py",
         f"--config.data.source={root}", f"--config.data.tfds_data_dir={tmp_path / 'tfds'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: {bad}:{len(bad.read_text().splitlines())}: pitch 200 outside 0..127"
    assert "Traceback" not in proc.stderr
    assert not list((tmp_path / "tfds").rglob("*.tfrecord*"))


# ---------------------------------------------------------------- windows

def one_note_rows(rec_id):
    # A4 (69) on violin from 2.0 s to 3.0 s, C4 (60) on piano from 4.0 s to 4.5 s.
    return ["88200,132300,41,69,4.0,2.0,Half", "176400,198450,1,60,8.0,1.0,Quarter"]


@pytest.fixture
def one_note_source(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src", with_audio=False, rows_for=one_note_rows)
    (root / musicnet.SAMPLE_SET_MARKER).write_text(json.dumps(
        {"name": "test", "audio": "synthesized", "splits": {"musicnet": {"validation": [1733]}}}))
    return root


def test_note_lands_in_the_right_frame_and_synth_has_energy_at_its_fundamental(
        one_note_source, tmp_path):
    cfg = data_config(one_note_source, tmp_path / "tfds", representation="waveform",
                      frame_rate=100.0, window_samples=16000, eval_hop_frames=100)
    win = input_pipeline.create_windows(cfg, "validation")
    batch = next(input_pipeline.as_numpy(win.eval_dataset(8)))
    # Windows are [k s, k s + 1 s): the A4 fills window 2, the C4 half of window 4.
    second = {round(float(t)): i for i, t in enumerate(batch["start_time"]) if batch["mask"][i]}
    labels = batch["pitch_labels"][second[2]]
    assert labels[:, 69].all() and labels.sum() == 100
    assert batch["pitch_labels"][second[4]][:, 60].tolist() == [1] * 50 + [0] * 50
    assert not batch["pitch_labels"][second[1]].any()
    # The aligned score keeps the instrument: violin in group 1 (strings), piano in group 0.
    score, onsets = batch["score_roll"], batch["score_onsets"]
    assert score[second[2]][:, 128 + 69].all() and score[second[2]].sum() == 100
    assert onsets[second[2]][:, 128 + 69].tolist() == [1] + [0] * 99
    assert score[second[4]][:, 60].tolist() == [1] * 50 + [0] * 50
    assert onsets[second[4]].sum() == 1 and not score[second[1]].any()
    wave = batch["inputs"][second[2], :, 0]
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 3
    assert np.sqrt(np.mean(batch["inputs"][second[1]] ** 2)) < 1e-3
    assert np.sqrt(np.mean(wave ** 2)) > 1e-2


def test_pianoroll_windows_match_the_reference_roll(one_note_source, tmp_path):
    cfg = data_config(one_note_source, tmp_path / "tfds", frame_rate=10.0, window_frames=20,
                      eval_hop_frames=5)
    win = input_pipeline.create_windows(cfg, "train")
    groups = instruments.InstrumentGroups.parse(cfg.instrument_groups)
    roll_ref, onset_ref = midi.notes_to_roll(np.array([2.0, 4.0]), np.array([3.0, 4.5]),
                                             np.array([69, 60]), np.array([41, 1]), 10.0, 120,
                                             groups.group_of())
    win = input_pipeline.Windows(cfg, win.data, train=False)
    for batch in input_pipeline.as_numpy(win.eval_dataset(4)):
        for i in np.flatnonzero(batch["mask"]):
            start = round(float(batch["start_time"][i]) * 10)
            np.testing.assert_array_equal(batch["inputs"][i], roll_ref[start:start + 20])
            np.testing.assert_array_equal(batch["onsets"][i], onset_ref[start:start + 20])
    # Strings are group 1: the violin A4 is channel 128 + 69, from frame 20 to 29.
    assert roll_ref[20:30, 128 + 69].all() and not roll_ref[30, 128 + 69]
    assert onset_ref[20, 128 + 69] and onset_ref[:, 128 + 69].sum() == 1


def edge_note_rows(rec_id):
    # A4 (69) on violin over 0.5-11.5 s, so every window sounds, and a piano note at pitch 126
    # over 0.5-2.5 s: moved up by more than 1 semitone it leaves the roll.
    return ["22050,507150,41,69,1.0,23.0,Whole", "22050,110250,1,126,1.0,5.0,Whole"]


def moved_up(roll, semitones):
    """A [..., groups, 128] roll with every pitch moved by `semitones`, those leaving 0..127 cut."""
    out = np.zeros_like(roll)
    if semitones >= 0:
        out[..., semitones:] = roll[..., :128 - semitones]
    else:
        out[..., :128 + semitones] = roll[..., -semitones:]
    return out


def test_pitch_shift_moves_train_windows_within_range_and_leaves_eval_windows(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src", with_audio=False, rows_for=edge_note_rows)
    cfg = data_config(root, tmp_path / "tfds", frame_rate=10.0, window_frames=20,
                      train_hop_frames=5)
    plain = input_pipeline.create_windows(cfg, "train")
    cfg.pitch_shift = 3
    moved = input_pipeline.create_windows(cfg, "train")
    shifts = []
    for a, b in zip(take(plain.train_dataset(4, seed=0), 20),
                    take(moved.train_dataset(4, seed=0), 20)):
        # The same windows: the draw disturbs neither the shuffle nor the jitter.
        np.testing.assert_array_equal(a["start_time"], b["start_time"])
        np.testing.assert_array_equal(a["recording_id"], b["recording_id"])
        rolls = [v.reshape(len(v), 20, 3, 128) for v in (a["inputs"], b["inputs"])]
        onsets = [v.reshape(len(v), 20, 3, 128) for v in (a["onsets"], b["onsets"])]
        for i in np.flatnonzero(rolls[0].any(axis=(1, 2, 3))):
            # Each window is moved by one s in -3..3, its onsets with it.
            (s,) = [s for s in range(-3, 4) if np.array_equal(moved_up(rolls[0][i], s), rolls[1][i])]
            np.testing.assert_array_equal(moved_up(onsets[0][i], s), onsets[1][i])
            shifts.append(s)
    assert set(shifts) == set(range(-3, 4))
    # transpose=+2 moves every window: the violin's A4 to 71 (group 1), the piano's 126 out.
    plain.transpose = 2
    sounding = set()
    for batch in input_pipeline.as_numpy(plain.eval_dataset(8)):
        sounding |= set(zip(*np.nonzero(batch["inputs"].reshape(-1, 3, 128).any(0))))
    assert sounding == {(1, 71)}
    # Held-out windows are never drawn from pitch_shift.
    assert input_pipeline.create_windows(cfg, "train", train=False).pitch_shift == 0


# ---------------------------------------------------------------- determinism, resume, shards

@pytest.fixture(scope="module")
def sample_windows(tmp_path_factory):
    cfg = data_config("sample", tmp_path_factory.mktemp("tfds"))
    return input_pipeline.create_windows(cfg, "train")


def take(dataset, n):
    return [b for _, b in zip(range(n), input_pipeline.as_numpy(dataset))]


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_windows_carry_metadata(sample_windows):
    (batch,) = take(sample_windows.train_dataset(16, seed=0), 1)
    data = sample_windows.data
    for i, rec_id in enumerate(batch["recording_id"]):
        r = int(np.flatnonzero(data.ids == rec_id)[0])
        assert batch["composer"][i] == data.composer[r]
        assert batch["ensemble"][i] == data.ensemble[r]
        assert 0 <= batch["start_time"][i] * data.frame_rate <= data.num_frames[r] - 128
    assert batch["inputs"].shape == (16, 128, 384) and batch["inputs"].any()


def test_batches_are_deterministic_and_resume_exactly(sample_windows):
    uninterrupted = take(sample_windows.train_dataset(8, seed=3), 6)
    again = take(sample_windows.train_dataset(8, seed=3), 6)
    resumed = take(sample_windows.train_dataset(8, seed=3, start_step=4), 2)
    for a, b in zip(uninterrupted, again):
        assert_batches_equal(a, b)
    for a, b in zip(uninterrupted[4:], resumed):
        assert_batches_equal(a, b)
    other_seed = take(sample_windows.train_dataset(8, seed=4), 1)[0]
    assert not np.array_equal(other_seed["inputs"], uninterrupted[0]["inputs"])


def test_an_epoch_visits_every_window_once(tmp_path, one_note_source):
    cfg = data_config(one_note_source, tmp_path / "tfds", frame_rate=10.0, window_frames=20,
                      train_hop_frames=5, jitter=False)
    win = input_pipeline.create_windows(cfg, "train")
    n = len(win)
    batches = take(win.train_dataset(1, seed=0), n)
    seen = sorted((int(b["recording_id"][0]), round(float(b["start_time"][0]) * 10))
                  for b in batches)
    table = sorted(zip(win.data.ids[win.rec].tolist(), win.start.tolist()))
    assert seen == table


def test_process_shares_are_disjoint_and_make_the_global_batch(sample_windows):
    import jax  # pylint: disable=g-import-not-at-top
    from musicflax.train import sharding  # pylint: disable=g-import-not-at-top

    full = take(sample_windows.train_dataset(16, seed=1, start_step=2), 1)[0]
    shares = [take(sample_windows.train_dataset(16, seed=1, start_step=2,
                                                shard=input_pipeline.Shard(p, 2)), 1)[0]
              for p in range(2)]
    keys = [set(zip(s["recording_id"].tolist(), s["start_time"].tolist())) for s in shares]
    assert len(keys[0]) == 8 and not keys[0] & keys[1]
    for k in full:
        np.testing.assert_array_equal(np.concatenate([s[k] for s in shares]), full[k])
    # On 8 devices, with 2 (simulated) processes of 4 devices each, each device holds rows
    # of the process that owns it.
    assert jax.device_count() == 8
    mesh = sharding.make_mesh()
    arrays = sharding.global_batch({"inputs": full["inputs"]}, mesh)
    for shard in arrays["inputs"].addressable_shards:
        position = list(mesh.devices.flat).index(shard.device)
        owner = position // 4
        rows = slice(2 * (position % 4), 2 * (position % 4) + 2)
        np.testing.assert_array_equal(np.asarray(shard.data), shares[owner]["inputs"][rows])


def test_eval_covers_every_window_once_with_a_mask(sample_windows):
    win = input_pipeline.Windows(sample_windows.cfg, sample_windows.data, train=False)
    batches = list(input_pipeline.as_numpy(win.eval_dataset(64)))
    assert len(batches) == win.num_eval_batches(64)
    seen = [(r, s) for b in batches
            for r, s, m in zip(b["recording_id"], b["start_time"], b["mask"]) if m]
    assert len(seen) == len(win) == len(set(seen))


def test_bad_instrument_groups_are_rejected():
    with pytest.raises(ValueError, match="not 1-based General MIDI programs"):
        instruments.InstrumentGroups.parse("a:1,0")
    with pytest.raises(ValueError, match="twice"):
        instruments.InstrumentGroups.parse("a:1;b:1")


def test_builder_config_names_say_how_the_data_was_made(tiny_musicnet, tmp_path):
    spec = splits.SplitSpec("mt3")
    name = tfds_musicnet.make_config("sample", 16000, spec, extract_dir=tmp_path).name
    assert name.startswith("sample_audio16000_mt3_") and len(name.rsplit("_", 1)[1]) == 12
    name = tfds_musicnet.make_config(str(tiny_musicnet), 0, on_bad_row="skip",
                                     extract_dir=tmp_path).name
    assert name.startswith("src_labels_skipbadrows_")
