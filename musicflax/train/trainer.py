"""The one training loop every stage (VQ-VAE, prior) shares.

Sections: workdir (config checked on resume) -> mesh -> task (model + data) -> sharded state
init or restore -> jitted train step -> loop (log, validation by the configured evaluators,
images, checkpoint, preemption). Everything model-specific comes from the task
(musicflax.train.task); what defines and opens a run is musicflax.train.run.

Guarantees:
- the batch at step s and the RNG at step s are pure functions of (seed, s), so a resumed
  run repeats an uninterrupted one step for step; a resumed config that would change the
  data stream or the model is refused;
- a non-finite loss leaves the state untouched inside the step; the loop notices at the next
  log, validation or checkpoint step (it never waits for the device after every step), stops
  with a clear message and never saves the state of a bad step;
- SIGTERM/SIGINT finish the current step, save, and exit cleanly; multi-host runs agree on
  the step through Orbax/JAX's preemption sync point;
- every validated state is saved with its metrics, so the best checkpoint is chosen among
  all of them whatever eval_every and checkpoint_every are.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time

import jax
import ml_collections
from jax.experimental import multihost_utils
import numpy as np
from absl import logging
from clu import metric_writers
from etils import epath

from musicflax import app
from musicflax.audio import plots
from musicflax.eval import context as eval_context, evaluators
from musicflax.train import checkpoints, identity, run, sharding, step as step_lib
from musicflax.train.task import Task, process_shard


class NonFiniteLossError(app.UserError):
    """The loss became NaN/inf; the message says which step and which checkpoint is intact."""


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


class TimeBudget:
    """`config.train_seconds` of training (0 = no limit), checked at log steps; with several
    processes the chief's clock decides, so that every process stops at the same step."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds if seconds > 0 else None

    def spent(self) -> bool:
        if self.deadline is None:
            return False
        over = np.int32(time.monotonic() >= self.deadline)
        if jax.process_count() > 1:
            over = multihost_utils.broadcast_one_to_all(over)
        return bool(over)


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


class Heartbeat:
    """`heartbeat.json` in the workdir (process 0): step, state and time, for launchers that
    watch a run (is it alive, has it finished)."""

    def __init__(self, workdir: epath.Path, total: int):
        self.path, self.total = workdir / "heartbeat.json", total
        self.enabled = jax.process_index() == 0

    def beat(self, step: int, state: str = "running") -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "num_train_steps": self.total, "state": state,
                  "time": time.time(), "host": socket.gethostname(), "pid": os.getpid()}
        tmp = self.path.parent / (self.path.name + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.path)


def prepare_workdir(config: ml_collections.ConfigDict, workdir: epath.Path,
                    allow_config_change: bool) -> ml_collections.ConfigDict:
    """The config the run uses. A fresh run pins what it builds on and saves its config; a
    resumed one must keep every field that shapes its data stream or model."""
    saved_path = workdir / "config.json"
    if config.task == "prior":
        config = ml_collections.ConfigDict(config.to_dict())
        if saved_path.exists():
            # A resume keeps the VQ-VAE the prior was pinned to, unless the command names
            # another workdir or step explicitly.
            saved = run.load_config(workdir).prior
            asked = config.prior
            same_dir = run.absolute(asked.vqvae_workdir) == run.absolute(saved.vqvae_workdir)
            if same_dir and int(asked.vqvae_step) < 0:
                asked.vqvae_step = saved.vqvae_step
            if same_dir and not asked.vqvae_config_hash:
                asked.vqvae_config_hash = saved.vqvae_config_hash
        run.pin_vqvae(config)
    if saved_path.exists():
        changed = identity.config_changes(run.load_config(workdir), config)
        if changed and not allow_config_change:
            raise app.UserError(
                f"{workdir} holds a run whose config differs in {', '.join(changed[:8])}"
                f"{' ...' if len(changed) > 8 else ''}: resuming would change its data stream "
                "or model. Use another --workdir, or --allow_config_change to resume anyway")
    if jax.process_index() == 0:
        saved_path.write_text(config.to_json_best_effort(indent=2))
    return config


def check_data(task: Task, workdir: epath.Path, allow_config_change: bool) -> None:
    """Records which data the run trains on; a resumed run must find the same dataset."""
    record = task.data_record()
    path = workdir / "data.json"
    if path.exists() and not allow_config_change:
        before = json.loads(path.read_text())
        if before.get("fingerprint") != record.get("fingerprint"):
            raise app.UserError(
                f"{workdir} was trained on {before.get('dataset')} ({before.get('source')}); "
                f"its data is now {record.get('dataset')}: the source files or data options "
                "changed. Use another --workdir, or --allow_config_change to resume anyway")
    if jax.process_index() == 0:
        path.write_text(json.dumps(record, indent=2))


# Validation keys worth a place in the log line (all of them go to TensorBoard).
HEADLINES = ("loss/loss", "note_onset_f1", "note_onset_offset_f1", "frame_f1", "usage",
             "perplexity", "bits_per_code", "spectral_convergence_db", "si_sdr_db")


def headline(key: str) -> bool:
    return key.split("/")[-1] in HEADLINES or key in HEADLINES


# ---------------------------------------------------------------------------- main loop

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       allow_config_change: bool = False) -> step_lib.TrainState:
    """Trains (or resumes) the configured task in `workdir`; returns the final state."""
    workdir = run.absolute(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config = prepare_workdir(config, workdir, allow_config_change)
    evaluators.check(config.get("evals"))
    is_chief = jax.process_index() == 0
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief)

    # -- mesh and task (model + data) ------------------------------------------------------
    devices = jax.devices()[:config.mesh.num_devices or None]
    mesh = sharding.make_mesh(config.mesh.model, devices)
    task = run.create_task(config)
    check_data(task, workdir, allow_config_change)
    global_batch = config.batch_size
    if global_batch % mesh.shape[sharding.DATA_AXIS]:
        raise app.UserError(f"batch_size {global_batch} does not divide over "
                            f"{mesh.shape[sharding.DATA_AXIS]} data-parallel devices")
    tx, schedule = step_lib.make_optimizer(config.optim, config.num_train_steps)

    # -- sharded state init, or restore (same workdir = resume) ----------------------------
    init, state_sharding = run.state_layout(config, task, tx, mesh)
    best_metric = config.get("best_metric") or task.best_metric
    best_mode = config.get("best_mode") or task.best_mode
    manager = checkpoints.create_manager(workdir / "checkpoints", config.checkpoint_every,
                                         config.keep_checkpoints, best_metric, best_mode)
    rng = jax.random.PRNGKey(config.seed)
    abstract = checkpoints.abstract_like(jax.eval_shape(init, rng), state_sharding)
    try:
        state = checkpoints.restore(manager, abstract)
    except ValueError as e:
        raise app.UserError(f"{manager.directory}: {e}") from None
    if state is None:
        state = jax.jit(init, out_shardings=state_sharding)(rng)
        logging.info("starting from scratch: %s", task.describe(state.params))
    else:
        logging.info("resumed from step %d (%s)", int(state.step), manager.directory)
    start_step = int(state.step)

    batch_sharding = sharding.batch_sharding(mesh)
    train_step = jax.jit(step_lib.make_train_step(task, tx), in_shardings=(state_sharding, batch_sharding),
                         out_shardings=(state_sharding, None), donate_argnums=(0,))
    runner = run.Runner(mesh, state_sharding)

    def validate(state, step: int) -> dict[str, float]:
        priors = (eval_context.PriorRun(task, state, runner, workdir),) \
            if config.task == "prior" else ()
        ctx = eval_context.Context(task, state, runner, "validation", step, config.batch_size,
                                   priors=priors, shard=process_shard())
        return evaluators.flat_scalars(evaluators.evaluate(ctx, config.evals))

    image_batch = task.image_batch() if config.image_every else None

    def write_images(state, step: int) -> None:
        # Every process runs the model (fsdp params span all of them); process 0 draws.
        _, outputs = next(runner(task.image_outputs, state, [image_batch],
                                 replicated_batch=True))
        if is_chief:
            image = task.render_images(image_batch, outputs, step)
            (workdir / "recon").mkdir(exist_ok=True)
            plots.save_png(workdir / "recon" / f"step_{step}.png", image)
            writer.write_images(step, {"reconstruction": image[None]})

    # -- loop ------------------------------------------------------------------------------
    stop = StopSignal()
    budget = TimeBudget(float(config.get("train_seconds", 0)))
    heartbeat = Heartbeat(workdir, config.num_train_steps)
    progress = Progress(config.num_train_steps, global_batch, start_step)
    history: list[dict] = []
    last_eval: dict[str, float] | None = None
    step, final, out_of_time = start_step, "running", False

    def check_finite(upto: int) -> None:
        """Raises if a step since the last check had a non-finite loss (one host sync)."""
        flags = jax.device_get([h["nonfinite"] for h in history[-upto:]]) if upto else []
        bad = [step - len(flags) + 1 + i for i, f in enumerate(flags) if bool(f)]
        if bad:
            good = manager.latest_step()
            raise NonFiniteLossError(
                f"loss became NaN/inf at step {bad[0]}; stopping without saving. The last "
                f"good checkpoint is step {good} in {manager.directory}" if good is not None
                else f"loss became NaN/inf at step {bad[0]}; no checkpoint was written")

    try:
        unchecked = 0
        for local in task.train_batches(start_step):
            if step >= config.num_train_steps:
                break
            state, metrics = train_step(state, sharding.global_batch(local, mesh))
            step += 1
            if step == start_step + 1:
                app.release_freed_memory()  # what compiling init and the step left
            unchecked += 1
            history.append(metrics)
            last = step == config.num_train_steps
            out_of_time = not last and step % config.log_every == 0 and budget.spent()
            last = last or out_of_time
            evaluating = step % config.eval_every == 0 or last
            stopping = stop.received is not None or manager.reached_preemption(step)
            saving = evaluating or stopping or last or manager.should_save(step)
            if step % config.log_every == 0 or last or evaluating or saving:
                check_finite(unchecked)
                unchecked = 0
            if step % config.log_every == 0 or last:
                summary = {k: float(np.mean(v)) for k, v in jax.device_get(
                    {k: [h[k] for h in history] for k in history[0]}).items()}
                history = []
                summary["learning_rate"] = float(schedule(step - 1))
                writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()
                                            if k != "nonfinite"})
                if is_chief:
                    logging.info(progress.line(step, summary))
                heartbeat.beat(step)
            metrics_at_save = None
            if evaluating:
                last_eval = validate(state, step)
                app.release_freed_memory()  # what compiling the evaluators left
                metrics_at_save = last_eval
                writer.write_scalars(step, {f"validation/{k}": v for k, v in last_eval.items()})
                logging.info("validation at step %d: %s", step, "  ".join(
                    f"{k} {v:.4f}" for k, v in sorted(last_eval.items()) if headline(k)))
            if config.image_every and (step % config.image_every == 0 or last):
                write_images(state, step)
            if saving:
                # A validated state is always saved with its metrics (so best-of selection
                # sees every evaluation); otherwise Orbax's interval decides.
                checkpoints.save(manager, step, state, metrics_at_save,
                                 force=evaluating or stopping or last)
            if stopping and not last:
                final = "stopped"
                logging.warning("stopped at step %d; checkpoint saved: run the same command "
                                "to resume", step)
                break
            if out_of_time:
                logging.info("time budget of %s s spent at step %d; checkpoint saved",
                             config.train_seconds, step)
                break
        if step >= config.num_train_steps or out_of_time:
            final = "finished"
    except BaseException:
        final = "failed"
        raise
    finally:
        manager.wait_until_finished()
        manager.close()
        writer.flush()
        stop.restore()
        heartbeat.beat(step, final)
    if jax.process_count() > 1:
        # No trainer exits before process 0 has written that heartbeat: a watcher that saw one
        # gone while it still said "running" would restart a finished run.
        multihost_utils.sync_global_devices("musicflax: final heartbeat written")
    if is_chief and last_eval is not None:
        (workdir / "metrics.json").write_text(json.dumps({"step": step, **last_eval}, indent=2))
    return state
