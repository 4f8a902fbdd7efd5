"""The interface between the one training loop and what differs between stages (a task).

A task owns its model and its data: it initialises variables, computes the loss (pure, for
jit), hands the loop this process's rows of the batches for a step range, and gives the
evaluators (musicflax.eval) what they read: the windows of a split and a pure function of
per-window outputs. `musicflax.train.run.create_task` builds the task a config names.
"""

from __future__ import annotations

import abc
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from musicflax.data import input_pipeline


class Task(abc.ABC):
    """The model- and data-specific parts of a training run."""

    config: ml_collections.ConfigDict
    best_metric: str | None = None  # validation metric that picks the "best" checkpoint
    best_mode: str = "min"

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> tuple[Any, Any]:
        """(params, model_state) for a fresh run (traced under jax.eval_shape / jit)."""

    @abc.abstractmethod
    def loss(self, params, model_state, batch, rng, train: bool):
        """(loss, (metrics, new_model_state)); pure, jitted by the loop."""

    @abc.abstractmethod
    def train_batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of the global batches for steps start_step, start_step+1..."""

    @abc.abstractmethod
    def eval_windows(self, split: str) -> input_pipeline.TableStream:
        """Every window of a split once (eval_dataset), what the evaluators pass over."""

    @abc.abstractmethod
    def eval_outputs(self, params, model_state, batch) -> dict:
        """Per-window outputs of the model for the evaluators; pure, jitted by the runner."""

    @abc.abstractmethod
    def data_record(self) -> dict:
        """Which data the task trains on (source, dataset fingerprint, split rule and ids)."""

    def image_outputs(self, params, model_state, batch) -> dict | None:
        """What `render_images` draws, for a fixed validation batch (pure); None: no images."""
        del params, model_state, batch
        return None

    def image_batch(self) -> dict[str, np.ndarray] | None:
        return None

    def render_images(self, batch, outputs, step: int) -> np.ndarray:
        """One RGB image [H, W, 3] from a batch and its `image_outputs`."""
        raise NotImplementedError

    def describe(self, params) -> str:
        count = sum(x.size for x in jax.tree.leaves(params))
        return f"{count:,} parameters"


def process_shard() -> input_pipeline.Shard:
    return input_pipeline.Shard(jax.process_index(), jax.process_count())
