"""Reads the MusicNet layout (metadata CSV, label CSVs, WAVs) with clear, one-line errors.

The real archive (Thickstun et al. 2017) extracts to

    musicnet/{train,test}_data/<id>.wav      44.1 kHz mono
    musicnet/{train,test}_labels/<id>.csv    one row per note
    musicnet_metadata.csv                    one row per recording

and mirrors nest it at different depths, so the four folders are searched for rather than
assumed. The shipped sample set has the same layout without WAVs: its marker file
(`musicflax_sample_set.json`) says that audio is rendered from the labels instead.

Everything here is plain numpy/scipy: it knows nothing of TensorFlow or JAX.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import tarfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

LABEL_RATE = 44100  # label times are sample indices of the original 44.1 kHz audio
LABEL_COLUMNS = ("start_time", "end_time", "instrument", "note", "start_beat", "end_beat",
                 "note_value")
METADATA_COLUMNS = ("id", "composer", "composition", "movement", "ensemble", "source",
                    "transcriber", "catalog_name", "seconds")
# MusicNet's 1-based General MIDI programs (pretty_midi's 0-based program = code - 1).
INSTRUMENTS = {1: "Piano", 7: "Harpsichord", 41: "Violin", 42: "Viola", 43: "Cello",
               44: "Contrabass", 61: "Horn", 69: "Oboe", 71: "Bassoon", 72: "Clarinet",
               74: "Flute"}
SAMPLE_SET_MARKER = "musicflax_sample_set.json"
SHIPPED_SAMPLE_SET = Path(__file__).resolve().parent / "sample_set"

log = logging.getLogger(__name__)


class MusicNetFormatError(ValueError):
    """A MusicNet file is missing or malformed; the message names the file (and line)."""

    def __init__(self, path: os.PathLike | str, problem: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {problem}")
        self.path, self.problem, self.line = str(path), problem, line


@dataclasses.dataclass(frozen=True)
class Notes:
    """One recording's notes as parallel arrays, sorted by (start_time, note, instrument)."""

    start_time: np.ndarray  # int64, samples at 44.1 kHz
    end_time: np.ndarray    # int64, samples at 44.1 kHz
    instrument: np.ndarray  # int32, MusicNet's 1-based GM program
    note: np.ndarray        # int32, MIDI pitch
    start_beat: np.ndarray  # float32
    end_beat: np.ndarray    # float32, the note's length in beats (MusicNet's naming)

    def __len__(self) -> int:
        return len(self.start_time)

    @property
    def duration_seconds(self) -> float:
        return float(self.end_time.max()) / LABEL_RATE if len(self) else 0.0


@dataclasses.dataclass(frozen=True)
class Recording:
    """One recording: its id, which MusicNet folder it came from, files and metadata row."""

    id: int
    folder: str  # "train" or "test": the MusicNet folder, not the split
    labels_path: Path
    audio_path: Path | None
    metadata: Mapping[str, str]
    notes: Notes  # parsed and checked once, by the scan


@dataclasses.dataclass
class ScanReport:
    """What a scan kept and what it skipped (with reasons), for the build summary."""

    recordings: list[Recording] = dataclasses.field(default_factory=list)
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    skipped_rows: int = 0

    def skip(self, path: os.PathLike | str, reason: str) -> None:
        log.warning("skipping %s: %s", path, reason)
        self.skipped.append((str(path), reason))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the MusicNet folders are on disk."""

    root: Path
    metadata_csv: Path
    label_dirs: Mapping[str, Path]  # folder name ("train"/"test") -> <folder>_labels
    data_dirs: Mapping[str, Path]   # folder name -> <folder>_data (may be missing)
    sample_set: dict | None         # parsed marker file when audio is synthesized

    @property
    def synthesized_audio(self) -> bool:
        return self.sample_set is not None


def _extract_archive(archive: Path) -> Path:
    """Extracts a .tar.gz once, next to it, and returns the folder (cheap on re-runs)."""
    target = archive.with_name(archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
                               + "_extracted")
    if not (target / ".complete").exists():
        log.info("extracting %s -> %s", archive, target)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(target, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise MusicNetFormatError(archive, f"cannot extract archive ({e})") from None
        (target / ".complete").touch()
    return target


def _find_dirs(root: Path, names: set[str], max_depth: int = 4) -> dict[str, Path]:
    """Breadth-first search for folders by name, shallowest first."""
    found: dict[str, Path] = {}
    level = [root]
    for _ in range(max_depth):
        next_level = []
        for folder in level:
            for child in sorted(folder.iterdir()):
                if child.is_dir():
                    if child.name in names and child.name not in found:
                        found[child.name] = child
                    next_level.append(child)
        level = next_level
    return found


def find_layout(root: os.PathLike | str) -> Layout:
    """Locates the MusicNet folders under `root` (a folder, or a .tar.gz of it)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise MusicNetFormatError(root, "MusicNet root does not exist")
    if root.is_file():
        if not root.name.endswith((".tar.gz", ".tgz")):
            raise MusicNetFormatError(root, "expected a folder or a .tar.gz archive")
        root = _extract_archive(root)
    if not _find_dirs(root, {"train_labels", "test_labels"}):
        # The folder holds the downloaded archives: extract them beside themselves.
        for archive in sorted(root.glob("*.tar.gz")):
            if "midi" not in archive.name:
                _extract_archive(archive)
    folders = _find_dirs(root, {"train_labels", "test_labels", "train_data", "test_data"})
    label_dirs = {n: folders[f"{n}_labels"] for n in ("train", "test") if f"{n}_labels" in folders}
    if not label_dirs:
        raise MusicNetFormatError(root, "no train_labels/ or test_labels/ folder found")
    metadata = sorted(root.rglob("musicnet_metadata.csv"), key=lambda p: len(p.parts))
    if not metadata:
        raise MusicNetFormatError(root, "musicnet_metadata.csv not found")
    marker_path = root / SAMPLE_SET_MARKER
    sample_set = None
    if marker_path.exists():
        try:
            sample_set = json.loads(marker_path.read_text())
        except json.JSONDecodeError as e:
            raise MusicNetFormatError(marker_path, f"invalid JSON ({e})") from None
    data_dirs = {n: folders[f"{n}_data"] for n in ("train", "test") if f"{n}_data" in folders}
    return Layout(root, metadata[0], label_dirs, data_dirs, sample_set)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise MusicNetFormatError(path, f"cannot read ({e})") from None


def read_metadata(path: os.PathLike | str) -> dict[int, dict[str, str]]:
    """Parses musicnet_metadata.csv (quoted commas, CRLF tolerated) into {id: row}."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    missing = {"id", "composer", "ensemble"} - set(reader.fieldnames or ())
    if missing:
        raise MusicNetFormatError(path, f"missing columns {sorted(missing)}", line=1)
    rows: dict[int, dict[str, str]] = {}
    for line, row in enumerate(reader, start=2):
        try:
            rec_id = int(row["id"])
        except (TypeError, ValueError):
            raise MusicNetFormatError(path, f"id {row['id']!r} is not an integer", line) from None
        rows[rec_id] = {k: (v or "").strip() for k, v in row.items() if k is not None}
    return rows


def _parse_label_row(fields: list[str]) -> tuple[int, int, int, int, float, float]:
    """Parses and checks one label row; raises ValueError with the problem in words."""
    if len(fields) < 6:
        raise ValueError(f"expected {len(LABEL_COLUMNS)} columns, got {len(fields)}")
    try:
        start, end = float(fields[0]), float(fields[1])
        instrument, note = int(fields[2]), int(fields[3])
        start_beat, end_beat = float(fields[4]), float(fields[5])
    except ValueError:
        raise ValueError(f"non-numeric value in {fields[:6]}") from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise ValueError(f"bad start_time/end_time {fields[0]!r}/{fields[1]!r}")
    if end < start:
        raise ValueError(f"end_time {fields[1]} is before start_time {fields[0]}")
    if not 0 <= note <= 127:
        raise ValueError(f"pitch {note} outside 0..127")
    if instrument not in INSTRUMENTS:
        raise ValueError(f"unknown instrument {instrument} (MusicNet codes: "
                         f"{sorted(INSTRUMENTS)})")
    return int(round(start)), int(round(end)), instrument, note, start_beat, end_beat


def read_labels(path: os.PathLike | str, on_bad_row: str = "error",
                report: ScanReport | None = None) -> Notes:
    """Reads one label CSV. Bad rows raise, or with on_bad_row='skip' are counted and dropped."""
    path = Path(path)
    lines = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = next(lines, None)
    if header is None or [h.strip() for h in header[:6]] != list(LABEL_COLUMNS[:6]):
        raise MusicNetFormatError(path, f"header must start with {','.join(LABEL_COLUMNS[:6])}",
                                  line=1)
    rows = []
    for line, fields in enumerate(lines, start=2):
        if not fields or not "".join(fields).strip():
            continue
        try:
            rows.append(_parse_label_row(fields))
        except ValueError as e:
            if on_bad_row != "skip":
                raise MusicNetFormatError(path, str(e), line) from None
            if report is not None:
                report.skipped_rows += 1
            log.warning("%s:%d: skipping row: %s", path, line, e)
    rows.sort(key=lambda r: (r[0], r[3], r[2]))
    columns = list(zip(*rows)) if rows else [()] * 6
    return Notes(np.asarray(columns[0], np.int64), np.asarray(columns[1], np.int64),
                 np.asarray(columns[2], np.int32), np.asarray(columns[3], np.int32),
                 np.asarray(columns[4], np.float32), np.asarray(columns[5], np.float32))


def read_audio(path: os.PathLike | str, sample_rate: int, accept_any_rate: bool = False,
               downmix: bool = False) -> np.ndarray:
    """Reads a WAV (float32 or integer PCM) and resamples it to `sample_rate`, float32 mono."""
    from scipy.io import wavfile  # pylint: disable=g-import-not-at-top
    from scipy import signal  # pylint: disable=g-import-not-at-top

    path = Path(path)
    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError, EOFError) as e:
        raise MusicNetFormatError(path, f"not a readable WAV file ({e})") from None
    if rate != LABEL_RATE and not accept_any_rate:
        raise MusicNetFormatError(path, f"sample rate {rate} Hz, expected {LABEL_RATE} Hz "
                                  "(set data.accept_any_rate=True to resample)")
    if data.ndim == 2:
        if data.shape[1] != 1 and not downmix:
            raise MusicNetFormatError(path, f"{data.shape[1]} channels, expected mono "
                                      "(set data.downmix=True to average channels)")
        data = data.mean(axis=1) if np.issubdtype(data.dtype, np.floating) else \
            data.astype(np.float64).mean(axis=1).astype(data.dtype)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        scale = float(max(-int(info.min), int(info.max) + 1))
        offset = 0.0 if info.min < 0 else scale / 2  # 8-bit WAV is unsigned
        audio = (data.astype(np.float64) - offset) / (scale if info.min < 0 else offset)
    else:
        audio = data.astype(np.float64)
    if rate != sample_rate:
        g = math.gcd(rate, sample_rate)
        audio = signal.resample_poly(audio, sample_rate // g, rate // g)
    return np.asarray(audio, np.float32)


def scan(root: os.PathLike | str, on_bad_row: str = "error") -> tuple[Layout, ScanReport]:
    """Pairs label files with audio and metadata; skips (with reasons) what cannot be used.

    A recording needs labels, a metadata row and (unless audio is synthesized) a WAV.
    Label rows are checked here, so a build fails before anything is written.
    """
    layout = find_layout(root)
    metadata = read_metadata(layout.metadata_csv)
    report = ScanReport()
    for folder, label_dir in sorted(layout.label_dirs.items()):
        data_dir = layout.data_dirs.get(folder)
        label_ids = set()
        for labels_path in sorted(label_dir.glob("*.csv")):
            try:
                rec_id = int(labels_path.stem)
            except ValueError:
                report.skip(labels_path, "file name is not a recording id")
                continue
            label_ids.add(rec_id)
            audio_path = None
            if not layout.synthesized_audio:
                audio_path = data_dir / f"{rec_id}.wav" if data_dir else None
                if audio_path is None or not audio_path.exists():
                    report.skip(labels_path, f"no audio ({folder}_data/{rec_id}.wav missing)")
                    continue
            if rec_id not in metadata:
                report.skip(labels_path, f"id {rec_id} has no row in {layout.metadata_csv.name}")
                continue
            notes = read_labels(labels_path, on_bad_row, report)
            if not len(notes):
                report.skip(labels_path, "empty recording (no notes)")
                continue
            report.recordings.append(Recording(rec_id, folder, labels_path, audio_path,
                                               metadata[rec_id], notes))
        if data_dir is not None:
            for wav in sorted(data_dir.glob("*.wav")):
                if wav.stem.isdigit() and int(wav.stem) not in label_ids:
                    report.skip(wav, f"audio without labels ({folder}_labels/{wav.stem}.csv "
                                "missing)")
    if not report.recordings:
        raise MusicNetFormatError(layout.root, "no usable recordings found "
                                  f"({len(report.skipped)} skipped)")
    return layout, report


def iter_recordings(report: ScanReport, ids: set[int]) -> Iterator[Recording]:
    """The scanned recordings whose id is in `ids`, in id order."""
    yield from sorted((r for r in report.recordings if r.id in ids), key=lambda r: r.id)
