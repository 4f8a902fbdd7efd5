"""Orbax checkpoints: async saves, the last K kept plus the best by a validation metric.

A checkpoint is the whole TrainState (params, optimizer, model state such as the codebook,
RNG, step); the data position follows from the step. Restoring goes through an abstract
target carrying the current mesh's shardings, so a run saved on 8 devices resumes on 1.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies


def create_manager(directory: epath.PathLike, save_every: int, keep: int,
                   best_metric: str | None = None, best_mode: str = "min",
                   async_save: bool = True, read_only: bool = False) -> ocp.CheckpointManager:
    """The manager for a run's checkpoint folder.

    Periodic saves (every `save_every` steps) and preemption saves are decided by Orbax;
    the trainer forces a save at the end of a run and when it is told to stop.
    """
    preserve = [policies.LatestN(keep)]
    best = {}
    if best_metric:
        sign = 1.0 if best_mode == "max" else -1.0
        preserve.append(policies.BestN(get_metric_fn=lambda m: sign * float(m[best_metric]), n=1,
                                       keep_checkpoints_without_metrics=False))
        # Orbax writes the metrics given to save() only when best_fn is set.
        best = dict(best_fn=lambda m: float(m[best_metric]), best_mode=best_mode)
    options = ocp.CheckpointManagerOptions(
        **best,
        # A policy of our own replaces Orbax's default one: keep its preemption part.
        save_decision_policy=policies.AnySavePolicy([
            policies.FixedIntervalPolicy(save_every), policies.PreemptionCheckpointingPolicy()]),
        preservation_policy=policies.AnyPreservationPolicy(preserve),
        enable_async_checkpointing=async_save,
        cleanup_tmp_directories=not read_only,
        read_only=read_only,
        create=not read_only,
    )
    return ocp.CheckpointManager(epath.Path(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         metrics: dict[str, float] | None = None, force: bool = False) -> bool:
    return manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=force)


def _shapes(tree: Any) -> dict[str, tuple]:
    """'params/encoders_0/...' -> shape, for every array of a tree (attributes or keys)."""
    return {re.sub(r"\W+", "/", jax.tree_util.keystr(path)).strip("/"): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if hasattr(leaf, "shape")}


def mismatch(directory: epath.PathLike, step: int, abstract_state: Any) -> str | None:
    """Where a saved state and the one a config builds differ in arrays or shapes (in words),
    read from the checkpoint's metadata alone; None if they agree."""
    metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(directory) / str(step) /
                                                        "default")
    saved, wanted = _shapes(metadata.tree), _shapes(abstract_state)
    problems = [f"{k} is {saved[k]} in the checkpoint, {wanted[k]} here"
                for k in sorted(saved.keys() & wanted.keys()) if saved[k] != wanted[k]]
    problems += [f"{k} is only in the checkpoint" for k in sorted(saved.keys() - wanted.keys())]
    problems += [f"{k} is not in the checkpoint" for k in sorted(wanted.keys() - saved.keys())]
    if not problems:
        return None
    more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
    return "; ".join(problems[:2]) + more


def restore(manager: ocp.CheckpointManager, abstract_state: Any, step: int | None = None):
    """The state at `step` (default: latest), laid out as `abstract_state` says; None if none.

    A checkpoint whose arrays differ from `abstract_state` raises ValueError saying where,
    before anything is read."""
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    problem = mismatch(manager.directory, step, abstract_state)
    if problem:
        raise ValueError(f"the checkpoint at step {step} does not match the config: {problem}")
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))


def abstract_like(state_shape: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying the target shardings (what restore lays data out as)."""
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        state_shape, shardings)


def all_steps(directory: epath.PathLike) -> list[int]:
    """The steps saved in a checkpoint folder (none if it does not exist), read-only."""
    if not epath.Path(directory).exists():
        return []
    manager = create_manager(directory, 1, 1, read_only=True)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def latest_step(directory: epath.PathLike) -> int | None:
    steps = all_steps(directory)
    return steps[-1] if steps else None
