"""The rate-distortion table: bits per second of codes against the notes they give back.

    python benchmarks/rate_distortion.py                      # every entry below (~30 min)
    python benchmarks/rate_distortion.py --entries=hop1,rvq4x2 --root=/tmp/rd

Trains each entry (configs/default.py with the overrides below, or the hierarchy's VQ-VAE,
whose every level is a point) for its steps, evaluates it offline on the validation split
(`musicflax.eval`: codebook + reconstruction), and prints a table of bits/s (max and
entropy), note-onset F1 (mir_eval, 50 ms), note F1 with offsets and frame F1, with the wall
time of training and of the offline evaluation (which encodes the split), beside the rate of
a lossless note-event stream of the same split; saves the plot as rate_distortion.png in
--root. Runs that finished before are reused (same
command, same workdir: resume is a no-op), and so are their reports.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def hop(frames: int) -> list[str]:
    """Overrides of configs/default.py for one level at a hop of `frames` (a power of 2)."""
    return [f"--config.model.downs_t=({frames.bit_length() - 1},)",
            "--config.model.strides_t=(2,)"]


ONSETS_30 = "--config.model.loss.onset_weight=30"
SEARCH = ("--config.encode.search_candidates=8", "--config.encode.search_sweeps=2")
# name -> (config, overrides, steps[, evaluation overrides]). Hops are frames per code
# (31.25 frames/s).
ENTRIES = {
    "hop1": ("configs/default.py", [], 1500),
    # Half the default's rate at the default's time resolution: a 22-code codebook (4.46 bits).
    "hop1k22": ("configs/default.py", ["--config.model.quantizer.codebook_size=22"], 1500),
    "hop2": ("configs/default.py", hop(2), 1500),
    # Hop 2 with its onsets weighted 30 instead of 10: the codes spend more of their bits on
    # onsets (frame F1 falls); 1900 steps: a little more than the default's 1500-step wall time.
    "hop2ow30": ("configs/default.py", [*hop(2), ONSETS_30], 1500),
    "hop2ow30x1900": ("configs/default.py", [*hop(2), ONSETS_30], 1900),
    # ... at learning rate 1e-2 (onset F1 at 1500 steps: 3e-3 0.878, 6e-3 0.892, 1e-2 0.903,
    # 2e-2 0.882), for as many steps as fit in the default's 1500-step wall time.
    "hop2ow30lr": ("configs/default.py", [*hop(2), ONSETS_30,
                                          "--config.optim.learning_rate=1e-2"], 1750),
    # Codes found by analysis-by-synthesis (musicflax.models.search: each position's 8
    # nearest codes tried, 2 passes): the same rate, a slower encoder. 1500 steps: less wall
    # time than hop 1's 1500, whose residual stacks run at twice the rate.
    "hop2ow30lr+search": ("configs/default.py", [*hop(2), ONSETS_30,
                                                 "--config.optim.learning_rate=1e-2"], 1500,
                          SEARCH),
    "hop1+search": ("configs/default.py", [], 1500, SEARCH),
    "hop4": ("configs/default.py", hop(4), 1500),
    "hop8": ("configs/default.py", hop(8), 1500),
    "rvq4x2": ("configs/default.py", [*hop(4), "--config.model.quantizer.type=rvq",
                                      "--config.model.quantizer.stages=2"], 1500),
    "rvq8x4": ("configs/default.py", [*hop(8), "--config.model.quantizer.type=rvq",
                                      "--config.model.quantizer.stages=4"], 1500),
    "fsq2": ("configs/default.py", [*hop(2), "--config.model.quantizer.type=fsq",
                                    "--config.model.quantizer.fsq_levels=(8,8,8)"], 1500),
    "fsq4": ("configs/default.py", [*hop(4), "--config.model.quantizer.type=fsq",
                                    "--config.model.quantizer.fsq_levels=(8,8,8,8,8,8)"], 1500),
    "hierarchy": ("configs/hierarchy.py", [], 0),
}


def train(root: str, name: str, entry: tuple = ()) -> float:
    """Trains an entry (config, overrides, steps) in root/name once; its wall seconds."""
    config, overrides, steps = (entry or ENTRIES[name])[:3]
    workdir = os.path.join(root, name)
    command = [sys.executable, "-m", "musicflax.train", f"--config={config}",
               f"--workdir={workdir}", "--config.image_every=0", *overrides]
    if steps:
        command.append(f"--config.num_train_steps={steps}")
    timing = os.path.join(workdir, "wall_seconds.json")
    if os.path.exists(timing):
        return json.load(open(timing))["seconds"]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    seconds = time.perf_counter() - start
    with open(timing, "w") as f:
        json.dump({"seconds": seconds, "command": command}, f)
    return seconds


def latest_report(workdir: str) -> dict | None:
    """The newest validation report of the run's last evaluated step, if any."""
    if not os.path.isdir(os.path.join(workdir, "eval")):
        return None
    steps = sorted(os.listdir(os.path.join(workdir, "eval")), key=int)
    folders = sorted(d for d in os.listdir(os.path.join(workdir, "eval", steps[-1]))
                     if d.startswith("validation") and os.path.exists(
                         os.path.join(workdir, "eval", steps[-1], d, "report.json")))
    if not folders:
        return None
    folder = max(folders, key=lambda d: int(d.split(".")[1]) if "." in d else 1)
    return json.load(open(os.path.join(workdir, "eval", steps[-1], folder, "report.json")))


def evaluate(root: str, name: str, only=("codebook", "reconstruction"), flags=()) -> dict:
    """The run's offline validation report with only these evaluators (made once), with
    the entry's evaluation overrides; its wall seconds are the report's `eval_seconds`."""
    workdir = os.path.join(root, name)
    report = latest_report(workdir)
    if report is not None:
        return report
    entry = ENTRIES.get(name, ())
    extra = list(entry[3]) if len(entry) > 3 else []
    off = [f"--config.evals.{e}.enabled=False" for e in ("loss", "codebook", "reconstruction",
                                                         "probes", "latent_space", "prior",
                                                         "generated") if e not in only]
    flags = flags or ("--config.evals.reconstruction.figures=0",
                      "--config.evals.reconstruction.write_notes=False")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "musicflax.eval", "--config=configs/eval.py",
                    f"--workdir={workdir}", *flags, *off, *extra], cwd=REPO, check=True,
                   capture_output=True)
    seconds = time.perf_counter() - start
    report = latest_report(workdir)
    with open(os.path.join(workdir, "eval_seconds.json"), "w") as f:
        json.dump({"seconds": seconds}, f)
    return report


def points(name: str, report: dict, seconds: float, eval_seconds: float) -> list[dict]:
    out = []
    levels = sorted(k for k in report["codebook"] if k.startswith("level"))
    for level in levels:
        index = int(level[len("level"):])
        prefix = "" if index == 0 else f"{level}/"
        recon = report["reconstruction"]
        code = report["codebook"][level]
        out.append({"entry": name if len(levels) == 1 else f"{name} {level}",
                    "bits_max": code["bitrate_max"], "bits_entropy": code["bitrate_entropy"],
                    "onset_f1": recon[f"{prefix}note_onset_f1"],
                    "offset_f1": recon[f"{prefix}note_onset_offset_f1"],
                    "frame_f1": recon[f"{prefix}frame_f1"], "train_seconds": seconds,
                    "eval_seconds": eval_seconds})
    return out


def plot(rows: list[dict], reference: float, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
    from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
    figure = Figure(figsize=(8, 5), dpi=110, layout="constrained")
    axes = figure.add_subplot()
    for key, marker in (("onset_f1", "o"), ("frame_f1", "s"), ("offset_f1", "^")):
        axes.scatter([r["bits_max"] for r in rows], [r[key] for r in rows], marker=marker,
                     label=key.replace("_", " "))
    for r in rows:
        axes.annotate(r["entry"], (r["bits_max"], r["onset_f1"]), fontsize=7,
                      xytext=(3, 3), textcoords="offset points")
    axes.axvline(reference, color="grey", linestyle="--", label="note-event stream")
    default = [r["onset_f1"] for r in rows if r["entry"] == "hop1"]
    if default:  # the bar: the default's onset F1, at half its rate
        axes.axhline(default[0], color="tab:blue", linestyle=":", linewidth=1,
                     label="onset F1 of hop1 (the default)")
    axes.set_xscale("log")
    axes.set_xlabel("bits per second of music (codes x log2 K)")
    axes.set_ylabel("F1 on the validation split")
    axes.legend(fontsize="small")
    axes.set_title("rate-distortion, piano-roll VQ-VAEs on the sample set")
    FigureCanvasAgg(figure).print_png(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", default=",".join(ENTRIES))
    parser.add_argument("--root", default=os.path.join(REPO, "workdirs", "rate_distortion"))
    args = parser.parse_args()
    rows, reference = [], None
    for name in args.entries.split(","):
        seconds = train(args.root, name)
        report = evaluate(args.root, name)
        reference = report["codebook"]["note_event_stream"]["bits_per_second"]
        timing = os.path.join(args.root, name, "eval_seconds.json")
        eval_seconds = json.load(open(timing))["seconds"] if os.path.exists(timing) else \
            float("nan")
        rows.extend(points(name, report, seconds, eval_seconds))
    print(f"\n{'entry':<20}{'bits/s max':>11}{'entropy':>9}{'onset F1':>10}{'+offset':>9}"
          f"{'frame F1':>10}{'train s':>9}{'eval s':>8}")
    for r in sorted(rows, key=lambda r: r["bits_max"]):
        print(f"{r['entry']:<20}{r['bits_max']:>11.1f}{r['bits_entropy']:>9.1f}"
              f"{r['onset_f1']:>10.3f}{r['offset_f1']:>9.3f}{r['frame_f1']:>10.3f}"
              f"{r['train_seconds']:>9.0f}{r['eval_seconds']:>8.0f}")
    print(f"{'note-event stream':<20}{reference:>11.1f}  (lossless at 32 ms)")
    path = os.path.join(args.root, "rate_distortion.png")
    plot(rows, reference, path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
