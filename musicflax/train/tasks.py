"""Tasks: what differs between training stages, behind one small interface the loop uses.

A task owns its model and its data: it initialises variables, computes the loss (pure, for
jit), sums evaluation counts over batches, and hands the loop host batches for a step range.
`config.task` names the task; `create_task` builds it.
"""

from __future__ import annotations

import abc
import functools
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from musicflax.audio import plots
from musicflax.data import input_pipeline, windows
from musicflax.models import losses, metrics, vqvae


class Task(abc.ABC):
    """The model- and data-specific parts of a training run."""

    best_metric: str | None = None  # validation metric that picks the "best" checkpoint
    best_mode: str = "min"

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> tuple[Any, Any]:
        """(params, model_state) for a fresh run (traced under jax.eval_shape / jit)."""

    @abc.abstractmethod
    def loss(self, params, model_state, batch, rng, train: bool):
        """(loss, (metrics, new_model_state)); pure, jitted by the loop."""

    @abc.abstractmethod
    def eval_sums(self, params, model_state, batch) -> dict:
        """Quantities that add up over validation batches (padded rows masked out)."""

    @abc.abstractmethod
    def finalize_eval(self, sums: dict, model_state) -> dict[str, float]:
        """Validation metrics from the summed quantities."""

    @abc.abstractmethod
    def train_batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of the global batches for steps start_step, start_step+1..."""

    @abc.abstractmethod
    def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """This process's rows of every validation batch."""

    def images(self, state, workdir: epath.Path, step: int) -> dict[str, np.ndarray] | None:
        """Images for TensorBoard (and PNGs in the workdir); none by default."""
        del state, workdir, step
        return None

    def describe(self, params) -> str:
        count = sum(x.size for x in jax.tree.leaves(params))
        return f"{count:,} parameters"


def ema_cluster_sizes(model_state) -> list[np.ndarray]:
    """Each level's EMA code counts from the "codebook" collection (empty for FSQ)."""
    leaves = jax.tree_util.tree_leaves_with_path(model_state)
    named = sorted((jax.tree_util.keystr(path), v) for path, v in leaves)
    return [np.asarray(v) for name, v in named if name.endswith("['cluster_size']")]


def process_shard() -> input_pipeline.Shard:
    return input_pipeline.Shard(jax.process_index(), jax.process_count())


class VQVAETask(Task):
    """Stage one: a VQ-VAE reconstructs piano-roll or waveform windows through discrete codes.

    Piano-roll models see and reconstruct the roll and its onsets side by side (2C
    channels), so repeated notes, which the roll alone cannot show, survive the round trip.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: epath.Path):
        del workdir
        self.config = config
        self.representation = config.data.representation
        self.groups = windows.InstrumentGroups.parse(config.data.instrument_groups)
        self.num_channels = self.groups.num_channels
        self.model = vqvae.vqvae_from_config(
            config.model, 2 * self.num_channels if self.representation == "pianoroll" else 1)
        quantizer = config.model.quantizer
        self.codebook_size = quantizer.codebook_size if quantizer.type == "ema_vq" else \
            math.prod(quantizer.fsq_levels)
        self.best_metric = "onset_f1" if self.representation == "pianoroll" else "loss"
        self.best_mode = "max" if self.representation == "pianoroll" else "min"
        self._image_batch = None

    # Data loads on first use, so that loading a checkpoint to sample from is cheap.
    @functools.cached_property
    def builder(self):
        return input_pipeline.get_builder(self.config.data)

    @functools.cached_property
    def train_windows(self) -> input_pipeline.Windows:
        return input_pipeline.create_windows(self.config.data, "train", builder=self.builder)

    @functools.cached_property
    def val_windows(self) -> input_pipeline.Windows:
        return input_pipeline.create_windows(self.config.data, "validation",
                                             builder=self.builder)

    # -- model ---------------------------------------------------------------------------
    def model_inputs(self, batch) -> jax.Array:
        if self.representation == "pianoroll":
            return jnp.concatenate([batch["inputs"], batch["onsets"]], -1).astype(jnp.float32)
        return batch["inputs"].astype(jnp.float32)

    def _example(self) -> jax.Array:
        if self.representation == "pianoroll":
            window = input_pipeline.frames_per_window(self.config.data)
            return jnp.zeros((1, window, 2 * self.num_channels))
        return jnp.zeros((1, int(self.config.data.window_samples), 1))

    def init(self, rng):
        params_rng, restart_rng = jax.random.split(rng)
        variables = self.model.init({"params": params_rng, "restart": restart_rng},
                                    self._example(), train=False)
        params = variables.pop("params")
        return params, dict(variables)

    def _apply(self, params, model_state, batch, rng, train: bool):
        variables = {"params": params, **model_state}
        if train:
            (outputs, aux), updated = self.model.apply(
                variables, self.model_inputs(batch), train=True, rngs={"restart": rng},
                mutable=list(model_state))
            return outputs, aux, dict(updated)
        outputs, aux = self.model.apply(variables, self.model_inputs(batch), train=False)
        return outputs, aux, model_state

    def _targets(self, batch) -> dict:
        if self.representation == "pianoroll":
            # The onset emphasis applies to the onset half of the channels.
            return {"inputs": self.model_inputs(batch), "onsets": jnp.concatenate(
                [jnp.zeros_like(batch["onsets"]), batch["onsets"]], -1).astype(jnp.float32)}
        return {"inputs": batch["inputs"].astype(jnp.float32)}

    def loss(self, params, model_state, batch, rng, train: bool):
        outputs, aux, new_state = self._apply(params, model_state, batch, rng, train)
        loss, parts = losses.vqvae_loss(outputs, self._targets(batch), aux, self.config.model)
        return loss, (parts, new_state)

    # -- evaluation ------------------------------------------------------------------------
    def predicted_rolls(self, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(roll, onsets) booleans from piano-roll logits [B, T, 2C]."""
        c = self.num_channels
        roll = logits[..., :c] > 0
        return roll, (logits[..., c:] > 0) & roll

    def eval_sums(self, params, model_state, batch) -> dict:
        outputs, aux, _ = self._apply(params, model_state, batch, None, train=False)
        mask = batch["mask"]
        weight = mask.astype(jnp.float32)
        loss, _ = losses.vqvae_loss(outputs, self._targets(batch), aux, self.config.model)
        sums = {"loss": loss * jnp.sum(weight), "windows": jnp.sum(weight)}
        for level, codes in enumerate(aux["codes"]):
            sums[f"codes_level{level}"] = jnp.zeros(self.codebook_size, jnp.float32).at[
                codes.reshape(-1)].add(jnp.repeat(weight, codes.shape[1]))
        if self.representation == "pianoroll":
            roll, onsets = self.predicted_rolls(outputs[0])
            sums["frame"] = metrics.frame_counts(roll, batch["inputs"], mask)
            sums["onset"] = metrics.onset_counts(onsets, batch["onsets"], 1, mask)
        return sums

    def finalize_eval(self, sums: dict, model_state) -> dict[str, float]:
        out = {"loss": float(sums["loss"] / max(sums["windows"], 1))}
        ema_counts = ema_cluster_sizes(model_state)
        threshold = self.config.model.quantizer.restart_threshold
        for level in range(self.config.model.levels):
            counts = ema_counts[level] if ema_counts else None
            stats = metrics.histogram_stats(sums[f"codes_level{level}"], counts, threshold)
            out.update({f"level{level}/{k}": v for k, v in stats.items()})
        if "frame" in sums:
            out.update(metrics.f1(sums["frame"], "frame_"))
            out.update(metrics.f1(sums["onset"], "onset_"))
        return out

    # -- images ----------------------------------------------------------------------------
    def images(self, state, workdir: epath.Path, step: int) -> dict[str, np.ndarray]:
        """Original vs reconstruction for a few fixed validation windows (PNG + TensorBoard)."""
        if self._image_batch is None:
            first = next(iter(self.val_windows.eval_dataset(self.config.image_windows)))
            self._image_batch = {k: np.asarray(v) for k, v in first.items()}
            self._reconstruct = jax.jit(lambda p, m, b: self._apply(p, m, b, None, False)[0][0])
        batch = self._image_batch
        recon = np.asarray(self._reconstruct(state.params, state.model_state, batch))
        (workdir / "recon").mkdir(exist_ok=True)
        images = []
        for i in range(len(batch["recording_id"])):
            title = (f"step {step}: recording {batch['recording_id'][i]} at "
                     f"{batch['start_time'][i]:.1f} s")
            if self.representation == "pianoroll":
                probs = jax.nn.sigmoid(recon[i, :, :self.num_channels])
                images.append(plots.render_roll_comparison(
                    batch["inputs"][i], np.asarray(probs), self.val_windows.data.frame_rate,
                    title, self.groups.names))
            else:
                images.append(plots.render_spectrogram_comparison(
                    batch["inputs"][i, :, 0], recon[i, :, 0], self.val_windows.data.sample_rate,
                    title))
        stacked = np.concatenate(images, axis=0)
        plots.save_png(workdir / "recon" / f"step_{step}.png", stacked)
        return {"reconstruction": stacked[None]}

    # -- data ------------------------------------------------------------------------------
    def train_batches(self, start_step: int):
        ds = self.train_windows.train_dataset(self.config.batch_size, self.config.seed,
                                              start_step, shard=process_shard())
        return input_pipeline.as_numpy(ds)

    def eval_batches(self):
        ds = self.val_windows.eval_dataset(self.config.batch_size, shard=process_shard())
        return input_pipeline.as_numpy(ds)


TASKS = {"vqvae": VQVAETask}


def create_task(config: ml_collections.ConfigDict, workdir: epath.Path) -> Task:
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose one of {sorted(TASKS)}")
    return TASKS[config.task](config, workdir)
