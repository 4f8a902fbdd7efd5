"""What defines and opens a run, below the loop: the state and its optimizer and shardings,
the task registry, opening a workdir's checkpoint, checking a resumed config, and the runner
that evaluators use to pass a model over a split.

The loop (musicflax.train.trainer), sampling, encoding and evaluation all import this
module; a stage that builds on another (a prior on a VQ-VAE) is handed that run, opened
here at the step it is pinned to.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from musicflax import app, models
from musicflax.train import checkpoints, identity, sharding
from musicflax.train.step import TrainState, make_optimizer
from musicflax.hierarchy import Hierarchy
from musicflax.train.prior_task import PriorTask
from musicflax.train.task import Task
from musicflax.train.vqvae_task import ScoreAudioTask, VQVAETask


# ---------------------------------------------------------------------------- shardings

FSDP_MIN_SIZE = 2**10  # smaller arrays stay replicated: splitting them saves nothing


def param_shardings(tree: Any, mesh: jax.sharding.Mesh, mode: str) -> Any:
    """How each array of the state is laid out on the (data, model) mesh.

    With a model axis (mesh.model > 1) every large kernel is split along its output features
    (its last axis) over that axis: tensor parallelism, which jit's sharding propagation turns
    into split matmuls and convolutions with the collectives they need. Over the data axis,
    arrays are replicated ('replicated') or each large one split along its largest remaining
    dividing axis ('fsdp').
    """
    if mode not in ("replicated", "fsdp"):
        raise app.UserError(f"unknown param_sharding {mode!r} (replicated | fsdp)")
    data, model = mesh.shape[sharding.DATA_AXIS], mesh.shape[sharding.MODEL_AXIS]

    def rule(x):
        spec = [None] * x.ndim
        if x.ndim == 0 or x.size < FSDP_MIN_SIZE:
            return sharding.replicated(mesh)
        if model > 1 and x.ndim >= 2 and x.shape[-1] % model == 0:
            spec[-1] = sharding.MODEL_AXIS
        if mode == "fsdp":
            for axis in np.argsort(x.shape)[::-1]:
                if spec[axis] is None and x.shape[axis] % data == 0:
                    spec[axis] = sharding.DATA_AXIS
                    break
        return NamedSharding(mesh, P(*spec))
    return jax.tree.map(rule, tree)


def state_layout(config, task: Task, tx, mesh) -> tuple[Callable, Any]:
    """(init(rng) -> TrainState, the TrainState of shardings) for a task on a mesh."""
    def init(rng):
        params, model_state = task.init(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), model_state=model_state, rng=rng)

    shape = jax.eval_shape(init, jax.random.PRNGKey(0))
    layout = param_shardings(shape, mesh, config.param_sharding)
    return init, layout.replace(step=sharding.replicated(mesh), rng=sharding.replicated(mesh))


# ---------------------------------------------------------------------------- runs

@dataclasses.dataclass(frozen=True)
class Run:
    """An opened run: its config, task, restored state and (absolute) workdir."""

    config: ml_collections.ConfigDict
    task: Task
    state: TrainState
    workdir: epath.Path
    state_sharding: Any = None
    mesh: Any = None


def absolute(workdir: epath.PathLike) -> epath.Path:
    """Orbax wants absolute paths; cloud paths (gs://...) already are."""
    text = os.fspath(workdir)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def load_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
    """The config a run saved in its workdir."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise app.UserError(f"{workdir}: not a musicflax workdir (no config.json)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def create_task(config: ml_collections.ConfigDict) -> Task:
    """The task `config.task` names; a prior is handed its VQ-VAE run at the pinned step."""
    if config.task == "vqvae":
        return VQVAETask(config)
    if config.task == "prior":
        return PriorTask(config, open_vqvae_of(config))
    if config.task == "score_audio":
        return ScoreAudioTask(config)
    raise app.UserError(f"unknown task {config.task!r}; choose one of ['prior', 'score_audio', "
                        "'vqvae']")


def pin_vqvae(config: ml_collections.ConfigDict) -> None:
    """Makes a prior config name its VQ-VAE exactly (in place, where not yet pinned): the
    workdir made absolute, step -1 replaced by the latest step, and the hash of the VQ-VAE's
    config. A fresh prior run saves what this pins; `open_vqvae_of` holds the VQ-VAE to it."""
    settings = config.prior
    workdir = absolute(settings.vqvae_workdir)
    vqvae_config = load_config(workdir)
    step = int(settings.vqvae_step)
    if step < 0:
        step = checkpoints.latest_step(workdir / "checkpoints")
        if step is None:
            raise app.UserError(f"{workdir}/checkpoints: no checkpoint to build a prior on")
    settings.vqvae_workdir, settings.vqvae_step = str(workdir), step
    if not settings.get("vqvae_config_hash"):
        settings.vqvae_config_hash = identity.config_hash(vqvae_config)


def open_vqvae_of(config: ml_collections.ConfigDict) -> Run:
    """The VQ-VAE run a (pinned) prior config names; refuses one that changed since."""
    settings = config.prior
    if int(settings.vqvae_step) < 0 or not settings.get("vqvae_config_hash"):
        pin_vqvae(config)
    run = open_run(settings.vqvae_workdir, int(settings.vqvae_step))
    if identity.config_hash(run.config) != settings.vqvae_config_hash:
        raise app.UserError(f"{settings.vqvae_workdir}/config.json changed since the prior was "
                            f"trained on it (config hash {identity.config_hash(run.config)}, the "
                            f"prior recorded {settings.vqvae_config_hash})")
    return run


def open_run(workdir: epath.PathLike, step: int | None = None,
             config: ml_collections.ConfigDict | None = None, devices=None) -> Run:
    """A run's checkpoint (latest unless `step`), replicated over `devices` (default: one
    local device). The task's data is not loaded until used, so opening a model to sample
    from is cheap. `config` replaces the saved one (e.g. evaluation on other data)."""
    workdir = absolute(workdir)
    config = config or load_config(workdir)
    if not (workdir / "checkpoints").exists():
        raise app.UserError(f"{workdir}/checkpoints: no checkpoint folder")
    try:
        available = checkpoints.all_steps(workdir / "checkpoints")
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise app.UserError(f"{workdir}/checkpoints: unreadable checkpoints "
                            f"({str(e).splitlines()[0][:200]})") from None
    if not available:
        raise app.UserError(f"{workdir}/checkpoints: no checkpoint to load")
    if step is not None and step not in available:
        raise app.UserError(f"{workdir}/checkpoints: no step {step} (have {list(available)})")
    try:
        task = create_task(config)
    except models.UnknownFieldError as e:
        raise app.UserError(f"{workdir}/config.json: {e}") from None
    tx, _ = make_optimizer(config.optim, config.num_train_steps)
    mesh = sharding.make_mesh(1, devices or jax.local_devices()[:1])
    init, layout = state_layout(config, task, tx, mesh)
    abstract = checkpoints.abstract_like(jax.eval_shape(init, jax.random.PRNGKey(0)), layout)
    manager = checkpoints.create_manager(workdir / "checkpoints", 1, 1, read_only=True)
    try:
        state = checkpoints.restore(manager, abstract, step)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
        raise app.UserError(f"{workdir}/checkpoints: {str(e).splitlines()[0][:300]}") from None
    finally:
        manager.close()
    return Run(config, task, state, workdir, layout, mesh)


def open_hierarchy(workdirs, step: int | None = None) -> Hierarchy:
    """Prior runs, coarsest first (`step` for the first), checked to form a hierarchy."""
    runs = [open_run(w, step if i == 0 else None) for i, w in enumerate(workdirs)]
    for opened in runs:
        if opened.config.task != "prior":
            raise app.UserError(f"{opened.workdir} holds a {opened.config.task!r} run, not a prior")
    return Hierarchy(tuple(runs))


# ---------------------------------------------------------------------------- evaluation

class Runner:
    """Passes a pure per-window function `fn(params, model_state, batch)` over batches on a
    mesh, for evaluators: every process runs it on its rows, and gets back every row of the
    global batch and the outputs as numpy."""

    def __init__(self, mesh, state_sharding):
        self.mesh, self.state_sharding = mesh, state_sharding
        self._compiled: dict[tuple, Callable] = {}

    def _jitted(self, fn, replicated_batch: bool):
        key = (fn, replicated_batch)
        if key not in self._compiled:
            batch = sharding.replicated(self.mesh) if replicated_batch else \
                sharding.batch_sharding(self.mesh)
            self._compiled[key] = jax.jit(
                lambda state, b: fn(state.params, state.model_state, b),
                in_shardings=(self.state_sharding, batch),
                out_shardings=sharding.replicated(self.mesh))
        return self._compiled[key]

    def __call__(self, fn, state, batches: Iterable[dict[str, np.ndarray]],
                 replicated_batch: bool = False) -> Iterator[tuple[dict, dict]]:
        """(global host batch, host outputs) per batch. With `replicated_batch` every process
        holds the whole (same) batch, e.g. a few fixed windows for images."""
        jitted = self._jitted(fn, replicated_batch)
        for local in batches:
            if replicated_batch:
                arrays = {k: jax.make_array_from_process_local_data(
                    sharding.replicated(self.mesh), v) for k, v in local.items()}
                full = local
            else:
                arrays = sharding.global_batch(local, self.mesh)
                full = local if jax.process_count() == 1 else \
                    multihost_utils.process_allgather(local, tiled=True)
            yield full, jax.device_get(jitted(state, arrays))
