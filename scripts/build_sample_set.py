"""Builds the shipped sample set: public-domain scores in the exact MusicNet layout.

    python scripts/build_sample_set.py --out musicflax/data/sample_set

Reads scores from music21's bundled corpus (offline) and writes, with no audio,

    <out>/musicnet_metadata.csv                 one row per recording (MusicNet's columns)
    <out>/musicnet/{train,test}_labels/<id>.csv one row per note (MusicNet's columns)
    <out>/musicflax_sample_set.json             marker (audio is synthesized) + split lists
    <out>/README.md                             provenance, rules and the numbers below

Sources: every Bach chorale (`bach/bwv*` but bwv846, a keyboard prelude; one encoding each,
.mxl first) and the per-movement files of Haydn's string quartets Op 1 No 1 and Op 74 No 1 and
Mozart's K 80, 155, 156 and 458 (one recording per movement, as in MusicNet). Mozart's K 545 is
left out: the corpus holds only the exposition of its first movement, not whole movements.

Rules (also written to the README):
- Time: beats are quarter notes (start_beat = offset in quarter notes, end_beat = the note's
  length in quarter notes, MusicNet's naming). Quarter notes become seconds through the
  score's metronome marks (music21's MetronomeMark boundaries); before a score's first mark,
  or in a score without one, quarter = 80. Fermatas, repeats and grace notes are ignored;
  tied notes are merged (stripTies); chords give one row per pitch; a unison of two parts on
  the same instrument (same times, pitch and code) is written once.
- Instruments: quartets play Violin I/II, Viola, Cello -> 41, 41, 42, 43. Chorale k (in sorted
  path order, counting only the chorales kept) is played by ensemble k mod 3: String Quartet
  (S, A -> 41, T -> 42, B -> 43), Solo Piano (all -> 1) or Wind Quintet (S -> 74, A -> 69,
  T -> 72, B -> 71). A chorale's extra parts (instrumental doublings, obbligati, continuo)
  play, in the String Quartet, the instrument of the S/A/T/B voice nearest in median pitch,
  on the Piano the piano, in the Wind Quintet the horn (61); timpani parts are dropped.
- Splits, by recording and stratified by (composer, ensemble): in each stratum, sorted by id,
  ~10% go to each of test (the test_labels folder), validation and "mt3" test, at evenly
  spaced positions and at least one each; the rest is train. The "musicnet" and "mt3" schemes
  share the validation list, as MusicNet's default validation list in this code is MT3's.
- Size: if the folder would exceed 4.5 MB, an evenly spaced subset of the chorales is kept.

The output is deterministic: a second run writes byte-identical files.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import io
import json
import math
import re
import shutil
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

from music21 import chord, converter, corpus, note, tempo

LABEL_RATE = 44100
DEFAULT_QPM = 80
FIRST_ID = 10001
SIZE_BUDGET = 4_500_000  # bytes for the whole output folder; tests require < 5 MiB
LABEL_HEADER = "start_time,end_time,instrument,note,start_beat,end_beat,note_value"
METADATA_COLUMNS = ["id", "composer", "composition", "movement", "ensemble", "source",
                    "transcriber", "catalog_name", "seconds"]
ENSEMBLES = ("String Quartet", "Solo Piano", "Wind Quintet")
VOICES = ("S", "A", "T", "B")
CHORALE_INSTRUMENTS = {
    "String Quartet": {"S": 41, "A": 41, "T": 42, "B": 43},
    "Solo Piano": {"S": 1, "A": 1, "T": 1, "B": 1},
    "Wind Quintet": {"S": 74, "A": 69, "T": 72, "B": 71},
}
QUARTET_INSTRUMENTS = (41, 41, 42, 43)  # Violin I, Violin II, Viola, Cello
HORN = 61
NOT_CHORALES = {"bwv846": "not a chorale (Well-Tempered Clavier I, Prelude in C major)"}
NOTE_VALUES = {Fraction(4): "Whole", Fraction(3): "Dotted Half", Fraction(2): "Half",
               Fraction(3, 2): "Dotted Quarter", Fraction(1): "Quarter",
               Fraction(3, 4): "Dotted Eighth", Fraction(1, 2): "Eighth",
               Fraction(1, 4): "Sixteenth", Fraction(1, 8): "Thirty Second"}
TRIPLETS = {Fraction(4, 3), Fraction(2, 3), Fraction(1, 3), Fraction(1, 6)}  # 3:2 tuplets


@dataclasses.dataclass(frozen=True)
class Work:
    composer: str
    composition: str
    catalog_name: str
    movements: tuple[str, ...]  # titles of movement1, movement2, ...


QUARTETS = {
    "haydn/opus1no1": Work("Haydn", "String Quartet in B-flat major", "Op 1 No 1",
                           ("1. Presto", "2. Menuetto", "3. Adagio", "4. Menuetto",
                            "5. Presto")),
    "haydn/opus74no1": Work("Haydn", "String Quartet in C major", "Op 74 No 1",
                            ("1. Allegro moderato", "2. Andantino grazioso",
                             "3. Menuetto. Allegretto", "4. Finale. Vivace")),
    "mozart/k80": Work("Mozart", "String Quartet No 1 in G major", "K 80",
                       ("1. Adagio", "2. Allegro", "3. Menuetto", "4. Rondeau")),
    "mozart/k155": Work("Mozart", "String Quartet No 2 in D major", "K 155",
                        ("1. Allegro", "2. Andante", "3. Molto allegro")),
    "mozart/k156": Work("Mozart", "String Quartet No 3 in G major", "K 156",
                        ("1. Presto", "2. Adagio", "3. Tempo di Menuetto",
                         "4. Adagio (first version)")),
    "mozart/k458": Work("Mozart", "String Quartet No 17 in B-flat major", "K 458",
                        ("1. Allegro vivace assai", "2. Menuetto. Moderato", "3. Adagio",
                         "4. Allegro assai")),
}


@dataclasses.dataclass
class Note:
    start: int         # samples at 44.1 kHz
    end: int
    pitch: int
    start_beat: Fraction
    length: Fraction   # quarter notes


@dataclasses.dataclass
class Score:
    """One parsed movement: its parts' notes, before instruments are assigned."""

    path: str                  # corpus-relative, e.g. "bach/bwv269.mxl"
    composer: str
    composition: str
    movement: str
    catalog_name: str
    parts: list[tuple[str, list[Note]]]  # (role, notes): S/A/T/B/"extra", or quartet part
    has_tempo: bool = False    # whether the score has its own metronome mark
    timpani_dropped: int = 0   # timpani parts left out
    ensemble: str = "String Quartet"
    id: int = 0
    text: str = ""             # the rendered label CSV


# ------------------------------------------------------------------------------ sources

CORPUS_ROOT = Path(corpus.__file__).resolve().parent  # music21/corpus


def rel(path: Path) -> str:
    """Corpus-relative path, e.g. "bach/bwv269.mxl"."""
    return path.resolve().relative_to(CORPUS_ROOT).as_posix()


def corpus_sources(skipped: list[tuple[str, str]]) -> tuple[list[Path], list[Path]]:
    """(chorale paths, quartet movement paths), each sorted by corpus-relative path.

    A chorale encoded in several formats (bwv277.mxl and bwv277.krn) is read once, from the
    first of .mxl, .xml, .krn; the others, and the non-chorales, are recorded in `skipped`.
    """
    preference = {".mxl": 0, ".xml": 1, ".krn": 2}
    by_stem = collections.defaultdict(list)
    for p in corpus.getComposer("bach"):
        if Path(p).name.startswith("bwv"):
            by_stem[Path(p).stem].append(Path(p))
    chorales = []
    for stem, paths in sorted(by_stem.items()):
        if stem in NOT_CHORALES:
            skipped += [(rel(p), NOT_CHORALES[stem]) for p in sorted(paths, key=rel)]
            continue
        paths.sort(key=lambda p: (preference.get(p.suffix, 9), rel(p)))
        chorales.append(paths[0])
        skipped += [(rel(p), f"same chorale as {rel(paths[0])}") for p in paths[1:]]
    quartets = [p for work in QUARTETS for p in (CORPUS_ROOT / work).iterdir()
                if re.fullmatch(r"movement\d+\.\w+", p.name)]
    return sorted(chorales, key=rel), sorted(quartets, key=rel)


# ------------------------------------------------------------------------------ conversion

def seconds_of(score) -> tuple[Callable[[Fraction], float], bool]:
    """(quarter-note offset -> seconds, whether the score has its own metronome mark)."""
    marks = [m for m in score.recurse().getElementsByClass(tempo.MetronomeMark)
             if m.getQuarterBPM() is not None]  # "playback only" marks count too
    if not any(m.getOffsetInHierarchy(score) == 0 for m in marks):
        score.insert(0, tempo.MetronomeMark(number=DEFAULT_QPM))
    segments, elapsed = [], 0.0
    for start, end, mark in score.metronomeMarkBoundaries():
        spq = mark.secondsPerQuarter()
        segments.append((float(start), float(end), elapsed, spq))
        elapsed += (float(end) - float(start)) * spq

    def convert(offset: Fraction) -> float:
        offset = float(offset)
        segment = next((s for s in segments if offset <= s[1]), segments[-1])
        start, _, before, spq = segment
        return before + (offset - start) * spq
    return convert, bool(marks)


def part_notes(part, seconds) -> list[Note]:
    """A part's pitched notes with ties merged; chords give one note per pitch."""
    out = []
    for n in part.stripTies().flatten().notes:
        if not isinstance(n, (note.Note, chord.Chord)) or n.duration.isGrace:
            continue
        length = Fraction(n.quarterLength)
        if length <= 0:
            continue
        onset = Fraction(n.offset)
        start = round(seconds(onset) * LABEL_RATE)
        end = round(seconds(onset + length) * LABEL_RATE)
        if end <= start:
            continue
        for p in n.pitches:
            if 0 <= p.midi <= 127:
                out.append(Note(start, end, p.midi, onset, length))
    return out


def median_pitch(notes: list[Note]) -> float:
    return statistics.median(n.pitch for n in notes) if notes else 0.0


def chorale_roles(parts: list[tuple[str, list[Note]]]) -> list[str]:
    """S/A/T/B (or "extra") for each part: by name, else by median pitch."""
    first_words = [(name.split() or [""])[0].lower() for name, _ in parts]
    by_name = [{"soprano": "S", "alto": "A", "tenor": "T", "bass": "B"}.get(w, "extra")
               for w in first_words]
    if set(VOICES) <= set(by_name):
        return by_name
    # No (complete) voice names: rank parts from highest to lowest median pitch.
    order = sorted(range(len(parts)), key=lambda i: -median_pitch(parts[i][1]))
    ranked = {1: ["S"], 2: ["S", "B"], 3: ["S", "A", "B"]}.get(
        len(parts), ["S", "A", "T"] + ["extra"] * (len(parts) - 4) + ["B"])
    roles = [""] * len(parts)
    for rank, i in enumerate(order):
        roles[i] = ranked[rank]
    return roles


def parse(path: Path, skipped: list[tuple[str, str]]):
    """Parses one corpus file into a Score, or returns None (and says why in `skipped`)."""
    name = rel(path)
    try:
        score = converter.parseFile(path, forceSource=True, storePickle=False)
    except Exception as e:  # pylint: disable=broad-except
        skipped.append((name, f"does not parse ({type(e).__name__}: {e})"))
        return None
    seconds, marked = seconds_of(score)
    parts, dropped = [], 0
    for part in score.parts:
        part_name = (part.partName or "").replace("\r", " ").strip()
        if "timpani" in part_name.lower():
            dropped += 1
            continue
        parts.append((part_name, part_notes(part, seconds)))
    if not any(notes for _, notes in parts):
        skipped.append((name, "no notes"))
        return None
    work = name.rsplit("/", 1)[0]
    if work in QUARTETS:
        w = QUARTETS[work]
        if len(parts) != len(QUARTET_INSTRUMENTS):
            skipped.append((name, f"{len(parts)} parts, expected a string quartet's 4"))
            return None
        number = int(re.match(r"movement(\d+)", path.name).group(1))
        roles = ["Violin I", "Violin II", "Viola", "Cello"]  # the corpus's part order
        return Score(name, w.composer, w.composition, w.movements[number - 1], w.catalog_name,
                     [(r, notes) for r, (_, notes) in zip(roles, parts)], marked, dropped)
    bwv = path.stem.removeprefix("bwv")
    roles = chorale_roles(parts)
    return Score(name, "Bach", f"Chorale BWV {bwv}", "Chorale", f"BWV {bwv}",
                 [(r, notes) for r, (_, notes) in zip(roles, parts)], marked, dropped)


def instruments(score: Score) -> list[int]:
    """MusicNet instrument code for each of the score's parts."""
    if score.composer != "Bach":
        return list(QUARTET_INSTRUMENTS)
    table = CHORALE_INSTRUMENTS[score.ensemble]
    voice_pitch = {role: median_pitch(notes) for role, notes in score.parts if role in VOICES}
    codes = []
    for role, notes in score.parts:
        if role in VOICES:
            codes.append(table[role])
        elif score.ensemble == "Wind Quintet":
            codes.append(HORN)
        else:  # nearest voice by median pitch (ties: the higher voice)
            m = median_pitch(notes)
            codes.append(table[min(VOICES, key=lambda v: (abs(voice_pitch.get(v, 1e9) - m),
                                                          VOICES.index(v)))])
    return codes


def beats(x: Fraction) -> str:
    return repr(round(float(x), 6))


def note_value(length: Fraction) -> str:
    if length in NOTE_VALUES:
        return NOTE_VALUES[length]
    return "Triplet" if length in TRIPLETS else "Unknown"


def render(score: Score) -> str:
    """The label CSV: rows sorted by (start_time, note, instrument, ...), no duplicates."""
    rows = []
    for code, (_, notes) in zip(instruments(score), score.parts):
        rows += [(n.start, n.pitch, code, n.end, n.start_beat, n.length) for n in notes]
    rows = sorted(set(rows))  # a unison of two parts on one instrument is written once
    lines = [LABEL_HEADER] + [
        f"{start},{end},{code},{pitch},{beats(onset)},{beats(length)},{note_value(length)}"
        for start, pitch, code, end, onset, length in rows]
    return "\n".join(lines) + "\n"


def last_end(score: Score) -> int:
    return max(n.end for _, notes in score.parts for n in notes)


def num_notes(score: Score) -> int:
    """Rows written (after unisons on one instrument are merged)."""
    return score.text.count("\n") - 1


# ------------------------------------------------------------------------------ selection, splits

def assign(chorales: list[Score], quartets: list[Score]) -> list[Score]:
    """Ensembles, ids and label text for a chosen set of scores (sorted path order)."""
    for k, score in enumerate(chorales):
        score.ensemble = ENSEMBLES[k % 3]
    scores = sorted(chorales + quartets, key=lambda s: s.path)
    for i, score in enumerate(scores):
        score.id = FIRST_ID + i
        score.text = render(score)
    return scores


def subset(chorales: list[Score], keep: int) -> list[Score]:
    """`keep` evenly spaced chorales (all of them when keep >= len)."""
    if keep >= len(chorales):
        return list(chorales)
    return [chorales[i * len(chorales) // keep] for i in range(keep)]


def make_splits(scores: list[Score]) -> dict[int, str]:
    """id -> "train" / "test" (the test folder) / "validation" / "mt3_test"."""
    strata = collections.defaultdict(list)
    for s in scores:
        strata[(s.composer, s.ensemble)].append(s.id)
    split = {}
    for ids in strata.values():
        ids.sort()
        k = max(1, round(len(ids) / 10))
        picks = 3 * k
        for i in ids:
            split[i] = "train"
        for j in range(picks):
            split[ids[int((j + 0.5) * len(ids) / picks)]] = ("test", "validation",
                                                             "mt3_test")[j % 3]
    return split


# ------------------------------------------------------------------------------ output

def metadata_csv(scores: list[Score]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METADATA_COLUMNS)
    for s in scores:
        writer.writerow([s.id, s.composer, s.composition, s.movement, s.ensemble,
                         "music21 corpus", "music21", s.catalog_name,
                         math.ceil(last_end(s) / LABEL_RATE)])
    return buf.getvalue()


def marker_json(split: dict[int, str]) -> str:
    ids = {name: sorted(i for i, s in split.items() if s == name)
           for name in ("validation", "mt3_test")}
    marker = {
        "name": "musicflax-sample",
        "version": "1.0.0",
        "audio": "synthesized",
        "description": ("Public-domain scores from music21's corpus (Bach chorales; Haydn and "
                        "Mozart string quartet movements) in the MusicNet label layout; "
                        "audio is synthesized from the labels. Built by "
                        "scripts/build_sample_set.py."),
        "default_tempo_qpm": DEFAULT_QPM,
        "splits": {"musicnet": {"validation": ids["validation"]},
                   "mt3": {"validation": ids["validation"], "test": ids["mt3_test"]}},
    }
    return json.dumps(marker, indent=2) + "\n"


def summary(scores, split, skipped, total_chorales) -> list[str]:
    """The numbers, as lines, for the console and the README."""
    folder = {i: ("test" if s == "test" else "train") for i, s in split.items()}
    lines = [f"recordings: {len(scores)} ({sum(f == 'train' for f in folder.values())} in "
             f"train_labels, {sum(f == 'test' for f in folder.values())} in test_labels)"]
    for scheme, names in (("musicnet", {"test": "test", "validation": "validation"}),
                          ("mt3", {"mt3_test": "test", "validation": "validation"})):
        count = collections.Counter(names.get(split[s.id], "train") for s in scores)
        lines.append(f"{scheme} scheme: train {count['train']}, validation "
                     f"{count['validation']}, test {count['test']}")
    for key in ("composer", "ensemble"):
        table = collections.defaultdict(collections.Counter)
        for s in scores:
            table[getattr(s, key)][split[s.id]] += 1
        for value, c in sorted(table.items()):
            lines.append(f"{key} {value}: {sum(c.values())} recordings ({c['test']} in "
                         f"test_labels, {c['validation']} validation, {c['mt3_test']} mt3 "
                         f"test, {c['train']} in no list)")
    hours = sum(last_end(s) for s in scores) / LABEL_RATE / 3600
    lines.append(f"notes: {sum(num_notes(s) for s in scores)}; hours: {hours:.2f}")
    lines.append(f"chorales kept: {sum(s.composer == 'Bach' for s in scores)} of "
                 f"{total_chorales} usable")
    lines.append(f"skipped files: {len(skipped)}" +
                 "".join(f"\n  {path}: {why}" for path, why in skipped))
    for composer in ("Bach", "Haydn", "Mozart"):
        own = [s.has_tempo for s in scores if s.composer == composer]
        lines.append(f"{composer}: {sum(own)} of {len(own)} recordings have their own "
                     f"metronome mark, the rest use quarter = {DEFAULT_QPM}")
    lines.append(f"timpani parts dropped: {sum(s.timpani_dropped for s in scores)} (in "
                 f"{sum(s.timpani_dropped > 0 for s in scores)} chorales)")
    return lines


README = """# musicflax sample set

A small stand-in for [MusicNet](https://zenodo.org/records/5120004) that can ship with the code:
exactly its layout (`musicnet_metadata.csv`, `musicnet/{{train,test}}_labels/<id>.csv`, the
same columns, instrument codes and ensemble names) but **no audio**. `musicflax_sample_set.json`
marks the folder as such (the data code synthesizes audio from the labels) and carries the
split lists. Ids start at {first_id}, clear of MusicNet's (1727..2678).

## Where it comes from

Scores from the corpus bundled with [music21](https://github.com/cuthbertLab/music21) 10.5.1,
read offline: every Bach chorale (`bach/bwv*`, except bwv846, the C major Prelude of the
Well-Tempered Clavier; a chorale present in two formats is read once, from the .mxl) and the
per-movement files of Haydn's string quartets Op 1 No 1 and Op 74 No 1 and Mozart's K 80,
K 155, K 156 and K 458, one recording per movement as in MusicNet. Mozart's K 545 is left out:
the corpus holds only the exposition of its first movement.

The compositions are in the public domain, and only note events (times, pitches, durations)
are kept, no engraving or text. The music21 corpus is distributed with the encoders'
permission (the chorale encodings credit Margaret Greentree, jsbchorales.net); its licence
(`music21/corpus/license.txt`) says the music21 creators assume no copyright or change in
licensing for the corpus, and that some encodings may carry restrictions (e.g. on commercial
use) stated in the files themselves. The files used here embed no such licence or rights
statement. The metadata says `source` = `music21 corpus`, `transcriber` = `music21`.

## Rebuild

    pip install music21==10.5.1   # or: pip install -e .[sampleset]
    python scripts/build_sample_set.py --out musicflax/data/sample_set

The build is deterministic: a rebuild writes byte-identical files.

## Rules

- **Labels**: one row per note, sorted by (start_time, note, instrument); times are sample
  indices at 44.1 kHz. `start_beat` is the onset and `end_beat` the note's *length* (MusicNet's
  naming), both in quarter notes. Tied notes are merged; a chord gives one row per pitch, with
  one start_time; rests, grace notes and timpani give nothing. Two parts playing the same pitch
  at the same times on the same instrument code (e.g. S and A on one piano key) give one row.
  `note_value` is Whole, Dotted Half, Half, Dotted Quarter, Quarter, Dotted Eighth, Eighth,
  Sixteenth, Thirty Second, Triplet (a 3:2 tuplet: 4/3, 2/3, 1/3 or 1/6 of a quarter) or
  Unknown (other lengths, e.g. ties merged into odd lengths).
- **Tempo**: quarter notes become seconds through the score's metronome marks (music21's
  MetronomeMark boundaries; an encoder's "playback only" mark counts). Before a score's first
  mark, and in scores without one, **quarter = {qpm}** (how many of each, below). Fermatas are
  ignored and repeats are not expanded. `seconds` in the metadata is the last note's end,
  rounded up.
- **Instruments** (MusicNet's 1-based General MIDI codes): quartet parts Violin I, Violin II,
  Viola, Cello -> 41, 41, 42, 43 (ensemble String Quartet). The k-th kept chorale, in sorted
  path order, is played by ensemble k mod 3: String Quartet (S, A -> 41 Violin, T -> 42 Viola,
  B -> 43 Cello), Solo Piano (all voices -> 1) or Wind Quintet (S -> 74 Flute, A -> 69 Oboe,
  T -> 72 Clarinet, B -> 71 Bassoon). Voices are found by part name (Soprano/Alto/Tenor/Bass),
  else by ranking the parts by median pitch. A chorale's extra parts (instrumental doublings
  and obbligati, continuo, a second soprano) play: in the String Quartet, the instrument of the
  voice nearest in median pitch; on the piano, the piano; in the Wind Quintet, the horn (61).
  Timpani parts are dropped.
- **Splits** (by recording): recordings are grouped by (composer, ensemble); in each group,
  sorted by id, about 10% (at least one) go to each of: the `test_labels` folder (the
  "musicnet" scheme's test split, like MusicNet's test folder), the validation list, and the
  "mt3" scheme's test list, at evenly spaced positions; the rest are in no list. The validation
  list is shared by both schemes (as this code's default MusicNet validation list is MT3's);
  both mt3 lists come from `train_labels`. So every composer and every ensemble is in train,
  validation and test under both schemes.
- **Size**: the folder must stay under 5 MB, so when all chorales would take more than 4.5 MB
  an evenly spaced subset of them is kept (how many, below).

## Contents

{summary}
"""


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def write(out: Path, scores: list[Score], split: dict[int, str], readme: str) -> None:
    for managed in ("musicnet", "musicnet_metadata.csv", "musicflax_sample_set.json",
                    "README.md"):
        target = out / managed
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    for folder in ("train_labels", "test_labels"):
        (out / "musicnet" / folder).mkdir(parents=True)
    for s in scores:
        folder = "test_labels" if split[s.id] == "test" else "train_labels"
        (out / "musicnet" / folder / f"{s.id}.csv").write_bytes(s.text.encode())
    (out / "musicnet_metadata.csv").write_bytes(metadata_csv(scores).encode())
    (out / "musicflax_sample_set.json").write_bytes(marker_json(split).encode())
    (out / "README.md").write_bytes(readme.encode())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    started = time.time()

    skipped: list[tuple[str, str]] = []
    chorale_paths, quartet_paths = corpus_sources(skipped)
    print(f"parsing {len(chorale_paths)} chorales and {len(quartet_paths)} quartet movements",
          flush=True)
    chorales = [s for p in chorale_paths if (s := parse(p, skipped))]
    quartets = [s for p in quartet_paths if (s := parse(p, skipped))]

    # Keep as many chorales as fit the size budget (binary search; README and JSON are a few
    # kB, allowed for by a 20 kB margin).
    def fits(keep: int) -> bool:
        scores = assign(subset(chorales, keep), quartets)
        return sum(len(s.text) for s in scores) + len(metadata_csv(scores)) + 20_000 \
            <= SIZE_BUDGET

    low, high = 0, len(chorales)
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    scores = assign(subset(chorales, low), quartets)
    split = make_splits(scores)
    lines = summary(scores, split, skipped, len(chorales))
    readme = README.format(first_id=FIRST_ID, qpm=DEFAULT_QPM,
                           summary="\n".join(f"    {row}" for line in lines
                                             for row in line.split("\n")))
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out, scores, split, readme)
    for line in lines:
        print(line)
    print(f"size on disk: {folder_size(args.out) / 1e6:.2f} MB ({folder_size(args.out)} bytes) "
          f"in {args.out}; took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
