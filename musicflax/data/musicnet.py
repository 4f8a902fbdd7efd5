"""Reads the MusicNet layout (metadata CSV, label CSVs, WAVs) with clear, one-line errors.

The real archive (Thickstun et al. 2017) extracts to

    musicnet/{train,test}_data/<id>.wav      44.1 kHz mono
    musicnet/{train,test}_labels/<id>.csv    one row per note
    musicnet_metadata.csv                    one row per recording

and mirrors nest it at different depths, so the folders are searched for rather than
assumed. Label files may also be gzipped (`<id>.csv.gz`, as in the shipped sample set), and
a label set may come without any WAVs (piano-roll builds never need them). The shipped
sample set's marker file (`musicflax_sample_set.json`) says its audio is rendered from the
labels instead.

A source is read-only to us: archives are unpacked into a cache folder of ours, never next
to themselves. Everything here is plain numpy: it knows nothing of TensorFlow or JAX.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import logging
import math
import os
import shutil
import struct
import tarfile
from pathlib import Path
from typing import Mapping

import numpy as np

LABEL_RATE = 44100  # label times are sample indices of the original 44.1 kHz audio
LABEL_COLUMNS = ("start_time", "end_time", "instrument", "note", "start_beat", "end_beat",
                 "note_value")
REQUIRED_LABEL_COLUMNS = LABEL_COLUMNS[:4]
LABEL_SUFFIXES = (".csv", ".csv.gz")
METADATA_COLUMNS = ("id", "composer", "composition", "movement", "ensemble", "source",
                    "transcriber", "catalog_name", "seconds")
# MusicNet's 1-based General MIDI programs (pretty_midi's 0-based program = code - 1). Label
# sets derived from MusicNet may use other programs (e.g. 46, pizzicato strings); any 1..128
# is read, and `data.instrument_groups` decides what becomes of it.
INSTRUMENTS = {1: "Piano", 7: "Harpsichord", 41: "Violin", 42: "Viola", 43: "Cello",
               44: "Contrabass", 61: "Horn", 69: "Oboe", 71: "Bassoon", 72: "Clarinet",
               74: "Flute"}
SAMPLE_SET_MARKER = "musicflax_sample_set.json"
SHIPPED_SAMPLE_SET = Path(__file__).resolve().parent / "sample_set"
DEFAULT_EXTRACT_DIR = Path("~/tensorflow_datasets/downloads/musicflax_extracted")

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A data problem the user can fix (bad file, bad data option); the message is one line."""


class MusicNetFormatError(DataError):
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
    instrument: np.ndarray  # int32, 1-based General MIDI program (MusicNet's code)
    note: np.ndarray        # int32, MIDI pitch
    start_beat: np.ndarray  # float32 (NaN where the file has no beat columns)
    end_beat: np.ndarray    # float32, the note's length in beats (MusicNet's naming)

    def __len__(self) -> int:
        return len(self.start_time)

    @property
    def duration_seconds(self) -> float:
        return float(self.end_time.max()) / LABEL_RATE if len(self) else 0.0


@dataclasses.dataclass(frozen=True)
class WavInfo:
    rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.rate


@dataclasses.dataclass(frozen=True)
class Recording:
    """One recording: its id, which MusicNet folder it came from, files and metadata row."""

    id: int
    folder: str  # "train" or "test": the MusicNet folder, not the split
    labels_path: Path
    audio_path: Path | None
    metadata: Mapping[str, str]
    notes: Notes  # parsed and checked once, by the scan
    audio: WavInfo | None = None


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


# ---------------------------------------------------------------------------- layout

def _archive_key(archive: Path) -> str:
    stat = archive.stat()
    text = f"{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _extract_archive(archive: Path, extract_dir: Path) -> Path:
    """Unpacks a .tar.gz once into our cache (never next to it) and returns the folder."""
    stem = archive.name.removesuffix(".tar.gz").removesuffix(".tgz")
    target = extract_dir.expanduser() / f"{stem}-{_archive_key(archive)}"
    if not (target / ".complete").exists():
        log.info("extracting %s -> %s", archive, target)
        partial = target.with_name(target.name + ".partial")
        if partial.exists():  # an earlier extraction that was interrupted
            shutil.rmtree(partial)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(partial, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise MusicNetFormatError(archive, f"cannot extract archive ({e})") from None
        if target.exists():
            shutil.rmtree(target)
        partial.rename(target)
        (target / ".complete").touch()
    return target


def _find_dirs(roots: list[Path], names: set[str], max_depth: int = 4) -> dict[str, Path]:
    """Breadth-first search for folders by name, shallowest first (earlier roots first)."""
    found: dict[str, Path] = {}
    for root in roots:
        level = [root]
        for _ in range(max_depth):
            next_level = []
            for folder in level:
                for child in sorted(folder.iterdir()):
                    if child.is_dir() and not child.name.startswith("."):
                        if child.name in names and child.name not in found:
                            found[child.name] = child
                        next_level.append(child)
            level = next_level
    return found


def find_layout(root: os.PathLike | str, extract_dir: os.PathLike | str | None = None
                ) -> Layout:
    """Locates the MusicNet folders under `root` (a folder, or a .tar.gz of it).

    Archives (`root` itself, or .tar.gz files in a root that has no label folders) are
    unpacked into `extract_dir` (default DEFAULT_EXTRACT_DIR), keyed by path, size and time;
    musicnet_metadata.csv may sit inside them or beside them.
    """
    root = Path(root).expanduser()
    extract_dir = Path(extract_dir or DEFAULT_EXTRACT_DIR)
    if not root.exists():
        raise MusicNetFormatError(root, "MusicNet root does not exist")
    search = [root]
    if root.is_file():
        if not root.name.endswith((".tar.gz", ".tgz")):
            raise MusicNetFormatError(root, "expected a folder or a .tar.gz archive")
        search = [_extract_archive(root, extract_dir)]
    elif not _find_dirs([root], {"train_labels", "test_labels"}):
        # The folder holds the downloaded archives: read them through our cache.
        search += [_extract_archive(a, extract_dir) for a in sorted(root.glob("*.tar.gz"))
                   if "midi" not in a.name]
    folders = _find_dirs(search, {"train_labels", "test_labels", "train_data", "test_data"})
    label_dirs = {n: folders[f"{n}_labels"] for n in ("train", "test") if f"{n}_labels" in folders}
    if not label_dirs:
        raise MusicNetFormatError(root, "no train_labels/ or test_labels/ folder found")
    metadata = sorted((p for base in search for p in base.rglob("musicnet_metadata.csv")),
                      key=lambda p: len(p.parts))
    if root.is_file():  # an archive given alone: its metadata is a separate download
        metadata += [p for p in [root.parent / "musicnet_metadata.csv"] if p.is_file()]
    if not metadata:
        raise MusicNetFormatError(root, "musicnet_metadata.csv not found")
    sample_set = None
    marker_path = root / SAMPLE_SET_MARKER
    if marker_path.is_file():
        try:
            sample_set = json.loads(marker_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MusicNetFormatError(marker_path, f"invalid JSON ({e})") from None
    data_dirs = {n: folders[f"{n}_data"] for n in ("train", "test") if f"{n}_data" in folders}
    return Layout(search[0] if root.is_file() else root, metadata[0], label_dirs, data_dirs,
                  sample_set)


def label_files(layout: Layout, report: ScanReport | None = None
                ) -> list[tuple[str, int, Path]]:
    """(folder, id, path) of every label file, in folder then id order.

    Files whose name is not `<id>.csv` / `<id>.csv.gz` are skipped (and reported); an id
    with two label files, in one folder or across the train and test folders, is an error.
    """
    out, seen = [], {}
    for folder, label_dir in sorted(layout.label_dirs.items(), reverse=True):  # train first
        for path in sorted(label_dir.iterdir()):
            suffix = next((s for s in LABEL_SUFFIXES if path.name.endswith(s)), None)
            if suffix is None or not path.is_file():
                continue
            stem = path.name[:-len(suffix)]
            if not stem.isdigit():
                if report is not None:
                    report.skip(path, "file name is not a recording id")
                continue
            rec_id = int(stem)
            if rec_id in seen:
                raise MusicNetFormatError(path, f"recording {rec_id} already has labels in "
                                          f"{seen[rec_id]}")
            seen[rec_id] = path
            out.append((folder, rec_id, path))
    out.sort(key=lambda f: (f[0] != "train", f[1]))
    return out


# ---------------------------------------------------------------------------- files

def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
        if path.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        return raw.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        raise MusicNetFormatError(path, f"cannot read ({e})") from None


def read_metadata(path: os.PathLike | str) -> dict[int, dict[str, str]]:
    """Parses musicnet_metadata.csv (quoted commas, CRLF tolerated) into {id: row}."""
    path = Path(path)
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    missing = {"id", "composer", "ensemble"} - {(f or "").strip() for f in reader.fieldnames or ()}
    if missing:
        raise MusicNetFormatError(path, f"missing columns {sorted(missing)}", line=1)
    rows: dict[int, dict[str, str]] = {}
    first_line: dict[int, int] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        try:
            rec_id = int(row["id"])
        except (TypeError, ValueError):
            raise MusicNetFormatError(path, f"id {row['id']!r} is not an integer", line) from None
        if rec_id in rows:
            raise MusicNetFormatError(path, f"id {rec_id} appears twice (first on line "
                                      f"{first_line[rec_id]})", line)
        rows[rec_id], first_line[rec_id] = row, line
    return rows


def _label_header(path: Path, header: list[str] | None) -> dict[str, int]:
    """Column name -> position; the four note columns are required, in any order."""
    names = [h.strip().lower() for h in header or ()]
    missing = [c for c in REQUIRED_LABEL_COLUMNS if c not in names]
    if missing:
        raise MusicNetFormatError(path, f"header lacks column(s) {', '.join(missing)} (needs "
                                  f"{','.join(REQUIRED_LABEL_COLUMNS)}; found "
                                  f"{','.join(names) or 'nothing'})", line=1)
    twice = sorted({n for n in names if n and names.count(n) > 1})
    if twice:
        raise MusicNetFormatError(path, f"header names column(s) {', '.join(twice)} twice",
                                  line=1)
    return {n: names.index(n) for n in LABEL_COLUMNS[:6] if n in names}


def _parse_label_row(fields: list[str], columns: Mapping[str, int], width: int
                     ) -> tuple[int, int, int, int, float, float]:
    """Parses and checks one label row; raises ValueError with the problem in words."""
    if len(fields) < max(columns.values()) + 1:
        raise ValueError(f"expected {width} columns, got {len(fields)}")
    get = lambda name: fields[columns[name]].strip()
    try:
        start, end = float(get("start_time")), float(get("end_time"))
        instrument, note = int(get("instrument")), int(get("note"))
        beats = [float(get(b)) if b in columns and get(b) else math.nan
                 for b in ("start_beat", "end_beat")]
    except ValueError:
        raise ValueError("non-numeric value in "
                         f"{[fields[i] for i in sorted(columns.values())]}") from None
    if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
        raise ValueError(f"bad start_time/end_time {get('start_time')!r}/{get('end_time')!r}")
    if end < start:
        raise ValueError(f"end_time {get('end_time')} is before start_time {get('start_time')}")
    if not 0 <= note <= 127:
        raise ValueError(f"pitch {note} outside 0..127")
    if not 1 <= instrument <= 128:
        raise ValueError(f"instrument {instrument} is not a 1-based General MIDI program "
                         f"(1..128; MusicNet's codes are {sorted(INSTRUMENTS)})")
    return int(round(start)), int(round(end)), instrument, note, beats[0], beats[1]


def read_labels(path: os.PathLike | str, on_bad_row: str = "error",
                report: ScanReport | None = None) -> Notes:
    """Reads one label CSV (or .csv.gz); columns are found by the header's names.

    Bad rows raise, or with on_bad_row='skip' are counted and dropped.
    """
    path = Path(path)
    lines = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = next(lines, None)
    columns = _label_header(path, header)
    rows = []
    for line, fields in enumerate(lines, start=2):
        if not fields or not "".join(fields).strip():
            continue
        try:
            rows.append(_parse_label_row(fields, columns, len(header)))
        except ValueError as e:
            if on_bad_row != "skip":
                raise MusicNetFormatError(path, str(e), line) from None
            if report is not None:
                report.skipped_rows += 1
            log.warning("%s:%d: skipping row: %s", path, line, e)
    rows.sort(key=lambda r: (r[0], r[3], r[2]))
    columns_out = list(zip(*rows)) if rows else [()] * 6
    return Notes(np.asarray(columns_out[0], np.int64), np.asarray(columns_out[1], np.int64),
                 np.asarray(columns_out[2], np.int32), np.asarray(columns_out[3], np.int32),
                 np.asarray(columns_out[4], np.float32), np.asarray(columns_out[5], np.float32))


def write_labels(path: os.PathLike | str, start: np.ndarray, end: np.ndarray,
                 instrument: np.ndarray, note: np.ndarray) -> None:
    """Writes notes (times in seconds) as a MusicNet label CSV, sorted as `read_labels` sorts.

    Times become sample indices at 44.1 kHz; the beat columns are left empty (no score)."""
    rows = sorted(zip(np.round(np.asarray(start) * LABEL_RATE).astype(np.int64).tolist(),
                      np.round(np.asarray(end) * LABEL_RATE).astype(np.int64).tolist(),
                      np.asarray(instrument).tolist(), np.asarray(note).tolist()),
                  key=lambda r: (r[0], r[3], r[2]))
    lines = [",".join(LABEL_COLUMNS)] + [f"{s},{e},{i},{n},,," for s, e, i, n in rows]
    Path(path).write_text("\n".join(lines) + "\n")


def wav_info(path: os.PathLike | str) -> WavInfo:
    """Rate, channels and length of a WAV from its header alone (cheap for 34 h of audio)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            riff, _, wave = struct.unpack("<4sI4s", f.read(12))
            if riff not in (b"RIFF", b"RF64") or wave != b"WAVE":
                raise ValueError("no RIFF/WAVE header")
            fmt = None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    raise ValueError("no data chunk (truncated file?)")
                chunk, length = struct.unpack("<4sI", head)
                if chunk == b"fmt ":
                    body = f.read(length)
                    if len(body) < 16:
                        raise ValueError("truncated fmt chunk")
                    _, channels, rate, _, block, _ = struct.unpack("<HHIIHH", body[:16])
                    fmt = (channels, rate, block)
                elif chunk == b"data":
                    if fmt is None:
                        raise ValueError("data chunk before the fmt chunk")
                    channels, rate, block = fmt
                    if not channels or not rate or not block:
                        raise ValueError(f"bad fmt chunk (channels {channels}, rate {rate})")
                    available = min(length, size - f.tell())
                    return WavInfo(rate, channels, available // block)
                else:
                    f.seek(length + (length & 1), os.SEEK_CUR)
    except (OSError, ValueError, struct.error) as e:
        raise MusicNetFormatError(path, f"not a readable WAV file ({e})") from None


def read_audio(path: os.PathLike | str, sample_rate: int, accept_any_rate: bool = False,
               downmix: bool = False) -> np.ndarray:
    """Reads a WAV (float32 or integer PCM) and resamples it to `sample_rate`, float32 mono."""
    from scipy.io import wavfile  # pylint: disable=g-import-not-at-top
    from scipy import signal  # pylint: disable=g-import-not-at-top

    path = Path(path)
    try:
        rate, data = wavfile.read(path)
    except (ValueError, OSError, EOFError, struct.error, IndexError) as e:
        raise MusicNetFormatError(path, f"not a readable WAV file ({e})") from None
    _check_wav(path, rate, 1 if data.ndim == 1 else data.shape[1], accept_any_rate, downmix)
    if data.ndim == 2:
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


def _check_wav(path: Path, rate: int, channels: int, accept_any_rate: bool,
               downmix: bool) -> None:
    if rate != LABEL_RATE and not accept_any_rate:
        raise MusicNetFormatError(path, f"sample rate {rate} Hz, expected {LABEL_RATE} Hz "
                                  "(set data.accept_any_rate=True to resample)")
    if channels != 1 and not downmix:
        raise MusicNetFormatError(path, f"{channels} channels, expected mono "
                                  "(set data.downmix=True to average channels)")


# ---------------------------------------------------------------------------- scan

AUDIO_MODES = ("none", "wav", "synth", "fluidsynth")


def scan(root: os.PathLike | str | Layout, on_bad_row: str = "error", audio: str = "none",
         accept_any_rate: bool = False, downmix: bool = False,
         extract_dir: os.PathLike | str | None = None) -> tuple[Layout, ScanReport]:
    """Pairs label files with metadata (and WAVs); skips (with reasons) what cannot be used.

    audio: 'none' (labels only: WAVs are never looked at), 'wav' (a recording needs its WAV;
    headers are checked here) or 'synth' / 'fluidsynth' (audio will be rendered from the
    labels). Every
    label row is checked here, so a build fails before anything is written.
    """
    if audio not in AUDIO_MODES:
        raise DataError(f"unknown audio mode {audio!r} (choose one of {AUDIO_MODES})")
    layout = root if isinstance(root, Layout) else find_layout(root, extract_dir)
    metadata = read_metadata(layout.metadata_csv)
    report = ScanReport()
    files = label_files(layout, report)
    for folder, rec_id, labels_path in files:
        audio_path, info = None, None
        if audio == "wav":
            data_dir = layout.data_dirs.get(folder)
            audio_path = data_dir / f"{rec_id}.wav" if data_dir else None
            if audio_path is None or not audio_path.exists():
                report.skip(labels_path, f"no audio ({folder}_data/{rec_id}.wav missing)")
                continue
            info = wav_info(audio_path)
            _check_wav(audio_path, info.rate, info.channels, accept_any_rate, downmix)
        if rec_id not in metadata:
            report.skip(labels_path, f"id {rec_id} has no row in {layout.metadata_csv.name}")
            continue
        notes = read_labels(labels_path, on_bad_row, report)
        if not len(notes):
            report.skip(labels_path, "empty recording (no notes)")
            continue
        if info is not None:
            if not info.frames:
                report.skip(audio_path, "empty audio")
                continue
            first = notes.start_time[0] / LABEL_RATE
            if first >= info.seconds:
                report.skip(labels_path, f"the first note starts at {first:.1f} s, after the "
                            f"audio ends ({audio_path.name}: {info.seconds:.1f} s)")
                continue
        report.recordings.append(Recording(rec_id, folder, labels_path, audio_path,
                                           metadata[rec_id], notes, info))
    if audio == "wav":
        labelled = {rec_id for _, rec_id, _ in files}
        for folder, data_dir in sorted(layout.data_dirs.items()):
            for wav in sorted(data_dir.glob("*.wav")):
                if wav.stem.isdigit() and int(wav.stem) not in labelled:
                    report.skip(wav, f"audio without labels ({folder}_labels/{wav.stem}.csv "
                                "missing)")
    if not report.recordings:
        reasons = sorted({why.split(" (")[0] for _, why in report.skipped})
        hint = ""
        if audio == "wav" and any(why.startswith("no audio") for _, why in report.skipped):
            hint = ("; for a label set without WAVs use a piano-roll config, or render "
                    "audio from the labels with data.audio_source=synth")
        raise MusicNetFormatError(layout.root, "no usable recordings found "
                                  f"({len(report.skipped)} skipped: {'; '.join(reasons)}){hint}")
    return layout, report


def source_fingerprint(layout: Layout, with_audio: bool) -> str:
    """A hash of what a build reads: label and metadata contents (and WAV names, sizes and
    times when audio is read). The same files moved elsewhere keep their fingerprint."""
    digest = hashlib.sha256()

    def add(name: str, payload: bytes) -> None:
        digest.update(f"{name}\0{len(payload)}\0".encode())
        digest.update(payload)

    add("metadata", layout.metadata_csv.read_bytes())
    if layout.sample_set is not None:
        add("marker", (layout.root / SAMPLE_SET_MARKER).read_bytes())
    for folder, _, path in label_files(layout):
        add(f"{folder}_labels/{path.name}", hashlib.sha256(path.read_bytes()).digest())
    if with_audio:
        for folder, data_dir in sorted(layout.data_dirs.items()):
            for wav in sorted(data_dir.glob("*.wav")):
                stat = wav.stat()
                add(f"{folder}_data/{wav.name}", f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
