"""Builds the TFDS dataset for a config (if needed) and prints a summary of its windows.

    python -m musicflax.prepare --config=configs/default.py
    python -m musicflax.prepare --config=configs/default.py --config.data.source=/data/musicnet

With real MusicNet, `data.source` is the folder holding the extracted archive (or
musicnet.tar.gz itself) and musicnet_metadata.csv; any folder in that layout works (choose its
split rule with data.split_scheme: musicnet, mt3, hash or lists).
"""

from __future__ import annotations

import collections

from absl import flags
from ml_collections import config_flags

from musicflax import app
from musicflax.data import input_pipeline, splits

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.mark_flags_as_required(["config"])


def _ids_text(ids) -> str:
    """Ids as wrapped lines of text (all of them: the summary is the record of the split)."""
    words = [str(i) for i in ids]
    return "\n".join("    " + " ".join(words[i:i + 16]) for i in range(0, len(words), 16))


def summarize(cfg) -> str:
    """A human-readable table: recordings, hours, notes and windows per split, the split rule
    and every id of every split."""
    builder = input_pipeline.get_builder(cfg.data)
    meta = builder.info.metadata
    lines = [f"dataset  {builder.info.full_name}  ({builder.data_dir})",
             f"source   {meta['source']}",
             f"windows  {cfg.data.representation}, "
             f"{input_pipeline.frames_per_window(cfg.data)} frames at {cfg.data.frame_rate} fps",
             f"splits   {meta['split_rule']}"]
    lines.append(f"{'split':<11}{'recordings':>11}{'hours':>8}{'notes':>10}{'windows':>9}"
                 "  composers")
    for split in splits.SPLITS:
        win = input_pipeline.create_windows(cfg.data, split, builder=builder)
        data = win.data
        hours = data.num_frames.sum() / data.frame_rate / 3600
        composers = collections.Counter(data.vocab["composers"][c] for c in data.composer)
        lines.append(f"{split:<11}{len(data.ids):>11}{hours:>8.2f}{len(data.note_rec):>10}"
                     f"{len(win):>9}  " + ", ".join(f"{k} {v}" for k, v in sorted(composers.items())))
    for split in splits.SPLITS:
        ids = meta["split_ids"][split]
        lines += [f"{split} ids ({len(ids)}):", _ids_text(ids)]
    if meta.get("left_out_ids"):
        lines += [f"in no split ({len(meta['left_out_ids'])}):", _ids_text(meta["left_out_ids"])]
    skipped = meta.get("skipped_files", [])
    lines.append(f"skipped  {len(skipped)} files, {meta.get('skipped_rows', 0)} label rows")
    reasons = collections.Counter(s.rsplit(": ", 1)[-1].split(" (")[0] for s in skipped)
    lines += [f"  {n} x {why}" for why, n in sorted(reasons.items())]
    lines += [f"  {s}" for s in skipped[:20]]
    if len(skipped) > 20:
        lines.append(f"  ... and {len(skipped) - 20} more (the dataset's metadata.json lists all)")
    return "\n".join(lines)


def main(argv):
    del argv
    print(summarize(_CONFIG.value))


if __name__ == "__main__":
    app.run(main)
