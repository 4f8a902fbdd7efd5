"""Train / validation / test splits of MusicNet, always by recording, never by window.

Two schemes:
- "musicnet" (default): test = MusicNet's own test folder (10 recordings); validation = the
  15 train-folder recordings MT3 uses for validation (they span composers and ensembles, and
  reusing them keeps numbers comparable); train = every other train-folder recording.
- "mt3": MT3's validation and test lists (15 + 15 train-folder ids); train = the rest,
  MusicNet's test folder included (as MT3 does: it re-splits the whole set).

The shipped sample set has its own ids, so its marker file carries the lists for both
schemes; its "musicnet" test split is its test folder, as for the real data.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

from musicflax.data import musicnet

SCHEMES = ("musicnet", "mt3")
SPLITS = ("train", "validation", "test")

MUSICNET_TEST = (1759, 1819, 2106, 2191, 2298, 2303, 2382, 2416, 2556, 2628)
MT3_VALIDATION = (1733, 1765, 1790, 1818, 2160, 2198, 2289, 2300, 2308, 2315, 2336, 2466,
                  2477, 2504, 2611)
MT3_TEST = (1729, 1776, 1813, 1893, 2118, 2186, 2296, 2431, 2432, 2487, 2497, 2501, 2507,
            2537, 2621)

log = logging.getLogger(__name__)


def _lists(scheme: str, sample_set: Mapping | None) -> tuple[set[int], set[int] | None]:
    """(validation ids, test ids or None for 'the test folder') for a scheme."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown split scheme {scheme!r}; choose one of {SCHEMES}")
    if sample_set is not None:
        lists = sample_set.get("splits", {}).get(scheme, {})
        validation = set(lists.get("validation", ()))
        test = set(lists["test"]) if "test" in lists else None
    elif scheme == "musicnet":
        validation, test = set(MT3_VALIDATION), None
    else:
        validation, test = set(MT3_VALIDATION), set(MT3_TEST)
    if scheme == "mt3" and test is None:
        raise ValueError("the mt3 scheme needs an explicit test list")
    return validation, test


def assign(recordings: Sequence[musicnet.Recording], scheme: str = "musicnet",
           sample_set: Mapping | None = None) -> dict[str, list[musicnet.Recording]]:
    """Assigns every recording to exactly one split."""
    validation, test = _lists(scheme, sample_set)
    out: dict[str, list[musicnet.Recording]] = {s: [] for s in SPLITS}
    for rec in sorted(recordings, key=lambda r: r.id):
        if test is None and rec.folder == "test":
            out["test"].append(rec)
        elif test is not None and rec.id in test:
            out["test"].append(rec)
        elif rec.id in validation:
            out["validation"].append(rec)
        else:
            out["train"].append(rec)
    present = {r.id for r in recordings}
    absent = sorted((validation | (test or set())) - present)
    if absent:
        log.warning("split lists name %d recordings that are not in the data: %s",
                    len(absent), absent[:10])
    return out
