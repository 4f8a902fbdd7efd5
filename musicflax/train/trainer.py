"""The one training loop both stages (VQ-VAE, prior) share.

Sections: mesh -> task (model + data) -> sharded state init -> restore -> jitted steps ->
loop (log, eval, images, checkpoint, preemption). A `Task` (musicflax.train.tasks) supplies
the model-specific parts; everything here is the same for every stage.

Guarantees:
- the batch at step s and the RNG at step s are pure functions of (seed, s), so a resumed
  run repeats an uninterrupted one step for step;
- a non-finite loss leaves the state untouched inside the step, and the loop stops with a
  clear message without saving it (the last good checkpoint stays as it was);
- SIGTERM/SIGINT finish the current step, save, and exit cleanly; multi-host runs agree on
  the step through Orbax/JAX's preemption sync point.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from musicflax import app
from musicflax.train import checkpoints, sharding
from musicflax.train.tasks import Task, create_task


class NonFiniteLossError(app.UserError):
    """The loss became NaN/inf; the message says which step and which checkpoint is intact."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # non-parameter collections, e.g. the VQ codebook and its EMA counts
    rng: jax.Array    # base key; the key of step s is fold_in(rng, s)


# ---------------------------------------------------------------------------- optimizer

def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup + cosine decay and global-norm gradient clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(num_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_lr_factor)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                                   weight_decay=cfg.weight_decay)), schedule


# ---------------------------------------------------------------------------- shardings

FSDP_MIN_SIZE = 2**10  # smaller arrays stay replicated: splitting them saves nothing

def param_shardings(tree: Any, mesh: jax.sharding.Mesh, mode: str) -> Any:
    """'replicated', or 'fsdp': each large array split along its largest dividing axis."""
    if mode == "replicated":
        return jax.tree.map(lambda _: sharding.replicated(mesh), tree)
    if mode != "fsdp":
        raise ValueError(f"unknown param_sharding {mode!r} (replicated | fsdp)")
    size = mesh.shape[sharding.DATA_AXIS]

    def rule(x):
        if x.ndim == 0 or x.size < FSDP_MIN_SIZE:
            return sharding.replicated(mesh)
        for axis in np.argsort(x.shape)[::-1]:
            if x.shape[axis] % size == 0:
                spec = [None] * x.ndim
                spec[axis] = sharding.DATA_AXIS
                return NamedSharding(mesh, P(*spec))
        return sharding.replicated(mesh)
    return jax.tree.map(rule, tree)


# ---------------------------------------------------------------------------- steps

def make_train_step(task: Task, tx: optax.GradientTransformation) -> Callable:
    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            return task.loss(params, state.model_state, batch, rng, train=True)

        (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(grads))
        candidate = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state)
        # On a bad step keep the old state (the loop stops right after) so nothing bad is saved.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), candidate, state)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
                   "nonfinite": ~finite}
        return new_state, metrics
    return train_step


def make_eval_step(task: Task) -> Callable:
    def eval_step(state: TrainState, batch: dict) -> dict:
        return task.eval_sums(state.params, state.model_state, batch)
    return eval_step


# ---------------------------------------------------------------------------- loop helpers

class StopSignal:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step (single process).

    With several processes, SIGTERM is left to JAX's preemption notifier, which makes every
    process reach the same sync point (Orbax's `reached_preemption`); a Python handler would
    replace it and let processes stop at different steps.
    """

    def __init__(self):
        self.received = None
        self._previous = {}
        if jax.process_count() > 1:
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        del frame
        logging.warning("received %s: finishing this step, saving, exiting",
                        signal.Signals(signum).name)
        self.received = signum

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Progress:
    """A log line with step, loss, steps/s, windows/s and ETA."""

    def __init__(self, total_steps: int, global_batch: int, start_step: int):
        self.total, self.batch = total_steps, global_batch
        self.last_step, self.last_time = start_step, time.perf_counter()

    def line(self, step: int, metrics: dict[str, float]) -> str:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        eta = (self.total - step) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        return (f"step {step}/{self.total}  loss {metrics['loss']:.4f}  {rate:.2f} steps/s  "
                f"{rate * self.batch:.0f} windows/s  ETA {eta_text}")


def mean_metrics(history: list[dict]) -> dict[str, float]:
    history = jax.device_get(history)
    return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


def save_config(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


# ---------------------------------------------------------------------------- state

def state_layout(config, task: Task, tx, mesh) -> tuple[Callable, Any]:
    """(init(rng) -> TrainState, the TrainState of shardings) for a task on a mesh."""
    def init(rng):
        params, model_state = task.init(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), model_state=model_state, rng=rng)

    shape = jax.eval_shape(init, jax.random.PRNGKey(0))
    layout = param_shardings(shape, mesh, config.param_sharding)
    return init, layout.replace(step=sharding.replicated(mesh), rng=sharding.replicated(mesh))


def load_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
    """The config a run saved in its workdir."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise app.UserError(f"{workdir}: not a musicflax workdir (no config.json)")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_state(workdir: epath.PathLike, step: int | None = None,
               config: ml_collections.ConfigDict | None = None, devices=None):
    """(config, task, state) of a run's checkpoint (latest unless `step`), replicated over
    `devices` (default: one local device).

    The task's data is not loaded until used, so loading a model for sampling is cheap.
    """
    workdir = absolute(workdir)
    config = config or load_config(workdir)
    task = create_task(config, workdir)
    tx, _ = make_optimizer(config.optim, config.num_train_steps)
    mesh = sharding.make_mesh(1, devices or jax.local_devices()[:1])
    init, layout = state_layout(config, task, tx, mesh)
    if not (workdir / "checkpoints").exists():
        raise app.UserError(f"{workdir}/checkpoints: no checkpoint folder")
    manager = checkpoints.create_manager(workdir / "checkpoints", 1, 1, read_only=True)
    available = manager.all_steps()
    if not available:
        raise app.UserError(f"{workdir}/checkpoints: no checkpoint to load")
    if step is not None and step not in available:
        raise app.UserError(f"{workdir}/checkpoints: no step {step} (have {list(available)})")
    abstract = checkpoints.abstract_like(jax.eval_shape(init, jax.random.PRNGKey(0)), layout)
    try:
        state = checkpoints.restore(manager, abstract, step)
    except (ValueError, KeyError, TypeError) as e:
        raise app.UserError(f"{workdir}/checkpoints: checkpoint does not match the run's "
                            f"config ({str(e).splitlines()[0][:200]})") from None
    finally:
        manager.close()
    return config, task, state


# ---------------------------------------------------------------------------- main loop

def absolute(workdir: epath.PathLike) -> epath.Path:
    """Orbax wants absolute paths; cloud paths (gs://...) already are."""
    text = os.fspath(workdir)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) the configured task in `workdir`; returns the final state."""
    workdir = absolute(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir)
    is_chief = jax.process_index() == 0
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)

    # -- mesh and task (model + data) ------------------------------------------------------
    devices = jax.devices()[:config.mesh.num_devices or None]
    mesh = sharding.make_mesh(config.mesh.model, devices)
    task = create_task(config, workdir)
    if is_chief:
        # Which data (source, fingerprint, split rule and ids) this run trains on.
        (workdir / "data.json").write_text(json.dumps(task.data_record(), indent=2))
    global_batch = config.batch_size
    if global_batch % mesh.shape[sharding.DATA_AXIS]:
        raise ValueError(f"batch_size {global_batch} does not divide over "
                         f"{mesh.shape[sharding.DATA_AXIS]} data-parallel devices")
    tx, schedule = make_optimizer(config.optim, config.num_train_steps)

    # -- sharded state init, or restore (same workdir = resume) ----------------------------
    init, state_sharding = state_layout(config, task, tx, mesh)
    manager = checkpoints.create_manager(workdir / "checkpoints", config.checkpoint_every,
                                         config.keep_checkpoints, task.best_metric,
                                         task.best_mode)
    rng = jax.random.PRNGKey(config.seed)
    abstract = checkpoints.abstract_like(jax.eval_shape(init, rng), state_sharding)
    state = checkpoints.restore(manager, abstract)
    if state is None:
        state = jax.jit(init, out_shardings=state_sharding)(rng)
        logging.info("starting from scratch: %s", task.describe(state.params))
    else:
        logging.info("resumed from step %d (%s)", int(state.step), manager.directory)
    start_step = int(state.step)

    batch_sharding = sharding.batch_sharding(mesh)
    train_step = jax.jit(make_train_step(task, tx), in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, None), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(task), in_shardings=(state_sharding, batch_sharding))

    def evaluate(state) -> dict[str, float]:
        sums = None
        for local in task.eval_batches():
            out = eval_step(state, sharding.global_batch(local, mesh))
            sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
        return task.finalize_eval(jax.device_get(sums), jax.device_get(state.model_state))

    # -- loop ------------------------------------------------------------------------------
    stop = StopSignal()
    progress = Progress(config.num_train_steps, global_batch, start_step)
    history: list[dict] = []
    last_eval: dict[str, float] | None = None
    step = start_step
    try:
        for local in task.train_batches(start_step):
            if step >= config.num_train_steps:
                break
            batch = sharding.global_batch(local, mesh)
            state, metrics = train_step(state, batch)
            step += 1
            history.append(metrics)
            if bool(jax.device_get(metrics["nonfinite"])):
                good = manager.latest_step()
                raise NonFiniteLossError(
                    f"loss became NaN/inf at step {step}; stopping without saving. The last "
                    f"good checkpoint is step {good} in {manager.directory}" if good is not None
                    else f"loss became NaN/inf at step {step}; no checkpoint was written")
            if step % config.log_every == 0 or step == config.num_train_steps:
                summary = mean_metrics(history)
                history = []
                summary["learning_rate"] = float(schedule(step - 1))
                writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()
                                            if k != "nonfinite"})
                if is_chief:
                    logging.info(progress.line(step, summary))
            if step % config.eval_every == 0 or step == config.num_train_steps:
                last_eval = evaluate(state)
                writer.write_scalars(step, {f"validation/{k}": v for k, v in last_eval.items()})
                logging.info("validation at step %d: %s", step,
                             "  ".join(f"{k} {v:.4f}" for k, v in sorted(last_eval.items())))
            if is_chief and config.image_every and step % config.image_every == 0:
                images = task.images(state, workdir, step)
                if images:
                    writer.write_images(step, images)
            at_eval = last_eval if step % config.eval_every == 0 else None
            stopping = stop.received is not None or manager.reached_preemption(step)
            if stopping or step == config.num_train_steps:
                checkpoints.save(manager, step, state, at_eval, force=True)
            else:
                checkpoints.save(manager, step, state, at_eval)
            if stopping:
                logging.warning("stopped at step %d; checkpoint saved: run the same command "
                                "to resume", step)
                break
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.flush()
        stop.restore()
    if is_chief and last_eval is not None:
        (workdir / "metrics.json").write_text(json.dumps({"step": step, **last_eval}, indent=2))
    return state
