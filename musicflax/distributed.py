"""Multi-host start-up (jax.distributed), used by every entry point before any JAX work.

Single-host runs need nothing. Multi-host runs set `config.distributed.enabled=True` and
either leave the rest empty (Cloud TPU VMs and Slurm: JAX detects coordinator, process
count and id) or give them in the config / the environment variables
MUSICFLAX_COORDINATOR, MUSICFLAX_NUM_PROCESSES, MUSICFLAX_PROCESS_ID (GPU VMs).
"""

from __future__ import annotations

import os

import jax
import ml_collections


def initialize(config: ml_collections.ConfigDict) -> None:
    dist = config.get("distributed")
    if dist is None or not dist.get("enabled", False):
        return
    coordinator = dist.get("coordinator") or os.environ.get("MUSICFLAX_COORDINATOR") or None
    num = dist.get("num_processes") or os.environ.get("MUSICFLAX_NUM_PROCESSES")
    pid = dist.get("process_id", -1)
    pid = pid if pid is not None and pid >= 0 else os.environ.get("MUSICFLAX_PROCESS_ID")
    # Cross-process collectives between CPU devices (tests, CPU clusters) need gloo; the
    # setting only concerns the CPU client, so it is harmless on GPU/TPU hosts. Asking
    # jax for its backend here would start it too early.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(num) if num is not None else None,
        process_id=int(pid) if pid is not None else None)
