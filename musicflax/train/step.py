"""The training state, its optimizer and the pure train step every stage jits.

Plain JAX + optax: building a train step needs a task's `loss` and nothing else (no data
pipeline), which is what benchmarks time.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any  # non-parameter collections, e.g. the VQ codebook and its EMA counts
    rng: jax.Array    # base key; the key of step s is fold_in(rng, s)


# ---------------------------------------------------------------------------- optimizer

def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int):
    """(AdamW with linear warmup + cosine decay and global-norm clipping, its schedule)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=cfg.warmup_steps,
        decay_steps=max(num_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.end_lr_factor)
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                       optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                                   weight_decay=cfg.weight_decay)), schedule


def make_train_step(task, tx: optax.GradientTransformation) -> Callable:
    """step(state, batch) -> (state, metrics) for a task's loss; a non-finite step keeps the
    old state and says so in metrics['nonfinite']."""
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
        # On a bad step keep the old state (the loop stops soon after) so nothing bad is saved.
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), candidate, state)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
                   "nonfinite": ~finite}
        return new_state, metrics
    return train_step
