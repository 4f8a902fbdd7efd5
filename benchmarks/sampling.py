"""Prior sampling speed: codes/s with and without the KV cache, on this machine.

    python benchmarks/sampling.py
    python benchmarks/sampling.py --vqvae_config=configs/waveform.py --level=1 --uncached_codes=4

A small prior (4 layers, 4 heads of 64, MLP 1024, K = 512, composer + ensemble conditioning,
random parameters: only speed matters) at contexts 256 and 1024, batch 1 and 16. Each path
is run once to compile, then timed on a fixed number of codes from an empty prime. Both paths
cost the same per code wherever the code falls in the context (the cached step attends over
the whole preallocated cache, masked; the uncached step runs the forward pass over the whole
window), so codes/s from a short run is the rate over a full context: the uncached path times
only --uncached_codes codes and its rate is extrapolated per code from them. Target:
cached >= 20x uncached at context 1024. "x real time" is seconds of music per second of
sampling (all samples of the batch together) at the codes per second of music of the VQ-VAE
of --vqvae_config at --level (its input rate over that level's hop: 31.25 codes/s for the
default piano-roll model at hop 1).
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from musicflax.models import prior  # noqa: E402
from musicflax.train.vqvae_model import VQVAEModel  # noqa: E402

_CONTEXTS = flags.DEFINE_list("contexts", ["256", "1024"], "context lengths (max_len)")
_BATCHES = flags.DEFINE_list("batches", ["1", "16"], "numbers of samples drawn together")
_CACHED_CODES = flags.DEFINE_integer("cached_codes", 128, "codes timed on the cached path")
_UNCACHED_CODES = flags.DEFINE_integer("uncached_codes", 3, "codes timed on the uncached path")
_VQVAE = config_flags.DEFINE_config_file("vqvae_config", "configs/default.py",
                                         "The VQ-VAE whose codes the prior models.")
_LEVEL = flags.DEFINE_integer("level", 0, "Its level the prior models.")

TARGET_SPEEDUP = 20


def benchmark_config(context: int):
    config = prior.default_prior_config()
    config.update(num_layers=4, num_heads=4, head_dim=64, mlp_dim=1024, max_len=context)
    return config


def codes_per_second(model, params, batch: int, codes: int, cached: bool) -> float:
    """Rate of the second of two identical runs (the first compiles)."""
    def run():
        sample = model.sample if cached else model.sample_uncached
        return sample(params, jax.random.key(0), batch, codes, composer=0, ensemble=0
                      ).block_until_ready()

    run()
    start = time.perf_counter()
    run()
    return batch * codes / (time.perf_counter() - start)


def main(argv):
    del argv
    real_rate = VQVAEModel(_VQVAE.value).codes_per_second(_LEVEL.value)
    rows = []
    for context in map(int, _CONTEXTS.value):
        model = prior.prior_from_config(benchmark_config(context))
        tokens = jnp.zeros((1, context), jnp.int32)
        params = jax.jit(model.init)(jax.random.key(0), tokens, jnp.zeros(1, jnp.int32),
                                     jnp.zeros(1, jnp.int32))["params"]
        for batch in map(int, _BATCHES.value):
            cached = codes_per_second(model, params, batch, min(_CACHED_CODES.value, context),
                                      cached=True)
            uncached = codes_per_second(model, params, batch, _UNCACHED_CODES.value,
                                        cached=False)
            rows.append((context, batch, cached, uncached))
            print(f"context {context:5d} batch {batch:3d}: cached {cached:10,.1f} codes/s, "
                  f"uncached {uncached:8,.1f} codes/s", flush=True)

    print(f"\n{'context':>8}{'batch':>7}{'cached':>12}{'uncached':>12}{'speed-up':>10}"
          f"{'x real time':>13}")
    for context, batch, cached, uncached in rows:
        print(f"{context:>8}{batch:>7}{cached:>12,.1f}{uncached:>12,.1f}{cached / uncached:>9.1f}x"
              f"{cached / real_rate:>13.1f}")
    print(f"(codes/s summed over the batch; {os.cpu_count()} CPUs; cached: "
          f"min({_CACHED_CODES.value}, context) codes timed, uncached: {_UNCACHED_CODES.value}; "
          f"real time at {real_rate:g} codes per second of music; target speed-up "
          f">= {TARGET_SPEEDUP}x at context 1024)")


if __name__ == "__main__":
    app.run(main)
