"""MusicNet-format folders that are not the sample set: split rules, labels-only sources, one
dataset per source fingerprint, read-only sources, and the reader's one-line errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
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
from musicflax.audio import fluidsynth
from musicflax.data import input_pipeline, musicnet, splits

REPO = Path(__file__).resolve().parents[1]


def data_config(source, tfds_dir, **overrides):
    cfg = default_config.data_config()
    cfg.source, cfg.tfds_data_dir = str(source), str(tfds_dir)
    cfg.update(overrides)
    return cfg


def prepare_cli(*flags, timeout=300):
    return subprocess.run([sys.executable, "-m", "musicflax.prepare", "--config=configs/default.py",
                           *flags], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def by_hash(ids, fraction):
    """The documented rule: the round(fraction * n) (>= 1) ids with the smallest sha256."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"musicflax-split/{i}".encode()).hexdigest())
    return sorted(ranked[:max(1, round(fraction * len(ids)))])


def snapshot(root: Path) -> dict:
    """Every file and folder under root with its size and modification time."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0,
                                       p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------------------- splits

def test_musicnet_scheme_on_another_folder_names_the_missing_ids_and_the_way_out(tmp_path):
    root = conftest.write_quartets(tmp_path / "quartets")
    proc = prepare_cli(f"--config.data.source={root}",
                       f"--config.data.tfds_data_dir={tmp_path / 'tfds'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {root}: split 'validation' is empty under the musicnet "
                           "scheme: none of its validation ids (1733, 1765, 1790")
    assert "--config.data.split_scheme=hash" in line and "--config.data.split_lists=" in line


def test_hash_rule_takes_test_folder_and_a_hashed_fraction_of_train(tmp_path):
    root = conftest.write_quartets(tmp_path / "quartets")
    _, report = musicnet.scan(root)
    ids = [r for r, *_ in conftest.QUARTETS]
    # No test folder: test is 10% of all recordings by hash, validation 10% of the rest.
    got = splits.assign(report.recordings, splits.SplitSpec("hash"), where=str(root))
    test = by_hash(ids, 0.1)
    validation = by_hash([i for i in ids if i not in test], 0.1)
    assert got.ids["test"] == test and len(test) == 4
    assert got.ids["validation"] == validation and len(validation) == 3
    assert sorted(got.ids["train"]) == sorted(set(ids) - set(test) - set(validation))
    # With a test folder, test is that folder.
    folder = conftest.write_musicnet(tmp_path / "tiny")
    _, report = musicnet.scan(folder)
    got = splits.assign(report.recordings, splits.SplitSpec("hash", validation_fraction=0.5))
    assert got.ids["test"] == [1759]
    assert got.ids["validation"] == by_hash([1727, 1728, 1733], 0.5)
    assert "test = the test_labels folder" in got.rule


def test_split_lists_from_json_csv_and_inline_text_agree(tmp_path):
    root = conftest.write_quartets(tmp_path / "quartets")
    _, report = musicnet.scan(root)
    (tmp_path / "s.json").write_text(json.dumps({"validation": [20001, 20002], "test": [20003]}))
    (tmp_path / "s.csv").write_text("id,split\n20001,validation\n20003,test\n20002,validation\n")
    results = [splits.assign(report.recordings, splits.SplitSpec("lists", text)).ids
               for text in (str(tmp_path / "s.json"), str(tmp_path / "s.csv"),
                            "validation=20001,20002;test=20003")]
    assert results[0] == results[1] == results[2]
    assert results[0]["validation"] == [20001, 20002] and results[0]["test"] == [20003]
    assert len(results[0]["train"]) == 35
    # An explicit train list leaves the other recordings out.
    got = splits.assign(report.recordings, splits.SplitSpec(
        "lists", "train=20004,20005;validation=20001;test=20003"))
    assert got.ids == {"train": [20004, 20005], "validation": [20001], "test": [20003]}
    assert len(got.left_out) == 34
    with pytest.raises(musicnet.DataError, match=r"put recordings \[20001\] in both"):
        splits.parse_lists("validation=20001;test=20001")
    with pytest.raises(musicnet.DataError, match="unknown splits"):
        splits.parse_lists("valid=20001")


def test_the_split_is_printed_stored_with_the_dataset_and_in_the_summary(tmp_path):
    root = conftest.write_quartets(tmp_path / "quartets")
    proc = prepare_cli(f"--config.data.source={root}", "--config.data.split_scheme=hash",
                       f"--config.data.tfds_data_dir={tmp_path / 'tfds'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = [r for r, *_ in conftest.QUARTETS]
    test = by_hash(ids, 0.1)
    validation = by_hash([i for i in ids if i not in test], 0.1)
    out = proc.stdout
    assert "splits   hash: test = 0.1 of the recordings (4)" in out
    assert f"validation ids (3):\n    {' '.join(map(str, validation))}\n" in out
    assert f"test ids (4):\n    {' '.join(map(str, test))}\n" in out
    # Progress of the build: recordings done / total.
    assert "38/38 recordings" in proc.stderr
    builder = input_pipeline.get_builder(data_config(root, tmp_path / "tfds",
                                                     split_scheme="hash"))
    assert builder.info.metadata["split_ids"]["test"] == test
    assert builder.info.metadata["split_rule"].startswith("hash: ")


# ---------------------------------------------------------------------------- labels only

def test_labels_only_source_builds_piano_rolls_and_audio_says_what_to_do(tmp_path):
    root = conftest.write_quartets(tmp_path / "quartets")
    assert not list(root.rglob("*_data"))
    cfg = data_config(root, tmp_path / "tfds", split_scheme="hash")
    win = input_pipeline.create_windows(cfg, "train")
    assert len(win.data.ids) == 31 and win.data.note_rec.size == 31 * 32 * 4
    wave = data_config(root, tmp_path / "tfds", split_scheme="hash",
                       representation="waveform", frame_rate=100.0)
    with pytest.raises(musicnet.MusicNetFormatError) as e:
        input_pipeline.get_builder(wave)
    assert str(e.value) == (f"{root}: no usable recordings found (38 skipped: no audio); for "
                            "a label set without WAVs use a piano-roll config, or render audio "
                            "from the labels with data.audio_source=synth")
    wave.audio_source = "synth"
    builder = input_pipeline.get_builder(wave)
    assert builder.builder_config.name.startswith("src_audio16000_synth_hash_")
    assert builder.info.splits["train"].num_examples == 31


def test_audio_builds_skip_recordings_without_wavs_and_count_them(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src")
    (root / "musicnet/train_data/1728.wav").unlink()
    cfg = data_config(root, tmp_path / "tfds", representation="waveform", frame_rate=100.0)
    builder = input_pipeline.get_builder(cfg)
    assert builder.info.metadata["skipped_files"] == [
        f"{root}/musicnet/train_labels/1728.csv: no audio (train_data/1728.wav missing)"]
    assert builder.info.metadata["split_ids"]["train"] == [1727]
    # The labels-only build of the same folder keeps 1728.
    labels = input_pipeline.get_builder(data_config(root, tmp_path / "tfds"))
    assert labels.info.metadata["split_ids"]["train"] == [1727, 1728]


@pytest.mark.skipif(not fluidsynth.available(), reason="fluidsynth or its SoundFont missing")
def test_fluidsynth_audio_is_rendered_from_the_labels_as_its_own_dataset(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src", with_audio=False)
    cfg = data_config(root, tmp_path / "tfds", representation="waveform", frame_rate=100.0,
                      audio_source="fluidsynth", split_scheme="hash")
    builder = input_pipeline.get_builder(cfg)
    assert builder.builder_config.name.startswith("src_audio16000_fluidsynth_hash_")
    assert builder.info.metadata["audio"] == "fluidsynth"
    example = next(iter(builder.as_dataset(split="test").as_numpy_iterator()))
    notes = musicnet.read_labels(root / "musicnet/test_labels/1759.csv")
    expected = fluidsynth.render(notes.start_time / musicnet.LABEL_RATE,
                                 notes.end_time / musicnet.LABEL_RATE, notes.note,
                                 notes.instrument, 16000, duration=12.0)
    np.testing.assert_array_equal(example["audio"],
                                  np.round(expected * 32767).astype(np.int16))
    # The synthesizer's build of the same folder is another dataset.
    cfg.audio_source = "synth"
    assert input_pipeline.get_builder(cfg).builder_config.name != builder.builder_config.name


def test_fluidsynth_without_the_program_is_one_line(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src", with_audio=False)
    proc = subprocess.run(
        [sys.executable, "-m", "musicflax.prepare", "--config=configs/waveform.py",
         f"--config.data.source={root}", f"--config.data.tfds_data_dir={tmp_path / 'tfds'}",
         "--config.data.audio_source=fluidsynth", f"--config.data.soundfont={tmp_path}/x.sf2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": str(tmp_path)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line == ("error: data.audio_source=fluidsynth needs the fluidsynth program: "
                    + fluidsynth.INSTALL_HINT)
    assert not list(tmp_path.rglob("*.tfrecord*"))


# ---------------------------------------------------------------------------- cache identity

def test_two_sources_in_one_tfds_dir_never_share_a_dataset(tmp_path):
    tfds_dir = tmp_path / "tfds"
    a = conftest.write_musicnet(tmp_path / "a")
    b = conftest.write_musicnet(tmp_path / "b", conftest.TINY[:2] + [
        (1733, "train", "Mozart", "Solo Piano"), (1819, "test", "Mozart", "Wind Quintet")])
    builder_a = input_pipeline.get_builder(data_config(a, tfds_dir))
    builder_b = input_pipeline.get_builder(data_config(b, tfds_dir))
    assert builder_a.info.full_name != builder_b.info.full_name
    assert builder_a.info.metadata["split_ids"]["test"] == [1759]
    assert builder_b.info.metadata["split_ids"]["test"] == [1819]
    # The same files in another folder are the same dataset; changed files are a new one.
    shutil.copytree(a, tmp_path / "a_copy")
    assert input_pipeline.get_builder(data_config(tmp_path / "a_copy", tfds_dir)).info.full_name \
        == builder_a.info.full_name
    labels = a / "musicnet/train_labels/1727.csv"
    labels.write_text(labels.read_text() + "529200,551250,1,100,99.0,0.5,Quarter\n")
    changed = input_pipeline.get_builder(data_config(a, tfds_dir))
    assert changed.info.full_name != builder_a.info.full_name
    data = input_pipeline.load_split(data_config(a, tfds_dir), "train", changed)
    assert 100 in data.note_pitch.tolist()
    old = input_pipeline.load_split(data_config(a, tfds_dir), "train", builder_a)
    assert 100 not in old.note_pitch.tolist()


def test_nothing_is_written_under_the_source(tmp_path):
    folder = conftest.write_musicnet(tmp_path / "folder" / "musicnet_root")
    archive = tmp_path / "archive" / "musicnet.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "musicnet", arcname="musicnet")
    # A download folder as it comes from Zenodo: the archive beside the metadata CSV.
    shutil.copy(folder / "musicnet_metadata.csv", archive.parent)
    tfds_dir = tmp_path / "tfds"
    for source in (folder, archive, archive.parent):
        before = snapshot(source.parent if source.is_file() else source)
        for representation in ("pianoroll", "waveform"):
            cfg = data_config(source, tfds_dir, representation=representation,
                              frame_rate=100.0 if representation == "waveform" else 31.25)
            builder = input_pipeline.get_builder(cfg)
            assert builder.info.splits["train"].num_examples == 2
        assert snapshot(source.parent if source.is_file() else source) == before, source
    extracted = list((tfds_dir / "downloads/musicflax_extracted").glob("musicnet-*/.complete"))
    assert len(extracted) == 1


# ---------------------------------------------------------------------------- reader

def test_a_missing_root_is_one_line(tmp_path):
    proc = prepare_cli(f"--config.data.source={tmp_path / 'nowhere'}",
                       f"--config.data.tfds_data_dir={tmp_path / 'tfds'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: {tmp_path / 'nowhere'}: MusicNet root does not exist"


def test_a_duplicated_metadata_id_is_an_error(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src", with_audio=False)
    meta = root / "musicnet_metadata.csv"
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(lines + [lines[1]]) + "\n")
    with pytest.raises(musicnet.MusicNetFormatError) as e:
        musicnet.read_metadata(meta)
    assert str(e.value) == f"{meta}:6: id 1727 appears twice (first on line 2)"


def test_label_columns_are_found_by_name_and_gzip_is_read(tmp_path):
    rows = ["0,44100,41,60,0.0,1.0,Quarter", "22050,66150,43,48,0.5,1.0,Quarter"]
    plain = tmp_path / "1.csv"
    plain.write_text("\n".join([conftest.HEADER, *rows]) + "\n")
    shuffled = tmp_path / "2.csv"
    order = [3, 2, 1, 0]  # note,instrument,end_time,start_time; no beats, no note_value
    shuffled.write_text("note,instrument,end_time,start_time\n" + "".join(
        ",".join(r.split(",")[i] for i in order) + "\n" for r in rows))
    zipped = tmp_path / "3.csv.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    a, b, c = (musicnet.read_labels(p) for p in (plain, shuffled, zipped))
    for field in ("start_time", "end_time", "instrument", "note"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        np.testing.assert_array_equal(getattr(a, field), getattr(c, field))
    assert np.isnan(b.start_beat).all() and a.start_beat.tolist() == [0.0, 0.5]
    (tmp_path / "4.csv").write_text("onset,offset,instrument,note\n0,1,1,60\n")
    with pytest.raises(musicnet.MusicNetFormatError) as e:
        musicnet.read_labels(tmp_path / "4.csv")
    assert str(e.value) == (f"{tmp_path / '4.csv'}:1: header lacks column(s) start_time, "
                            "end_time (needs start_time,end_time,instrument,note; found "
                            "onset,offset,instrument,note)")


def test_truncated_wav_header_and_labels_after_the_audio(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src")
    wav = root / "musicnet/train_data/1728.wav"
    wav.write_bytes(wav.read_bytes()[:30])
    with pytest.raises(musicnet.MusicNetFormatError) as e:
        musicnet.scan(root, audio="wav")
    assert str(e.value) == f"{wav}: not a readable WAV file (truncated fmt chunk)"
    with pytest.raises(musicnet.MusicNetFormatError, match="not a readable WAV file"):
        musicnet.read_audio(wav, 16000)
    wavfile.write(wav, 44100, np.zeros(44100, np.float32))  # 1 s; its notes start at 0 s
    late = root / "musicnet/train_data/1727.wav"
    wavfile.write(late, 44100, np.zeros(44100 // 2, np.float32))
    labels = root / "musicnet/train_labels/1727.csv"
    labels.write_text(conftest.HEADER + "\n88200,99225,1,60,4.0,0.5,Quarter\n")
    _, report = musicnet.scan(root, audio="wav")
    assert sorted(r.id for r in report.recordings) == [1728, 1733, 1759]
    assert report.skipped == [(str(labels), "the first note starts at 2.0 s, after the audio "
                               "ends (1727.wav: 0.5 s)")]


def test_one_id_in_both_folders_is_an_error(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src", with_audio=False)
    shutil.copy(root / "musicnet/train_labels/1727.csv", root / "musicnet/test_labels/1727.csv")
    with pytest.raises(musicnet.MusicNetFormatError) as e:
        musicnet.scan(root)
    assert str(e.value) == (f"{root}/musicnet/test_labels/1727.csv: recording 1727 already has "
                            f"labels in {root}/musicnet/train_labels/1727.csv")


def pizzicato_rows(rec_id):
    # A violin note and a pizzicato (GM 46, as corrected label sets use) note.
    return ["0,44100,41,69,0.0,1.0,Quarter", "44100,88200,46,55,1.0,1.0,Quarter",
            *conftest.note_rows(rec_id)[2:]]


def test_an_unknown_instrument_code_says_how_to_map_or_drop_it(tmp_path):
    root = conftest.write_musicnet(tmp_path / "src", with_audio=False, rows_for=pizzicato_rows)
    cfg = data_config(root, tmp_path / "tfds")
    with pytest.raises(musicnet.DataError) as e:
        input_pipeline.create_windows(cfg, "train")
    assert str(e.value) == (
        f"{root}: recording 1727 (train_labels/1727.csv): instrument 46 (Pizzicato Strings) "
        "is in no group of data.instrument_groups='keyboard:1,7;strings:41,42,43,44;winds:61,"
        "69,71,72,74': add it to a group (e.g. 'strings:41,42,43,44,46') or drop its notes "
        "with ';drop:46'")
    groups = "keyboard:1,7;strings:41,42,43,44,46;winds:61,69,71,72,74"
    mapped = input_pipeline.load_split(data_config(root, tmp_path / "tfds",
                                                   instrument_groups=groups), "train")
    dropped = input_pipeline.load_split(data_config(
        root, tmp_path / "tfds", instrument_groups=cfg.instrument_groups + ";drop:46"), "train")
    # Two recordings in train, one pizzicato note each: mapped onto strings, or gone.
    assert len(mapped.note_pitch) == len(dropped.note_pitch) + 2
    pizz = (mapped.note_pitch == 55) & (mapped.note_start == 31)
    assert pizz.sum() == 2 and (mapped.note_group[pizz] == 1).all()
    assert not ((dropped.note_pitch == 55) & (dropped.note_start == 31)).any()
    np.testing.assert_array_equal(mapped.num_frames, dropped.num_frames)
