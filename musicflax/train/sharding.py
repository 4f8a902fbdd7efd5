"""The device mesh, and turning each process's share of a batch into one global jax.Array.

Batches are split along a "data" mesh axis. Each process passes only the rows it
assembled (see musicflax.data.input_pipeline.Shard); the rows of process p are rows
p*B/P .. (p+1)*B/P - 1 of the global batch, which is what
jax.make_array_from_process_local_data expects when devices are ordered by process.
"""

from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(model_parallelism: int = 1, devices=None) -> Mesh:
    """A (data, model) mesh over all devices; data-parallel over what model axis leaves."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) % model_parallelism:
        raise ValueError(f"{len(devices)} devices do not divide into model axis "
                         f"{model_parallelism}")
    # Devices sorted by process, so each process's batch rows land on its own devices.
    devices = sorted(devices, key=lambda d: (d.process_index, d.id))
    grid = np.asarray(devices).reshape(-1, model_parallelism)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis; the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the data axis."""
    sharding = batch_sharding(mesh)
    processes = jax.process_count()
    return {k: jax.make_array_from_process_local_data(
        sharding, v, (v.shape[0] * processes, *v.shape[1:])) for k, v in local.items()}
