"""Train / validation / test splits of a MusicNet-format source: by recording, never by window.

`data.split_scheme` chooses the rule:
- "musicnet" (default): test = MusicNet's own test folder (10 recordings); validation = the 15
  train-folder recordings MT3 validates on (they span composers and ensembles, and reusing
  them keeps numbers comparable); train = every other train-folder recording.
- "mt3": MT3's validation and test lists (15 + 15 train-folder ids); train = the rest,
  MusicNet's test folder included (as MT3 does: it re-splits the whole set).
- "hash": for any other folder: test = its test_labels folder (or, without one, a
  `test_fraction` of the recordings); validation = a `validation_fraction` of the train
  recordings; a fraction is the recordings with the smallest sha256 of "musicflax-split/<id>",
  so the choice depends on the ids alone.
- "lists": `data.split_lists`, a JSON file ({"validation": [ids], "test": [ids]}, optionally
  "train"), a CSV file of `id,split` rows, or inline text "validation=1,2;test=3".
  Unlisted recordings train, unless a train list is given: then they are left out.

The shipped sample set has its own ids, so its marker file carries the lists for the
"musicnet" and "mt3" schemes; its "musicnet" test split is its test folder, as for the real
data.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Mapping, Sequence

from musicflax.data import musicnet

SCHEMES = ("musicnet", "mt3", "hash", "lists")
SPLITS = ("train", "validation", "test")

MUSICNET_TEST = (1759, 1819, 2106, 2191, 2298, 2303, 2382, 2416, 2556, 2628)
MT3_VALIDATION = (1733, 1765, 1790, 1818, 2160, 2198, 2289, 2300, 2308, 2315, 2336, 2466,
                  2477, 2504, 2611)
MT3_TEST = (1729, 1776, 1813, 1893, 2118, 2186, 2296, 2431, 2432, 2487, 2497, 2501, 2507,
            2537, 2621)
HOW_TO_CHOOSE = ("choose a split rule for this source: --config.data.split_scheme=hash (test "
                 "= its test_labels folder, validation = a fraction of the train recordings "
                 "by a hash of the id) or --config.data.split_scheme=lists "
                 "--config.data.split_lists=FILE.json|FILE.csv|'validation=ID,...;test=ID,...'")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SplitSpec:
    """A split rule as the data config gives it."""

    scheme: str = "musicnet"
    lists: str = ""                   # the "lists" scheme: file path or inline text
    validation_fraction: float = 0.1  # the "hash" scheme
    test_fraction: float = 0.1        # the "hash" scheme, for a source without a test folder

    @classmethod
    def from_config(cls, cfg) -> "SplitSpec":
        return cls(cfg.split_scheme, cfg.get("split_lists", ""),
                   float(cfg.get("validation_fraction", 0.1)),
                   float(cfg.get("test_fraction", 0.1)))

    def check(self) -> None:
        if self.scheme not in SCHEMES:
            raise musicnet.DataError(f"unknown data.split_scheme {self.scheme!r}; choose one "
                                     f"of {', '.join(SCHEMES)}")
        if self.scheme == "lists" and not self.lists:
            raise musicnet.DataError("data.split_scheme=lists needs data.split_lists (a JSON "
                                     "or CSV file, or 'validation=ID,...;test=ID,...')")
        if self.scheme != "lists" and self.lists:
            raise musicnet.DataError(f"data.split_lists is given but data.split_scheme is "
                                     f"{self.scheme!r}; set data.split_scheme=lists to use it")
        for name in ("validation_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise musicnet.DataError(f"data.{name} must be in (0, 1), got "
                                         f"{getattr(self, name)}")

    def identity(self) -> dict:
        """What decides the assignment, for the dataset's fingerprint (a list file by its
        parsed contents, so editing it makes a new dataset)."""
        self.check()
        out = {"scheme": self.scheme}
        if self.scheme == "lists":
            out["lists"] = {k: sorted(v) for k, v in sorted(parse_lists(self.lists).items())}
        if self.scheme == "hash":
            out.update(validation_fraction=self.validation_fraction,
                       test_fraction=self.test_fraction)
        return out


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Recordings per split, the rule in words, and the recordings in no split."""

    by_split: Mapping[str, list[musicnet.Recording]]
    rule: str
    left_out: tuple[int, ...] = ()

    @property
    def ids(self) -> dict[str, list[int]]:
        return {name: [r.id for r in recs] for name, recs in self.by_split.items()}


def _ids(values, where: str) -> set[int]:
    try:
        return {int(v) for v in values}
    except (TypeError, ValueError):
        raise musicnet.DataError(f"{where}: recording ids must be integers") from None


def parse_lists(text: str) -> dict[str, set[int]]:
    """Split lists from a JSON file, a CSV file of `id,split`, or 'validation=1,2;test=3'."""
    path = Path(text).expanduser()
    lists: dict[str, set[int]] = {}
    if path.suffix.lower() in (".json", ".csv"):
        if not path.is_file():
            raise musicnet.MusicNetFormatError(path, "split list file not found")
        raw = path.read_text(encoding="utf-8-sig")
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as e:
                raise musicnet.MusicNetFormatError(path, f"invalid JSON ({e})") from None
            if not isinstance(data, dict):
                raise musicnet.MusicNetFormatError(path, "expected an object of split -> ids")
            lists = {str(k).strip(): _ids(v, str(path)) for k, v in data.items()}
        else:
            for line, row in enumerate(csv.reader(io.StringIO(raw)), start=1):
                if not row or not "".join(row).strip():
                    continue
                if line == 1 and not row[0].strip().isdigit():
                    continue  # a header
                if len(row) < 2 or not row[0].strip().isdigit():
                    raise musicnet.MusicNetFormatError(path, "expected rows 'id,split'", line)
                lists.setdefault(row[1].strip(), set()).add(int(row[0]))
    else:
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, sep, values = part.partition("=")
            if not sep:
                raise musicnet.DataError(f"data.split_lists {text!r}: expected a .json/.csv "
                                         "file or 'validation=ID,...;test=ID,...'")
            lists[name.strip()] = _ids(filter(None, (v.strip() for v in values.split(","))),
                                       "data.split_lists")
    unknown = set(lists) - set(SPLITS)
    if unknown:
        raise musicnet.DataError(f"split lists {text!r} name unknown splits {sorted(unknown)} "
                                 f"(use {', '.join(SPLITS)})")
    for a in SPLITS:
        for b in SPLITS[SPLITS.index(a) + 1:]:
            both = lists.get(a, set()) & lists.get(b, set())
            if both:
                raise musicnet.DataError(f"split lists {text!r} put recordings {sorted(both)[:10]}"
                                         f" in both {a} and {b}")
    return lists


def _hash_rank(rec_id: int) -> str:
    return hashlib.sha256(f"musicflax-split/{rec_id}".encode()).hexdigest()


def _fraction(recordings: list[musicnet.Recording], fraction: float) -> set[int]:
    """The round(fraction * n) (at least one) recordings with the smallest id hash."""
    count = max(1, round(fraction * len(recordings)))
    return {r.id for r in sorted(recordings, key=lambda r: _hash_rank(r.id))[:count]}


def _short(ids) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:15])) + (f", ... ({len(ids)} in all)" if len(ids) > 15 else "")


def _named_lists(spec: SplitSpec, sample_set: Mapping | None
                 ) -> tuple[set[int], set[int] | None, str]:
    """(validation ids, test ids or None for 'the test folder', rule) of musicnet / mt3."""
    if sample_set is not None:
        lists = sample_set.get("splits", {}).get(spec.scheme, {})
        validation = set(lists.get("validation", ()))
        test = set(lists["test"]) if "test" in lists else None
        source = "the sample set's lists"
    elif spec.scheme == "musicnet":
        validation, test, source = set(MT3_VALIDATION), None, "MT3's 15 validation ids"
    else:
        validation, test, source = set(MT3_VALIDATION), set(MT3_TEST), "MT3's lists"
    if spec.scheme == "mt3" and test is None:
        raise musicnet.DataError("the mt3 scheme needs an explicit test list")
    if test is None:
        rule = (f"musicnet: test = the test_labels folder; validation = {source}; "
                "train = the other train_labels recordings")
    else:
        rule = f"mt3: validation and test = {source}; train = every other recording"
    return validation, test, rule


def assign(recordings: Sequence[musicnet.Recording], spec: SplitSpec | str = "musicnet",
           sample_set: Mapping | None = None, where: str = "source") -> Assignment:
    """Assigns every recording to at most one split (exactly one unless lists leave it out).

    Raises a one-line error when a split comes out empty, saying which ids the scheme looked
    for and how to choose another rule.
    """
    spec = SplitSpec(spec) if isinstance(spec, str) else spec
    spec.check()
    recordings = sorted(recordings, key=lambda r: r.id)
    present = {r.id for r in recordings}
    test_folder = {r.id for r in recordings if r.folder == "test"}
    left_out: set[int] = set()
    wanted: dict[str, set[int]] = {}
    if spec.scheme in ("musicnet", "mt3"):
        validation, test, rule = _named_lists(spec, sample_set)
        test = test_folder if test is None else test
        wanted = {"validation": validation, "test": test}
    elif spec.scheme == "hash":
        if test_folder:
            test, test_rule = test_folder, "test = the test_labels folder"
        else:
            test = _fraction(recordings, spec.test_fraction)
            test_rule = (f"test = {spec.test_fraction:g} of the recordings ({len(test)}) with "
                         "the smallest sha256('musicflax-split/<id>')")
        rest = [r for r in recordings if r.id not in test]
        validation = _fraction(rest, spec.validation_fraction) if len(rest) > 1 else set()
        rule = (f"hash: {test_rule}; validation = {spec.validation_fraction:g} of the other "
                f"recordings ({len(validation)}) with the smallest sha256('musicflax-split/<id>');"
                " train = the rest")
        wanted = {"validation": validation, "test": test}
    else:
        lists = parse_lists(spec.lists)
        wanted = {k: lists.get(k, set()) for k in ("validation", "test")}
        rule = f"lists: {spec.lists}"
        if "train" in lists:
            left_out = present - set().union(*lists.values())
            rule += "; recordings in no list are left out"
        else:
            rule += "; train = every unlisted recording"
    out: dict[str, list[musicnet.Recording]] = {s: [] for s in SPLITS}
    for rec in recordings:
        if rec.id in left_out:
            continue
        split = next((s for s in ("test", "validation") if rec.id in wanted[s]), "train")
        out[split].append(rec)
    for name in SPLITS:
        if not out[name]:
            looked_for = wanted.get(name)
            what = (f"none of its {name} ids ({_short(looked_for)}) is in it" if looked_for
                    else f"it gives no {name} recording")
            if spec.scheme == "musicnet" and name == "test" and not test_folder:
                what = "it has no test_labels folder (MusicNet's test split)"
            raise musicnet.MusicNetFormatError(
                where, f"split {name!r} is empty under the {spec.scheme} scheme: {what}; "
                + HOW_TO_CHOOSE)
    for name, ids in wanted.items():
        absent = sorted(ids - present)
        if absent:
            log.warning("the %s scheme's %s list names %d recordings that are not in the "
                        "data: %s", spec.scheme, name, len(absent), _short(absent))
    if left_out:
        log.warning("%d recordings are in no split list and are left out: %s", len(left_out),
                    _short(left_out))
    return Assignment(out, rule, tuple(sorted(left_out)))
