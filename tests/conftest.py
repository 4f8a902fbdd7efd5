"""Shared fixtures: tiny hand-made folders in the real MusicNet layout, and small configs."""

from __future__ import annotations

import atexit
import csv
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

# Tests shard over 8 fake CPU devices; this must be set before JAX starts.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA:CPU compiles the default (partitionable) threefry RNG slowly: model init compiles in
# half the time without it. Tests compare runs under one setting, so either is sound; the
# subprocesses the tests start inherit it.
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "false")
# Many tests compile the same tiny models, in this process and in the trainers they start:
# one compilation cache for the whole run (empty at its start) compiles each of them once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="musicflax-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy.io import wavfile  # noqa: E402

# The slowest files first: scripts/test.sh runs each file on one of two workers, and a slow file
# started last would run alone at the end.
SLOWEST_FILES = ["multihost_test.py", "launch_ssh_test.py", "eval_test.py", "hierarchy_test.py",
                 "score_audio_test.py", "sample_test.py", "train_test.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable within a file


HEADER = "start_time,end_time,instrument,note,start_beat,end_beat,note_value"
METADATA = ["id", "composer", "composition", "movement", "ensemble", "source", "transcriber",
            "catalog_name", "seconds"]

# (id, folder, composer, ensemble): ids from the official lists so each split is non-empty
# under the "musicnet" scheme (1733 is a validation id, 1759 an official test id).
TINY = [(1727, "train", "Schubert", "Solo Piano"), (1728, "train", "Bach", "String Quartet"),
        (1733, "train", "Mozart", "Solo Piano"), (1759, "test", "Schubert", "Solo Piano")]


def note_rows(rec_id: int, seconds: float = 12.0) -> list[str]:
    """A simple deterministic melody: one note every 0.5 s, pitch depending on the id."""
    rows = []
    instrument = 1 if rec_id % 2 else 41
    for i in range(int(seconds * 2) - 1):
        start, end = int(i * 0.5 * 44100), int((i * 0.5 + 0.4) * 44100)
        rows.append(f"{start},{end},{instrument},{48 + (rec_id + i) % 24},{i}.0,0.8,Quarter")
    return rows


def write_musicnet(root: Path, recordings=TINY, with_audio: bool = True,
                   rows_for=note_rows, seconds: float = 12.0, gzip_labels: bool = False) -> Path:
    """Writes a MusicNet-layout folder (labels, metadata, 44.1 kHz float32 WAVs)."""
    root.mkdir(parents=True, exist_ok=True)
    base = root / "musicnet"
    with open(root / "musicnet_metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(METADATA)
        for rec_id, _, composer, ensemble in recordings:
            w.writerow([rec_id, composer, "Piece, with a comma", "1. Allegro", ensemble,
                        "test", "test", "Op 1", int(seconds)])
    for rec_id, folder, _, _ in recordings:
        (base / f"{folder}_labels").mkdir(parents=True, exist_ok=True)
        text = "\n".join([HEADER, *rows_for(rec_id)]) + "\n"
        if gzip_labels:
            (base / f"{folder}_labels" / f"{rec_id}.csv.gz").write_bytes(
                gzip.compress(text.encode(), mtime=0))
        else:
            (base / f"{folder}_labels" / f"{rec_id}.csv").write_text(text)
        if with_audio:
            (base / f"{folder}_data").mkdir(parents=True, exist_ok=True)
            t = np.arange(int(seconds * 44100)) / 44100
            wave = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
            wavfile.write(base / f"{folder}_data" / f"{rec_id}.wav", 44100, wave)
    return root


# A folder of string-quartet movements that is not MusicNet: other ids, no test folder, no
# audio (what a researcher has after converting their own scores).
QUARTETS = [(20001 + i, "train", ("Haydn", "Boccherini")[i % 2], "String Quartet")
            for i in range(38)]


def quartet_rows(rec_id: int) -> list[str]:
    """Four parts, a note each every 0.25 s for 8 s."""
    rows = []
    for i in range(32):
        start, end = int(i * 0.25 * 44100), int((i * 0.25 + 0.2) * 44100)
        for part, (code, low) in enumerate(((41, 67), (41, 60), (42, 53), (43, 41))):
            rows.append(f"{start},{end},{code},{low + (rec_id + i + part) % 7},{i}.0,0.8,Eighth")
    return rows


def write_quartets(root: Path, **kw) -> Path:
    return write_musicnet(root, QUARTETS, with_audio=False, rows_for=quartet_rows,
                          seconds=8.0, **kw)


def write_synthesized_tiny(root: Path) -> Path:
    """The tiny folder without WAVs, marked as a sample set whose audio is synthesized from
    its labels (validation: 1728, 1733)."""
    from musicflax.data import musicnet  # pylint: disable=g-import-not-at-top
    source = write_musicnet(root, with_audio=False)
    (source / musicnet.SAMPLE_SET_MARKER).write_text(json.dumps(
        {"name": "tiny", "audio": "synthesized",
         "splits": {"musicnet": {"validation": [1728, 1733]}}}))
    return source


@pytest.fixture
def tiny_musicnet(tmp_path) -> Path:
    return write_musicnet(tmp_path / "source")


def prior_config_for(root, tfds_dir, steps):
    """A tiny prior over the codes of the tiny VQ-VAE in root/vqvae."""
    from configs import prior as prior_config  # pylint: disable=g-import-not-at-top
    config = prior_config.get_config("runlocal")
    config.data.tfds_data_dir = tfds_dir
    config.prior.vqvae_workdir = str(root / "vqvae")
    config.num_train_steps = steps
    config.batch_size = 8
    config.model.max_len = 32
    config.log_every = 1
    config.eval_every = config.checkpoint_every = 3
    config.mesh.num_devices = 1
    return config


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """A tiny VQ-VAE trained on the sample set, then a tiny prior over its codes."""
    from musicflax.train import trainer  # pylint: disable=g-import-not-at-top
    from train_test import tiny_config  # pylint: disable=g-import-not-at-top
    root = tmp_path_factory.mktemp("runs")
    tfds_dir = str(root / "tfds")
    # Logits start at a 12% base rate: in 30 steps the tiny model then still predicts notes
    # (some right), so the note metrics have something to count.
    vqvae = tiny_config(tfds_dir, steps=30, **{"optim.learning_rate": 3e-3,
                                               "model.output_bias": -2.0})
    vqvae.eval_every = vqvae.checkpoint_every = 30
    vqvae.image_every = 0
    trainer.train_and_evaluate(vqvae, str(root / "vqvae"))
    trainer.train_and_evaluate(prior_config_for(root, tfds_dir, steps=6), str(root / "prior"))
    return root, tfds_dir
