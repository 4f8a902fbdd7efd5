"""Training throughput: steps/s, windows/s and peak memory of the VQ-VAE train step.

    python benchmarks/train_throughput.py                 # this machine's devices
    python benchmarks/train_throughput.py --steps=50

Times the jitted train step (the same function the trainer runs) on real sample-set batches
for the piano-roll (configs/default.py) and waveform (configs/waveform.py) configs, after a
compile + warm-up, and prints a table. On a GPU it also reports achieved TFLOP/s from XLA's
cost analysis. Peak memory: the device's peak bytes in use where the backend reports it
(GPU/TPU), else the process's peak resident set size.
"""

from __future__ import annotations

import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import default, waveform  # noqa: E402
from musicflax.train import sharding, tasks, trainer  # noqa: E402

_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per config.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
_CONFIGS = flags.DEFINE_list("configs", ["pianoroll", "waveform"], "Which configs to time.")

CONFIGS = {"pianoroll": default.get_config, "waveform": waveform.get_config}


def peak_memory_gb() -> tuple[float, str]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host RSS"


def measure(name: str) -> dict:
    config = CONFIGS[name]()
    task = tasks.create_task(config, None)
    mesh = sharding.make_mesh(config.mesh.model)
    tx, _ = trainer.make_optimizer(config.optim, config.num_train_steps)
    init, layout = trainer.state_layout(config, task, tx, mesh)
    state = jax.jit(init, out_shardings=layout)(jax.random.PRNGKey(0))
    step = jax.jit(trainer.make_train_step(task, tx), donate_argnums=(0,))
    batches = task.train_batches(0)
    first = sharding.global_batch(next(batches), mesh)
    compiled = step.lower(state, first).compile()
    flops = (compiled.cost_analysis() or {}).get("flops", 0.0)
    for _ in range(_WARMUP.value):
        state, metrics = step(state, sharding.global_batch(next(batches), mesh))
    jax.block_until_ready(metrics)
    # Batches are fetched outside the timed region: this is the step, not the input pipeline.
    ready = [sharding.global_batch(next(batches), mesh) for _ in range(_STEPS.value)]
    start = time.perf_counter()
    for batch in ready:
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    memory, where = peak_memory_gb()
    return {"config": name, "batch": config.batch_size, "steps/s": _STEPS.value / seconds,
            "windows/s": _STEPS.value * config.batch_size / seconds,
            "TFLOP/s": flops * _STEPS.value / seconds / 1e12, "peak GiB": memory, "where": where}


def main(argv):
    del argv
    rows = [measure(name) for name in _CONFIGS.value]
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(f"\n{'config':<12}{'batch':>6}{'steps/s':>10}{'windows/s':>11}{'TFLOP/s':>9}"
          f"{'peak GiB':>10}  ({device})")
    for r in rows:
        print(f"{r['config']:<12}{r['batch']:>6}{r['steps/s']:>10.2f}{r['windows/s']:>11.1f}"
              f"{r['TFLOP/s']:>9.3f}{r['peak GiB']:>10.2f}  {r['where']}")


if __name__ == "__main__":
    app.run(main)
