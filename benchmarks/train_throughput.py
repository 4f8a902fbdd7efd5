"""Training throughput of the VQ-VAE and the prior: steps/s, windows/s, peak memory, and on
accelerators achieved TFLOP/s and MFU.

    python benchmarks/train_throughput.py                                 # default configs
    python benchmarks/train_throughput.py --config=configs/waveform.py --config.batch_size=8
    python benchmarks/train_throughput.py --models=prior --prior_config.model.max_len=512
    python benchmarks/train_throughput.py --config=configs/score_audio.py --models=vqvae

Times the jitted train step the trainer runs (musicflax.train.step, state built by the same
jitted init) after a compile + warm-up: the model of --config (a VQ-VAE, or score-to-audio)
on real batches of its data,
the prior of --prior_config on random codes of the VQ-VAE's codebook (only speed matters;
no trained VQ-VAE is needed). FLOPs come from XLA's cost analysis of the compiled step; MFU
divides achieved FLOP/s by the device's peak for the compute dtype (a table below; none for
CPUs). Peak memory: the device's peak bytes in use where the backend reports it, else the
process's peak resident set size (which includes TensorFlow, loaded for the data).
"""

from __future__ import annotations

import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from musicflax.train import run, sharding, step as step_lib  # noqa: E402
from musicflax.train.prior_model import PriorModel  # noqa: E402
from musicflax.train.vqvae_task import VQVAETask  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "VQ-VAE config.")
_PRIOR = config_flags.DEFINE_config_file("prior_config", "configs/prior.py", "Prior config.")
_MODELS = flags.DEFINE_list("models", ["vqvae", "prior"], "What to time: vqvae, prior.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per model.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")

# Dense peak TFLOP/s per chip by compute dtype, from the vendors' data sheets.
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.0, "float32": 67.0}, "H200": {"bfloat16": 989.0, "float32": 67.0},
    "A100": {"bfloat16": 312.0, "float32": 19.5}, "L4": {"bfloat16": 121.0, "float32": 30.3},
    "TPU v4": {"bfloat16": 275.0}, "TPU v5 lite": {"bfloat16": 197.0},
    "TPU v5p": {"bfloat16": 459.0}, "TPU v6": {"bfloat16": 918.0},
}


def peak_tflops(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for name, peaks in PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return peaks.get(dtype)
    return None


def peak_memory_gb() -> tuple[float, str]:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**30, "device"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "host RSS"


def time_step(model, config, mesh, batches) -> dict:
    """Compiles the train step, warms up, times `--steps` steps on `batches` (an iterator)."""
    tx, _ = step_lib.make_optimizer(config.optim, config.num_train_steps)
    init, layout = run.state_layout(config, model, tx, mesh)
    state = jax.jit(init, out_shardings=layout)(jax.random.PRNGKey(0))
    train_step = jax.jit(step_lib.make_train_step(model, tx),
                         in_shardings=(layout, sharding.batch_sharding(mesh)),
                         out_shardings=(layout, None), donate_argnums=(0,))
    first = next(batches)
    compiled = train_step.lower(state, first).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else (cost or {})
    for _ in range(_WARMUP.value):
        state, metrics = train_step(state, next(batches))
    jax.block_until_ready(metrics)
    # Batches are made before the timed region: this is the step, not the input pipeline.
    ready = [next(batches) for _ in range(_STEPS.value)]
    start = time.perf_counter()
    for batch in ready:
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    flops = cost.get("flops", 0.0) * _STEPS.value / seconds
    peak = peak_tflops(config.model.dtype)
    memory, where = peak_memory_gb()
    return {"batch": config.batch_size, "steps/s": _STEPS.value / seconds,
            "windows/s": _STEPS.value * config.batch_size / seconds,
            "TFLOP/s": flops / 1e12, "MFU": flops / 1e12 / peak if peak else None,
            "peak GiB": memory, "where": where}


def vqvae_row(config) -> dict:
    mesh = sharding.make_mesh(config.mesh.model)
    task = run.create_task(config)
    local = task.train_batches(0)
    return time_step(task, config, mesh, (sharding.global_batch(b, mesh) for b in local))


def prior_row(vqvae_config, config) -> dict:
    mesh = sharding.make_mesh(config.mesh.model)
    size = VQVAETask(vqvae_config).codebook_size
    model = PriorModel(config, size, num_composers=10, num_ensembles=21)
    rng = np.random.default_rng(0)

    def batches():
        while True:
            b = config.batch_size
            yield sharding.global_batch({
                "codes": rng.integers(0, size, (b, model.length), np.int32),
                "composer": rng.integers(0, 10, (b,), np.int32),
                "ensemble": rng.integers(0, 21, (b,), np.int32)}, mesh)
    return time_step(model, config, mesh, batches())


def main(argv):
    del argv
    rows = []
    vqvae = _CONFIG.value
    if "vqvae" in _MODELS.value:
        row = vqvae_row(vqvae)
        if vqvae.data.representation == "waveform":  # seconds of audio trained per second
            row["audio s/s"] = row["windows/s"] * vqvae.data.window_samples / vqvae.data.sample_rate
        rows.append((f"{vqvae.task} ({vqvae.data.representation})", row))
    if "prior" in _MODELS.value:
        rows.append((f"prior (context {_PRIOR.value.model.max_len})", prior_row(vqvae, _PRIOR.value)))
    device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
    print(f"\n{'model':<24}{'batch':>6}{'steps/s':>9}{'windows/s':>11}{'TFLOP/s':>9}{'MFU':>7}"
          f"{'peak GiB':>10}  ({device})")
    for name, r in rows:
        mfu = f"{100 * r['MFU']:6.1f}%" if r["MFU"] is not None else "     -"
        print(f"{name:<24}{r['batch']:>6}{r['steps/s']:>9.2f}{r['windows/s']:>11.1f}"
              f"{r['TFLOP/s']:>9.3f}{mfu:>7}{r['peak GiB']:>10.2f}  {r['where']}"
              + (f"  {r['audio s/s']:.2f} s of audio/s" if "audio s/s" in r else ""))


if __name__ == "__main__":
    app.run(main)
