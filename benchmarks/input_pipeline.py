"""Input pipeline throughput: windows/s for piano-roll and waveform windows on this machine.

    python benchmarks/input_pipeline.py            # the shipped sample set
    python benchmarks/input_pipeline.py --steps=200 --batch=128 --only=pianoroll

Builds the TFDS datasets on first use (the waveform one renders the sample set's audio at
16 kHz once, which takes a while), then times train batches after a warm-up, as the trainer
consumes them (numpy out). Targets on a 2-core machine: >= 5,000 piano-roll windows/s
(128 frames) and >= 1,000 one-second 16 kHz waveform windows/s.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # noqa: E402

from configs import default  # noqa: E402
from musicflax.data import input_pipeline  # noqa: E402

TARGETS = {"pianoroll": 5000, "waveform": 1000}

_BATCH = flags.DEFINE_integer("batch", 64, "Windows per batch.")
_STEPS = flags.DEFINE_integer("steps", 100, "Timed batches.")
_SOURCE = flags.DEFINE_string("source", "sample", "data.source ('sample' or a MusicNet path).")
_ONLY = flags.DEFINE_enum("only", None, sorted(TARGETS), "Time one representation only.")


def measure(representation: str, batch: int, steps: int, source: str) -> tuple[float, str]:
    cfg = default.data_config()
    cfg.source, cfg.representation = source, representation
    if representation == "waveform":
        cfg.frame_rate = 100.0
    win = input_pipeline.create_windows(cfg, "train")
    it = input_pipeline.as_numpy(win.train_dataset(batch, seed=0))
    for _ in range(5):  # warm-up: tracing, thread pools, prefetch buffer
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        example = next(it)
    rate = steps * batch / (time.perf_counter() - start)
    shape = "x".join(map(str, example["inputs"].shape[1:]))
    return rate, shape


def main(argv):
    del argv
    rows = []
    for representation in [_ONLY.value] if _ONLY.value else ["pianoroll", "waveform"]:
        rate, shape = measure(representation, _BATCH.value, _STEPS.value, _SOURCE.value)
        rows.append((representation, shape, rate, TARGETS[representation]))
    print(f"\n{'representation':<16}{'window':>14}{'windows/s':>12}{'target':>9}  ok")
    for name, shape, rate, target in rows:
        print(f"{name:<16}{shape:>14}{rate:>12,.0f}{target:>9,}  {'yes' if rate >= target else 'NO'}")
    print(f"({os.cpu_count()} CPUs, batch {_BATCH.value}, {_STEPS.value} batches timed)")


if __name__ == "__main__":
    app.run(main)
