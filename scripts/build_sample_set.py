"""Builds the shipped sample set: public-domain scores in the exact MusicNet layout.

    python scripts/build_sample_set.py --out musicflax/data/sample_set

Reads scores from music21's bundled corpus (offline) and writes, with no audio,

    <out>/musicnet_metadata.csv                    one row per recording (MusicNet's columns)
    <out>/musicnet/{train,test}_labels/<id>.csv.gz one row per note (MusicNet's columns), gzip
    <out>/musicflax_sample_set.json                marker (audio is synthesized) + split lists
    <out>/README.md                                provenance, rules and the numbers below

The mix follows MusicNet's (about half Solo Piano, then string quartets and other chamber
music, at ~8 notes/s) as far as the corpus allows. Sources, one recording per corpus file:
- keyboard music: Bach's C major Prelude (WTC I), C.P.E. Bach's Wq 55/4 Poco adagio,
  Chopin's Mazurka Op 6 No 2, Mozart's K 545 (the corpus holds only the first movement's
  exposition: kept, and named so), Joplin's Maple Leaf Rag, Schoenberg's Op 19 Nos 2 and 6;
- chamber music: the string quartet movements of Haydn (Op 1 No 1, Op 74 No 1), Mozart
  (K 80, 155, 156, 458) and Robert Schumann (Op 41 No 1), Clara Schumann's Piano Trio Op 17
  (third movement), Weber's Clarinet Concertino (piano reduction), and three songs whose
  voice part goes to a violin (Accompanied Violin);
- renderings (named as such in the README): the MADRIGALS_KEPT densest madrigals (Monteverdi
  Books 3-5, Lusitano) on Solo Piano, Wind Quintet or Viola Quintet, two hymns on Solo
  Piano, and CHORALES_KEPT Bach chorales (a third of the set) on Solo Piano or Wind Quintet.
  Chorales and madrigals are sparse: more of them would pull the set below ~8 notes/s.
Left out: all Beethoven (his quartets are kept as unseen test material), and every encoding
whose file states licence terms (Palestrina's masses and CCARH's kern files: "rights to all
derivative electronic formats reserved"; share-alike or copyleft encodings: Clara Schumann's
polonaises, Webern, Beach, Ciconia, da Firenze, Josquin; a publisher's mark: Monteverdi
5.4/5.5), Corelli's trio-sonata movement (CC BY), and Verdi (a modern adaptation).

Rules (spelled out in the README):
- Time: beats are quarter notes (start_beat = offset in quarter notes of the performed
  score, end_beat = the note's length in quarter notes, MusicNet's naming). Repeats are
  played (music21's expandRepeats) unless music21 cannot expand them or the result is over
  twice the written length. Tempo, from where each applies: printed metronome marks; else
  tempo words (the movement's title or the score's opening word, and in the instrumental
  works and songs words printed later) through TEMPO_WORDS; else quarter = CHORALE_QPM for
  chorales and TEMPO_WORDS[DEFAULT_WORD] for the rest. A word's bpm is for a quarter-note
  beat: a half-note beat goes at HALF_BEAT x, a dotted-quarter beat (3/8, 6/8, ...) at
  DOTTED_BEAT x that. Encoders' playback-only tempi are ignored (some are a program's
  default). Fermatas and grace notes are ignored; tied notes are merged (stripTies); chords
  give one row per pitch; a unison on one instrument (same times, pitch, code) is one row.
- Instruments: a work's own parts map to MusicNet codes (PIECES, QUARTETS). Renderings: the
  k-th chorale (madrigal) kept, in sorted path order, is played by ensemble
  CHORALE_ENSEMBLES[k % 4] (MADRIGAL_ENSEMBLES[k % 4]); voices go to instruments by part
  name (chorales) or by rank of median pitch, highest first (madrigals).
- Splits, by recording and stratified by (composer, ensemble): in each stratum of at least
  MIN_STRATUM recordings, sorted by id, ~10% go to each of test (the test_labels folder),
  validation and "mt3" test, at evenly spaced positions and at least one each; the rest, and
  smaller strata, are train. The "musicnet" and "mt3" schemes share the validation list.
- Size: label files are gzipped (deterministic: no time stamp, no file name); the folder
  must stay under SIZE_BUDGET.

The output is deterministic: a second run writes byte-identical files.
"""

from __future__ import annotations

import argparse
import collections
import csv
import dataclasses
import gzip
import io
import json
import math
import re
import shutil
import statistics
import sys
import time
import unicodedata
from fractions import Fraction
from pathlib import Path

from music21 import chord, converter, corpus, expressions, meter, note, tempo

LABEL_RATE = 44100
FIRST_ID = 10001
SIZE_BUDGET = 4_500_000  # bytes for the whole output folder; tests require < 5 MiB
LABEL_HEADER = "start_time,end_time,instrument,note,start_beat,end_beat,note_value"
METADATA_COLUMNS = ["id", "composer", "composition", "movement", "ensemble", "source",
                    "transcriber", "catalog_name", "seconds"]
# Chorales and madrigals are sparse (about 6 and 4 notes/s): these counts keep the set at
# MusicNet's ~8 notes/s with the chorales a third of the recordings.
CHORALES_KEPT = 28     # evenly spaced over the usable chorales
MADRIGALS_KEPT = 13    # the densest (notes per second) of the usable madrigals
EXPAND_REPEATS = True  # play repeats, as performances (and so MusicNet's labels) do
MIN_STRATUM = 5        # smaller (composer, ensemble) strata stay in train
PIANO, VIOLIN, VIOLA, CELLO = 1, 41, 42, 43
HORN, OBOE, BASSOON, CLARINET, FLUTE = 61, 69, 71, 72, 74

# Tempo words -> beats per minute of a quarter-note beat; the longest phrase found wins.
TEMPO_WORDS = {
    "grave": 44, "sehr langsam": 44, "largo": 48, "lento": 52, "langsam": 56, "adagio": 60,
    "nicht schnell": 60, "larghetto": 63, "poco adagio": 66, "adagio ma non troppo": 66,
    "andante espressivo": 72, "massig": 72, "andante": 76, "recitativ": 76,
    "andantino": 84, "moderato": 96, "allegretto": 112,
    "tempo di menuetto": 120, "menuetto moderato": 120, "allegro moderato": 120,
    "menuetto": 132, "menuetto allegretto": 132, "allegro": 132, "allegro vivace": 144,
    "allegro assai": 152, "allegro vivace assai": 152, "vivace": 152, "molto allegro": 152,
    "presto": 168, "prestissimo": 192,
}
DEFAULT_WORD = "moderato"
CHORALE_QPM = 80       # chorales: hymn pace, as in earlier versions of the set
HALF_BEAT, DOTTED_BEAT = 0.7, 0.6  # bpm factors for half-note and dotted-quarter beats

NOTE_VALUES = {Fraction(4): "Whole", Fraction(3): "Dotted Half", Fraction(2): "Half",
               Fraction(3, 2): "Dotted Quarter", Fraction(1): "Quarter",
               Fraction(3, 4): "Dotted Eighth", Fraction(1, 2): "Eighth",
               Fraction(1, 4): "Sixteenth", Fraction(1, 8): "Thirty Second"}
TRIPLETS = {Fraction(4, 3), Fraction(2, 3), Fraction(1, 3), Fraction(1, 6)}  # 3:2 tuplets


# ------------------------------------------------------------------------------ sources

@dataclasses.dataclass(frozen=True)
class Piece:
    """One recording: a corpus file and what MusicNet's metadata would say about it."""

    path: str                   # corpus-relative, e.g. "mozart/k80/movement1.mxl"
    composer: str
    composition: str
    movement: str               # its tempo word, if any, sets the opening tempo
    catalog_name: str
    ensemble: str               # "" = a rendering: the ensemble is chosen by rotation
    codes: tuple[int, ...] = ()  # instrument code per part, in score order; () = piano
    kind: str = "work"          # "work" (reads printed tempo words), "chorale", "madrigal"
    tempo_word: str = ""        # overrides the title's tempo word


@dataclasses.dataclass(frozen=True)
class Work:
    composer: str
    composition: str
    catalog_name: str
    movements: tuple[str, ...]  # titles of movement1, movement2, ...
    tempo_words: tuple[str, ...] = ()  # per movement, where the title has none ("" = title)


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
    # The corpus gives the Scherzo's Intermezzo a file of its own; it keeps the Presto.
    "schumann_robert/opus41no1": Work(
        "Schumann", "String Quartet No 1 in A minor", "Op 41 No 1",
        ("1. Introduzione. Andante espressivo - Allegro", "2. Scherzo. Presto",
         "2. Scherzo: Intermezzo", "3. Adagio", "4. Presto"), ("", "", "presto", "", "")),
}
QUARTET_CODES = (VIOLIN, VIOLIN, VIOLA, CELLO)  # Violin I, Violin II, Viola, Cello

PIECES = (
    # Solo Piano: real keyboard music.
    Piece("bach/bwv846.mxl", "Bach", "Well-Tempered Clavier I, No 1 in C major",
          "1. Prelude", "BWV 846", "Solo Piano"),
    Piece("cpebach/h186.mxl", "C.P.E. Bach", "Keyboard Sonata in A major",
          "2. Poco adagio", "H 186, Wq 55/4", "Solo Piano"),
    Piece("chopin/mazurka06-2.krn", "Chopin", "Mazurka in C-sharp minor", "Mazurka",
          "Op 6 No 2", "Solo Piano"),
    Piece("mozart/k545/movement1_exposition.mxl", "Mozart", "Piano Sonata No 16 in C major",
          "1. Allegro (exposition only)", "K 545", "Solo Piano"),
    Piece("joplin/maple_leaf_rag.mxl", "Joplin", "Maple Leaf Rag", "Tempo di marcia",
          "Maple Leaf Rag", "Solo Piano"),
    Piece("schoenberg/opus19/movement2.mxl", "Schoenberg", "Six Little Piano Pieces",
          "2. Langsam", "Op 19", "Solo Piano"),
    Piece("schoenberg/opus19/movement6.mxl", "Schoenberg", "Six Little Piano Pieces",
          "6. Sehr langsam", "Op 19", "Solo Piano"),
    # Solo Piano: hymns for voices, on the piano (renderings).
    Piece("liliuokalani/aloha_oe.mxl", "Liliuokalani", "Aloha Oe", "Song (piano rendering)",
          "Aloha Oe", "Solo Piano"),
    Piece("johnson_j_r/lift_every_voice.mxl", "Johnson", "Lift Every Voice and Sing",
          "Hymn (piano rendering)", "Lift Every Voice", "Solo Piano"),
    # Chamber music.
    Piece("schumann_clara/opus17/movement3.xml", "Clara Schumann", "Piano Trio in G minor",
          "3. Andante", "Op 17", "Piano Trio", (VIOLIN, CELLO, PIANO, PIANO)),
    Piece("weber/concertino_clarinet.mxl", "Weber", "Clarinet Concertino in E-flat major "
          "(piano reduction)", "Concertino", "Op 26", "Accompanied Clarinet",
          (CLARINET, PIANO, PIANO)),
    # Songs: the voice part on a violin, the piano part on the piano.
    Piece("schubert/Lindenbaum.xml", "Schubert", "Winterreise", "5. Der Lindenbaum",
          "D 911", "Accompanied Violin", (VIOLIN, PIANO, PIANO)),
    Piece("schumann_robert/opus48no2.mxl", "Schumann", "Dichterliebe",
          "2. Aus meinen Tranen spriessen", "Op 48", "Accompanied Violin",
          (VIOLIN, PIANO, PIANO)),
    Piece("handel/rinaldo/Lascia_chio_pianga.mxl", "Handel", "Rinaldo",
          "Lascia ch'io pianga", "HWV 7", "Accompanied Violin", (VIOLIN, PIANO, PIANO)),
    # A three-part madrigal, rendered like Monteverdi's.
    Piece("lusitano/allor_che_ignuda.mxl", "Lusitano", "Allor che ignuda", "Madrigal",
          "Allor che ignuda", "", kind="madrigal"),
)

# Renderings: ensemble by rotation (sorted path order), voices by part name or pitch rank.
CHORALE_ENSEMBLES = ("Solo Piano", "Solo Piano", "Wind Quintet", "Solo Piano")
MADRIGAL_ENSEMBLES = ("Solo Piano", "Wind Quintet", "Solo Piano", "Viola Quintet")
VOICES = ("S", "A", "T", "B")
CHORALE_CODES = {  # String Quartet: not in the rotation now (left to the real quartets)
    "String Quartet": {"S": VIOLIN, "A": VIOLIN, "T": VIOLA, "B": CELLO},
    "Solo Piano": {"S": PIANO, "A": PIANO, "T": PIANO, "B": PIANO},
    "Wind Quintet": {"S": FLUTE, "A": OBOE, "T": CLARINET, "B": BASSOON},
}
# Madrigal voices, highest median pitch first; five-part (Monteverdi) and three-part.
# Six parts = Book V's five voices + continuo (the lowest part, doubling the bass).
MADRIGAL_CODES = {
    "Solo Piano": {n: (PIANO,) * n for n in (3, 5, 6)},
    "Wind Quintet": {3: (FLUTE, CLARINET, BASSOON), 5: (FLUTE, OBOE, CLARINET, HORN, BASSOON),
                     6: (FLUTE, OBOE, CLARINET, HORN, BASSOON, BASSOON)},
    "Viola Quintet": {3: (VIOLIN, VIOLA, CELLO), 5: (VIOLIN, VIOLIN, VIOLA, VIOLA, CELLO),
                      6: (VIOLIN, VIOLIN, VIOLA, VIOLA, CELLO, CELLO)},
}
NOT_CHORALES = {"bwv846": "not a chorale (read as keyboard music)"}
MADRIGALS_LEFT_OUT = {
    "monteverdi/madrigal.3.1_old.mxl": "older encoding of madrigal.3.1",
    "monteverdi/madrigal.5.4.mxl": "file carries a publisher's rights mark (Ut Orpheus 2003)",
    "monteverdi/madrigal.5.5.mxl": "file carries a publisher's rights mark (Ut Orpheus 2003)",
}
ROMAN_NUMERALS = {3: "III", 4: "IV", 5: "V"}

CORPUS_ROOT = Path(corpus.__file__).resolve().parent  # music21/corpus


def rel(path: Path) -> str:
    """Corpus-relative path, e.g. "bach/bwv269.mxl"."""
    return path.resolve().relative_to(CORPUS_ROOT).as_posix()


def quartet_pieces() -> list[Piece]:
    """One Piece per movement file of each work in QUARTETS."""
    pieces = []
    for folder, w in QUARTETS.items():
        for p in sorted((CORPUS_ROOT / folder).iterdir()):
            m = re.fullmatch(r"movement(\d+)\.mxl", p.name)
            if m:
                i = int(m.group(1)) - 1
                word = w.tempo_words[i] if w.tempo_words else ""
                pieces.append(Piece(rel(p), w.composer, w.composition, w.movements[i],
                                    w.catalog_name, "String Quartet", QUARTET_CODES,
                                    tempo_word=word))
    return pieces


def chorale_pieces(skipped: list[tuple[str, str]]) -> tuple[list[Piece], int]:
    """(CHORALES_KEPT chorales evenly spaced in sorted path order, how many are usable).

    A chorale encoded in several formats (bwv277.mxl and bwv277.krn) is read once, from the
    first of .mxl, .xml, .krn; the others are recorded in `skipped`.
    """
    preference = {".mxl": 0, ".xml": 1, ".krn": 2}
    by_stem = collections.defaultdict(list)
    for p in corpus.getComposer("bach"):
        if Path(p).name.startswith("bwv") and Path(p).stem not in NOT_CHORALES:
            by_stem[Path(p).stem].append(Path(p))
    chosen = []
    for stem, paths in sorted(by_stem.items()):
        paths.sort(key=lambda p: (preference.get(p.suffix, 9), rel(p)))
        chosen.append(paths[0])
        skipped += [(rel(p), f"same chorale as {rel(paths[0])}") for p in paths[1:]]
    chosen.sort(key=rel)
    keep = [chosen[i * len(chosen) // CHORALES_KEPT] for i in range(CHORALES_KEPT)]
    out = []
    for p in keep:
        bwv = p.stem.removeprefix("bwv")
        out.append(Piece(rel(p), "Bach", f"Chorale BWV {bwv}", "Chorale", f"BWV {bwv}", "",
                         kind="chorale"))
    return out, len(chosen)


def madrigal_pieces(skipped: list[tuple[str, str]]) -> list[Piece]:
    """Every usable Monteverdi madrigal (main() keeps the densest MADRIGALS_KEPT)."""
    out = []
    for p in sorted((CORPUS_ROOT / "monteverdi").glob("madrigal.*.mxl"), key=rel):
        if rel(p) in MADRIGALS_LEFT_OUT:
            skipped.append((rel(p), MADRIGALS_LEFT_OUT[rel(p)]))
            continue
        book, number = map(int, re.fullmatch(r"madrigal\.(\d+)\.(\d+)\.mxl", p.name).groups())
        out.append(Piece(rel(p), "Monteverdi", f"Madrigals, Book {ROMAN_NUMERALS[book]}",
                         f"No {number}", f"Book {book} No {number}", "", kind="madrigal"))
    return out


# ------------------------------------------------------------------------------ tempo

def normalized(text: str) -> str:
    """Lower case, no accents or punctuation: "Mäßig." -> "massig"."""
    text = unicodedata.normalize("NFKD", text.replace("ß", "ss")).lower()
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def title_word(text: str) -> str:
    """The longest TEMPO_WORDS phrase in a title ("" if none)."""
    padded = f" {normalized(text)} "
    found = [w for w in TEMPO_WORDS if f" {w} " in padded]
    return max(found, key=len) if found else ""


def beat_factor(ts) -> float:
    """Quarter notes per beat x the beat's share of a quarter-note beat's bpm."""
    if ts is None:
        return 1.0
    if ts.denominator == 2:
        return 2 * HALF_BEAT
    if ts.denominator == 8 and ts.numerator % 3 == 0:
        return 1.5 * DOTTED_BEAT
    return 1.0


def tempo_changes(score, piece: Piece) -> tuple[list[tuple[float, float]], str]:
    """[(offset in quarter notes, quarter notes per minute)] and how the tempo was found."""
    meters = sorted({(float(t.getOffsetInHierarchy(score)), t.ratioString): t
                     for t in score.parts[0].recurse().getElementsByClass(
                         meter.TimeSignature)}.items())
    meter_at = lambda o: next((t for (off, _), t in reversed(meters) if off <= o), None)
    printed = sorted({float(m.getOffsetInHierarchy(score)): m.getQuarterBPM()
                      for m in score.recurse().getElementsByClass(tempo.MetronomeMark)
                      if m.number is not None and not m.numberImplicit}.items())
    words = []  # (offset, word) printed in the score, whole text a TEMPO_WORDS phrase
    if piece.kind == "work":
        for x in score.recurse().getElementsByClass((expressions.TextExpression,
                                                     tempo.TempoText)):
            text = normalized(x.content if hasattr(x, "content") else x.text)
            if text in TEMPO_WORDS or text in ("tempo i", "tempo primo"):
                words.append((float(x.getOffsetInHierarchy(score)), text))
    words = sorted(set(words))
    # The opening: a printed mark, else a word in the score, the title's or the default.
    opening = [w for o, w in words if o <= 1 and w in TEMPO_WORDS]
    if printed and printed[0][0] <= 1:
        how, first_word = "printed metronome mark", ""
    elif opening:
        how, first_word = "tempo word in the score", opening[0]
    elif piece.tempo_word or title_word(piece.movement):
        how, first_word = "tempo word of the title", piece.tempo_word or title_word(
            piece.movement)
    elif piece.kind == "chorale":
        how, first_word = f"default (chorale, quarter = {CHORALE_QPM})", ""
    else:
        how, first_word = f"default ({DEFAULT_WORD})", DEFAULT_WORD
    if printed:  # printed marks rule; words only fill the gap before the first one
        changes = list(printed)
        if printed[0][0] <= 1:  # a mark over a pickup applies from the start
            changes[0] = (0.0, printed[0][1])
        else:
            qpm = TEMPO_WORDS[first_word] * beat_factor(meter_at(0)) if first_word else \
                CHORALE_QPM
            changes.insert(0, (0.0, qpm))
        return changes, how
    # Words set a beat rate that carries over time-signature changes (beat = new beat);
    # "Tempo I" restores the opening's quarter-note rate.
    bpm0 = TEMPO_WORDS[first_word] if first_word else None
    events = [(0.0, bpm0)] + [(o, TEMPO_WORDS.get(w, "tempo i")) for o, w in words if o > 1]
    events += [(off, None) for (off, _), _ in meters if off > 0]  # None = keep the bpm
    changes, bpm = [], bpm0
    for o, b in sorted(events, key=lambda e: e[0]):
        if b == "tempo i":
            b = bpm0 and bpm0 * beat_factor(meter_at(0)) / beat_factor(meter_at(o))
        bpm = b if b is not None else bpm
        qpm = bpm * beat_factor(meter_at(o)) if bpm is not None else CHORALE_QPM
        changes = [c for c in changes if c[0] != o] + [(o, qpm)]
    return changes, how


def seconds_of(changes: list[tuple[float, float]]):
    """Quarter-note offset -> seconds, for piecewise constant tempi."""
    segments, elapsed = [], 0.0
    for i, (start, qpm) in enumerate(changes):
        end = changes[i + 1][0] if i + 1 < len(changes) else math.inf
        segments.append((start, elapsed, 60.0 / qpm))
        if end < math.inf:
            elapsed += (end - start) * 60.0 / qpm

    def convert(offset: Fraction) -> float:
        offset = float(offset)
        start, before, spq = next((s for s in reversed(segments) if s[0] <= offset),
                                  segments[0])
        return before + (offset - start) * spq
    return convert


# ------------------------------------------------------------------------------ conversion

@dataclasses.dataclass
class Note:
    start: int         # samples at 44.1 kHz
    end: int
    pitch: int
    start_beat: Fraction
    length: Fraction   # quarter notes


@dataclasses.dataclass
class Score:
    """One parsed recording: its parts' notes, before instruments are assigned."""

    piece: Piece
    parts: list[tuple[str, list[Note]]]  # (role or part name, notes), in score order
    tempo_how: str
    timpani_dropped: int = 0   # timpani parts left out (chorales)
    ensemble: str = ""
    repeats: str = ""          # how repeats were treated
    id: int = 0
    text: str = ""             # the rendered label CSV

    @property
    def path(self) -> str:
        return self.piece.path


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


def performed(score):
    """The score with its repeats played (music21's expandRepeats), when that is sound."""
    try:
        expanded = score.expandRepeats()
    except Exception:  # pylint: disable=broad-except
        return score, "as written (music21 cannot expand its repeats)"
    ratio = float(expanded.highestTime) / max(float(score.highestTime), 1e-9)
    if ratio > 2:  # more than every bar twice: a malformed expansion
        return score, "as written (expansion implausible)"
    return expanded, "expanded" if ratio > 1 else "no repeats"


def parse(piece: Piece, skipped: list[tuple[str, str]]) -> Score | None:
    """Parses one corpus file into a Score, or returns None (and says why in `skipped`)."""
    try:
        score = converter.parseFile(CORPUS_ROOT / piece.path, forceSource=True,
                                    storePickle=False)
    except Exception as e:  # pylint: disable=broad-except
        skipped.append((piece.path, f"does not parse ({type(e).__name__}: {e})"))
        return None
    score = score.toSoundingPitch()  # e.g. the B-flat clarinet is written a tone higher
    score, repeats = performed(score) if EXPAND_REPEATS else (score, "as written")
    changes, how = tempo_changes(score, piece)
    seconds = seconds_of(changes)
    parts, dropped = [], 0
    for part in score.parts:
        name = (part.partName or "").replace("\r", " ").strip()
        if piece.kind == "chorale" and "timpani" in name.lower():
            dropped += 1
            continue
        parts.append((name, part_notes(part, seconds)))
    if not any(notes for _, notes in parts):
        skipped.append((piece.path, "no notes"))
        return None
    if piece.codes and len(parts) != len(piece.codes):
        skipped.append((piece.path, f"{len(parts)} parts, expected {len(piece.codes)}"))
        return None
    if piece.kind == "madrigal" and len(parts) not in MADRIGAL_CODES["Solo Piano"]:
        skipped.append((piece.path, f"{len(parts)} parts, expected 3, 5 or 6"))
        return None
    if piece.kind == "chorale":
        parts = [(r, notes) for r, (_, notes) in zip(chorale_roles(parts), parts)]
    return Score(piece, parts, how, dropped, piece.ensemble, repeats=repeats)


def instruments(score: Score) -> list[int]:
    """MusicNet instrument code for each of the score's parts."""
    kind, parts = score.piece.kind, score.parts
    if kind == "madrigal":  # voices by rank of median pitch, highest first
        order = sorted(range(len(parts)), key=lambda i: (-median_pitch(parts[i][1]), i))
        table = MADRIGAL_CODES[score.ensemble][len(parts)]
        codes = [0] * len(parts)
        for rank, i in enumerate(order):
            codes[i] = table[rank]
        return codes
    if kind != "chorale":
        return list(score.piece.codes) or [PIANO] * len(parts)
    table = CHORALE_CODES[score.ensemble]
    voice_pitch = {role: median_pitch(notes) for role, notes in parts if role in VOICES}
    codes = []
    for role, notes in parts:
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


def raw_density(score: Score) -> float:
    """Notes per second before instruments are assigned (to choose madrigals)."""
    return sum(len(notes) for _, notes in score.parts) * LABEL_RATE / last_end(score)


def num_notes(score: Score) -> int:
    """Rows written (after unisons on one instrument are merged)."""
    return score.text.count("\n") - 1


# ------------------------------------------------------------------------------ selection, splits

def assign(scores: list[Score]) -> list[Score]:
    """Ensembles of the renderings (rotation per kind), ids and label text."""
    scores = sorted(scores, key=lambda s: s.path)
    for kind, rotation in (("chorale", CHORALE_ENSEMBLES), ("madrigal", MADRIGAL_ENSEMBLES)):
        for k, s in enumerate(s for s in scores if s.piece.kind == kind):
            s.ensemble = rotation[k % len(rotation)]
    for i, s in enumerate(scores):
        s.id = FIRST_ID + i
        s.text = render(s)
    return scores


def make_splits(scores: list[Score]) -> dict[int, str]:
    """id -> "train" / "test" (the test folder) / "validation" / "mt3_test"."""
    strata = collections.defaultdict(list)
    for s in scores:
        strata[(s.piece.composer, s.ensemble)].append(s.id)
    split = {}
    for ids in strata.values():
        ids.sort()
        for i in ids:
            split[i] = "train"
        if len(ids) < MIN_STRATUM:  # too few to hold out three and still train on some
            continue
        picks = 3 * max(1, round(len(ids) / 10))
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
        p = s.piece
        writer.writerow([s.id, p.composer, p.composition, p.movement, s.ensemble,
                         "music21 corpus", "music21", p.catalog_name,
                         math.ceil(last_end(s) / LABEL_RATE)])
    return buf.getvalue()


def marker_json(split: dict[int, str]) -> str:
    ids = {name: sorted(i for i, s in split.items() if s == name)
           for name in ("validation", "mt3_test")}
    marker = {
        "name": "musicflax-sample",
        "version": "2.0.0",
        "audio": "synthesized",
        "description": ("Public-domain scores from music21's corpus (keyboard music, string "
                        "quartets and other chamber music; madrigals, hymns and a minority "
                        "of Bach chorales rendered for MusicNet's ensembles) in the MusicNet "
                        "label layout; audio is synthesized from the labels. Built by "
                        "scripts/build_sample_set.py."),
        "splits": {"musicnet": {"validation": ids["validation"]},
                   "mt3": {"validation": ids["validation"], "test": ids["mt3_test"]}},
    }
    return json.dumps(marker, indent=2) + "\n"


def gzipped(text: str) -> bytes:
    """Deterministic gzip: no time stamp, no file name, fixed level."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(text.encode())
    return buf.getvalue()


def source_group(s: Score) -> str:
    p = s.piece
    if p.kind == "chorale":
        return "Bach chorales (renderings)"
    if p.kind == "madrigal":
        return "madrigals (renderings)"
    if "rendering" in p.movement:
        return "hymns (piano renderings)"
    if s.ensemble == "Solo Piano":
        return "keyboard music"
    if s.ensemble == "String Quartet":
        return "string quartets"
    return "other chamber music and songs"


def density_line(name: str, scores: list[Score]) -> str:
    notes = sum(num_notes(s) for s in scores)
    secs = sum(last_end(s) for s in scores) / LABEL_RATE
    return (f"{name}: {len(scores)} recordings, {notes} notes, {secs / 60:.1f} min, "
            f"{notes / secs:.2f} notes/s")


def summary(scores, split, skipped, usable_chorales, usable_madrigals) -> list[str]:
    """The numbers, as lines, for the console and the README."""
    folder = {i: ("test" if s == "test" else "train") for i, s in split.items()}
    lines = [f"recordings: {len(scores)} ({sum(f == 'train' for f in folder.values())} in "
             f"train_labels, {sum(f == 'test' for f in folder.values())} in test_labels)"]
    schemes = (("musicnet", {"test": "test", "validation": "validation"}),
               ("mt3", {"mt3_test": "test", "validation": "validation"}))
    for scheme, names in schemes:
        count = collections.Counter(names.get(split[s.id], "train") for s in scores)
        lines.append(f"{scheme} scheme: train {count['train']}, validation "
                     f"{count['validation']}, test {count['test']}")
    for key in ("composer", "ensemble"):
        table = collections.defaultdict(collections.Counter)
        for s in scores:
            table[s.piece.composer if key == "composer" else s.ensemble][split[s.id]] += 1
        for value, c in sorted(table.items()):
            lines.append(f"{key} {value}: {sum(c.values())} recordings ({c['test']} in "
                         f"test_labels, {c['validation']} validation, {c['mt3_test']} mt3 "
                         f"test, {c['train']} in no list)")
    for scheme, names in schemes:
        by = collections.defaultdict(set)
        for s in scores:
            by[names.get(split[s.id], "train")].add(s.piece.composer)
        lines.append(f"{scheme} scheme composers: " + "; ".join(
            f"{name} {', '.join(sorted(by[name]))}" for name in ("train", "validation", "test")))
    chorales = sum(s.piece.kind == "chorale" for s in scores)
    lines.append(f"chorales: {chorales} of {len(scores)} recordings "
                 f"({100 * chorales / len(scores):.0f}%), evenly spaced over "
                 f"{usable_chorales} usable")
    lines.append(f"madrigals: {sum(s.piece.kind == 'madrigal' for s in scores)} kept of "
                 f"{usable_madrigals} usable (the most notes per second)")
    lines.append(density_line("all", scores).replace("all: ", "total: "))
    hours = sum(last_end(s) for s in scores) / LABEL_RATE / 3600
    lines.append(f"hours: {hours:.2f}")
    groups = collections.defaultdict(list)
    for s in scores:
        groups[source_group(s)].append(s)
    lines += [density_line(f"  {g}", groups[g]) for g in sorted(groups)]
    ensembles = collections.defaultdict(list)
    for s in scores:
        ensembles[s.ensemble].append(s)
    lines += [density_line(f"  ensemble {e}", ensembles[e]) for e in sorted(ensembles)]
    repeats = collections.Counter(s.repeats for s in scores)
    lines.append("repeats: " + "; ".join(f"{h} {n}" for h, n in sorted(repeats.items())))
    how = collections.Counter(s.tempo_how for s in scores)
    lines.append("opening tempo from: " + "; ".join(f"{h} {n}" for h, n in sorted(how.items())))
    lines.append(f"timpani parts dropped: {sum(s.timpani_dropped for s in scores)} (in "
                 f"{sum(s.timpani_dropped > 0 for s in scores)} chorales)")
    lines.append(f"files skipped: {len(skipped)}" +
                 "".join(f"\n  {path}: {why}" for path, why in skipped))
    return lines


README = """# musicflax sample set

A small stand-in for [MusicNet](https://zenodo.org/records/5120004) that can ship with the code:
exactly its layout (`musicnet_metadata.csv`, `musicnet/{{train,test}}_labels/<id>.csv.gz`:
MusicNet's label CSVs, gzipped; the same columns, instrument codes and ensemble names) but
**no audio**. `musicflax_sample_set.json` marks the folder as such (the data code synthesizes
audio from the labels) and carries the split lists. Ids start at {first_id}, clear of
MusicNet's (1727..2678).

## What is in it

MusicNet is about half solo piano, then string quartets and other chamber music, at about
8 notes per second. This set follows that mix as far as music21's corpus allows (numbers
below): real keyboard music and real chamber music (string quartets, a piano trio, a
clarinet piece with piano, songs with the voice on a violin) first; then **renderings**,
vocal part-music given to MusicNet's ensembles: the densest of Monteverdi's madrigals, two
hymns on the piano, and a minority of Bach's chorales (a third of the recordings). A
rendering keeps the composer's notes and only chooses the instruments; the metadata shows
which recordings are renderings ("Chorale BWV ...", "Madrigals, Book ...", "... (piano
rendering)"). The corpus has too little dense instrumental music for a bigger set: every
madrigal or chorale added beyond these pulls the note density below MusicNet's, and
Beethoven, its largest store of chamber music, stays out (below).

## Where it comes from

Scores from the corpus bundled with [music21](https://github.com/cuthbertLab/music21) 10.5.1,
read offline, one recording per corpus file:

- keyboard music (Solo Piano): Bach, Well-Tempered Clavier I, Prelude in C major (BWV 846);
  C.P.E. Bach, Sonata in A major Wq 55/4, Poco adagio; Chopin, Mazurka Op 6 No 2; Mozart,
  Sonata K 545, first movement, **exposition only** (all the corpus holds; named so in the
  metadata); Joplin, Maple Leaf Rag; Schoenberg, Op 19 Nos 2 and 6 (published 1913: public
  domain in the US, and where copyright runs 70 years after the author's death, since 2022);
- string quartets: Haydn Op 1 No 1 and Op 74 No 1, Mozart K 80, 155, 156 and 458, Robert
  Schumann Op 41 No 1 (the corpus gives the Scherzo's Intermezzo a file of its own);
- other chamber music: Clara Schumann, Piano Trio Op 17, third movement (Piano Trio); Weber,
  Clarinet Concertino Op 26 in a piano reduction dedicated to the public domain by its
  arranger (Accompanied Clarinet); songs with the voice part on a violin (Accompanied
  Violin): Schubert's Der Lindenbaum, Schumann's Dichterliebe No 2, Handel's Lascia ch'io
  pianga (its da capo played);
- renderings: Monteverdi's madrigals (Books 3-5; the {madrigals} with the most notes per
  second; Lusitano's three-part madrigal is a candidate too), Liliuokalani's Aloha Oe and
  J. Rosamond Johnson's Lift Every Voice and Sing (on the piano), and {chorales} of Bach's
  chorales (`bach/bwv*`, evenly spaced in path order; a chorale present in two formats is
  read once, from the .mxl).

Left out: **all of Beethoven** (his string quartets in the corpus are kept as unseen test
material), and every encoding whose file states licence terms, so that nothing here carries
any: Palestrina's masses and CCARH's kern files ("rights to all derivative electronic formats
reserved"), share-alike or copyleft encodings (Clara Schumann's polonaises Op 1, CC BY-SA;
Webern's Dormi Jesu, Beach, Ciconia and da Firenze, CC BY-SA; Josquin, GPL), Monteverdi's
Book 5 Nos 4 and 5 (a publisher's rights mark); also Corelli's Op 3 No 1 Grave (CC BY: one
slow movement, not worth an attribution clause), Verdi's La donna e mobile (a modern
adaptation) and the folk-song, trecento and exercise collections.

The compositions are in the public domain, and only note events (times, pitches, durations)
are kept, no engraving or text. The music21 corpus is distributed with the encoders'
permission (the chorale encodings credit Margaret Greentree, jsbchorales.net); its licence
(`music21/corpus/license.txt`) says the music21 creators assume no copyright or change in
licensing for the corpus, and that some encodings may carry restrictions stated in the files
themselves: the files used here state none, or dedicate the encoding to the public domain
(Weber, Liliuokalani, Johnson: "CC0" / "assigned to the public domain"). The metadata says
`source` = `music21 corpus`, `transcriber` = `music21`.

## Rebuild

    pip install music21==10.5.1   # or: pip install -e .[sampleset]
    python scripts/build_sample_set.py --out musicflax/data/sample_set

The build is deterministic: a rebuild writes byte-identical files (label files are gzipped
with no time stamp and no file name).

## Rules

- **Labels**: one row per note, sorted by (start_time, note, instrument); times are sample
  indices at 44.1 kHz. `start_beat` is the onset and `end_beat` the note's *length* (MusicNet's
  naming), both in quarter notes of the performed score (repeats played). Tied notes are
  merged; a chord gives one row per pitch, with one start_time; rests, grace notes and
  timpani give nothing. Two parts playing the same pitch at the same times on the same
  instrument code (e.g. S and A on one piano key) give one row. `note_value` is Whole,
  Dotted Half, Half, Dotted Quarter, Quarter, Dotted Eighth, Eighth, Sixteenth, Thirty
  Second, Triplet (a 3:2 tuplet: 4/3, 2/3, 1/3 or 1/6 of a quarter) or Unknown.
- **Repeats** are played, as in a performance: music21 expands repeat bars and da capo /
  dal segno marks. Where it cannot, or its result would be more than twice the written
  length (a malformed expansion), the score is read as written (how many, below).
- **Tempo**, from where each applies: (1) printed metronome marks; else (2) tempo words: the
  movement's title (or the score's own word at its start) and, in the instrumental works and
  songs, tempo words printed later in the score ("Allegro", "Moderato", "Tempo I"); else
  (3) quarter = {qpm} for chorales, "moderato" for everything else (the madrigals among
  them). Encoders' playback-only tempi are ignored (several are a notation program's
  default). A word's value is beats per minute for a quarter-note beat; a half-note beat
  (2/2, 3/2) goes at {half} x that, a dotted-quarter beat (3/8, 6/8, 9/8, 12/8) at {dotted} x
  (so Presto is quarter = 168 in 2/4, dotted quarter = 101 in 6/8). Words are compared
  without accents or punctuation; the longest phrase found in a title wins. Words and
  values (bpm of a quarter-note beat):

{words}

  Fermatas and ritardandi are ignored. `seconds` in the metadata is the last note's end,
  rounded up.
- **Instruments** (MusicNet's 1-based General MIDI codes): a work's own parts keep their
  instruments (Violin I/II, Viola, Cello -> 41, 41, 42, 43; piano -> 1; clarinet -> 72); a
  song's voice -> 41 Violin. Renderings: the k-th kept chorale (madrigal), in sorted path
  order, is played by ensemble k mod {nchor} of
      chorales:  {chorale_ensembles}
      madrigals: {madrigal_ensembles}
  Chorale voices are found by part name (Soprano/Alto/Tenor/Bass), else by ranking the
  parts by median pitch: Wind Quintet S, A, T, B -> 74 Flute, 69 Oboe, 72 Clarinet,
  71 Bassoon, extra parts (doublings, obbligati, continuo) -> 61 Horn; Solo Piano: all
  parts -> 1. (The String Quartet is left to Haydn's, Mozart's and Schumann's quartets.)
  Madrigal voices, ranked by median pitch from the top: Wind Quintet
  -> 74, 69, 72, 61, 71; Viola Quintet -> 41, 41, 42, 42, 43; a continuo part (Book 5) is
  the lowest and doubles the bass (71 / 43). Timpani parts are dropped.
- **Splits** (by recording): recordings are grouped by (composer, ensemble); in each group of
  at least {min_stratum}, sorted by id, about 10% (at least one) go to each of: the
  `test_labels` folder (the "musicnet" scheme's test split, like MusicNet's test folder), the
  validation list, and the "mt3" scheme's test list, at evenly spaced positions; the rest
  are in no list. Smaller groups (a single song, a piano piece, a few renderings) are train
  only: held out, they would leave nothing of their kind to train on. The validation list
  is shared by both schemes (as this code's default MusicNet validation list is MT3's); both
  mt3 lists come from `train_labels`.
- **Size**: the folder must stay under {budget_mb} MB.

## Contents

{summary}
"""


def words_table() -> str:
    """TEMPO_WORDS as indented lines for the README, slowest first."""
    items = sorted(TEMPO_WORDS.items(), key=lambda kv: (kv[1], kv[0]))
    cells = [f"{w} {b}" for w, b in items]
    lines, line = [], "   "
    for cell in cells:
        if len(line) + len(cell) + 2 > 92:
            lines.append(line)
            line = "   "
        line += f" {cell},"
    return "\n".join(lines + [line.rstrip(",")])


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
        (out / "musicnet" / folder / f"{s.id}.csv.gz").write_bytes(gzipped(s.text))
    (out / "musicnet_metadata.csv").write_bytes(metadata_csv(scores).encode())
    (out / "musicflax_sample_set.json").write_bytes(marker_json(split).encode())
    (out / "README.md").write_bytes(readme.encode())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    started = time.time()

    skipped: list[tuple[str, str]] = []
    chorales, usable_chorales = chorale_pieces(skipped)
    pieces = list(PIECES) + quartet_pieces() + madrigal_pieces(skipped) + chorales
    print(f"parsing {len(pieces)} scores", flush=True)
    scores = [s for p in sorted(pieces, key=lambda p: p.path) if (s := parse(p, skipped))]
    madrigals = sorted((s for s in scores if s.piece.kind == "madrigal"),
                       key=lambda s: (-raw_density(s), s.path))
    scores = assign([s for s in scores if s not in madrigals[MADRIGALS_KEPT:]])
    split = make_splits(scores)
    lines = summary(scores, split, sorted(skipped), usable_chorales, len(madrigals))
    readme = README.format(
        first_id=FIRST_ID, qpm=CHORALE_QPM, half=HALF_BEAT, dotted=DOTTED_BEAT,
        words=words_table(), chorales=CHORALES_KEPT, madrigals=MADRIGALS_KEPT,
        nchor=len(CHORALE_ENSEMBLES), chorale_ensembles=", ".join(CHORALE_ENSEMBLES),
        madrigal_ensembles=", ".join(MADRIGAL_ENSEMBLES), min_stratum=MIN_STRATUM,
        budget_mb=SIZE_BUDGET / 1e6, summary="\n".join(
            f"    {row}" for line in lines for row in line.split("\n")))
    size = sum(len(gzipped(s.text)) for s in scores) + len(metadata_csv(scores)) + \
        len(readme) + len(marker_json(split))
    if size > SIZE_BUDGET:
        raise SystemExit(f"the set would take {size} bytes, over SIZE_BUDGET {SIZE_BUDGET}")
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out, scores, split, readme)
    for line in lines:
        print(line)
    print(f"size on disk: {folder_size(args.out) / 1e6:.2f} MB ({folder_size(args.out)} bytes) "
          f"in {args.out}; took {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
