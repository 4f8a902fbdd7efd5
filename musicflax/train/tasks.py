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
from musicflax.models import losses, metrics, prior, vqvae
from musicflax.train import codes


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

    @abc.abstractmethod
    def data_record(self) -> dict:
        """Which data the task trains on (source, dataset fingerprint, split rule and ids)."""


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

    def data_record(self) -> dict:
        return input_pipeline.dataset_record(self.builder)

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
            # The second half of the channels holds the onsets.
            return {"inputs": self.model_inputs(batch),
                    "onset_channels": jnp.arange(2 * self.num_channels) >= self.num_channels}
        return {"inputs": batch["inputs"].astype(jnp.float32)}

    def loss(self, params, model_state, batch, rng, train: bool):
        outputs, aux, new_state = self._apply(params, model_state, batch, rng, train)
        loss, parts = losses.vqvae_loss(outputs, self._targets(batch), aux, self.config.model)
        return loss, (parts, new_state)

    # -- evaluation ------------------------------------------------------------------------
    def predicted_rolls(self, logits: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(roll, onsets) booleans from piano-roll logits [B, T, 2C]: the roll where a note is
        more likely on than off, onsets peak-picked from the onset channels."""
        c, decode = self.num_channels, self.config.decode
        onsets = metrics.pick_onsets(logits[..., c:], decode.onset_radius,
                                     decode.onset_threshold)
        return logits[..., :c] > 0, onsets

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


class PriorTask(Task):
    """Stage two: a transformer prior over one level's codes of a trained VQ-VAE.

    The VQ-VAE's workdir is `config.prior.vqvae_workdir`; its codes are encoded once and
    cached (musicflax.train.codes). Validation reports bits per code beside the uniform
    (log2 K) and unigram baselines.
    """

    best_metric = "bits_per_code"
    best_mode = "min"

    def __init__(self, config: ml_collections.ConfigDict, workdir: epath.Path):
        del workdir
        self.config = config
        settings = config.prior
        self.vqvae_step = settings.vqvae_step if settings.vqvae_step >= 0 else None
        self.train_codes = codes.encode_split(settings.vqvae_workdir, "train", settings.level,
                                              self.vqvae_step)
        self.vocab = self.train_codes.vocab
        self.codes_per_second = self.train_codes.codes_per_second
        model_config = ml_collections.ConfigDict(config.model.to_dict())
        model_config.update(vocab_size=self.train_codes.codebook_size,
                            num_composers=len(self.vocab["composers"]),
                            num_ensembles=len(self.vocab["ensembles"]))
        self.model = prior.prior_from_config(model_config)
        self.length = int(config.model.max_len)
        self.baselines = codes.baseline_bits(self.train_codes)

    @functools.cached_property
    def val_codes(self) -> codes.CodeSet:
        return codes.encode_split(self.config.prior.vqvae_workdir, "validation",
                                  self.config.prior.level, self.vqvae_step)

    def data_record(self) -> dict:
        _, vqvae_task, _ = self.vqvae
        return {"codes_of": str(self.config.prior.vqvae_workdir), "level": self.config.prior.level,
                **vqvae_task.data_record()}

    def codesets(self) -> list[codes.CodeSet]:
        return [self.train_codes, self.val_codes]

    def init(self, rng):
        tokens = jnp.zeros((1, self.length), jnp.int32)
        ids = jnp.zeros((1,), jnp.int32)
        return self.model.init({"params": rng}, tokens, ids, ids, train=False)["params"], {}

    def _logits(self, params, batch, rng, train: bool):
        rngs = {"dropout": rng} if train else {}
        return self.model.apply({"params": params}, batch["codes"], batch["composer"],
                                batch["ensemble"], train=train, rngs=rngs)

    def loss(self, params, model_state, batch, rng, train: bool):
        logits = self._logits(params, batch, rng, train)
        loss, parts = prior.prior_loss(logits, batch["codes"])
        return loss, (parts, model_state)

    def eval_sums(self, params, model_state, batch) -> dict:
        logits = self._logits(params, batch, None, False)
        mask = jnp.broadcast_to(batch["mask"][:, None], batch["codes"].shape).astype(jnp.float32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["codes"][..., None],
                                   axis=-1)[..., 0]
        correct = (jnp.argmax(logits, -1) == batch["codes"]).astype(jnp.float32)
        return {"nll": jnp.sum(nll * mask), "correct": jnp.sum(correct * mask),
                "codes": jnp.sum(mask)}

    def finalize_eval(self, sums: dict, model_state) -> dict[str, float]:
        del model_state
        count = max(float(sums["codes"]), 1.0)
        bits = float(sums["nll"]) / count / math.log(2)
        out = {"bits_per_code": bits, "bits_per_second": bits * self.codes_per_second,
               "accuracy": float(sums["correct"]) / count, **self.baselines}
        out["reduction_vs_unigram"] = 1.0 - bits / self.baselines["unigram_bits"]
        return out

    @functools.cached_property
    def _streams(self):
        hop = int(self.config.prior.train_hop)
        return (input_pipeline.CodeWindows(self.train_codes, self.length, hop, train=True),
                input_pipeline.CodeWindows(self.val_codes, self.length, self.length,
                                           train=False))

    def train_batches(self, start_step: int):
        ds = self._streams[0].train_dataset(self.config.batch_size, self.config.seed,
                                            start_step, shard=process_shard())
        return input_pipeline.as_numpy(ds)

    def eval_batches(self):
        ds = self._streams[1].eval_dataset(self.config.batch_size, shard=process_shard())
        return input_pipeline.as_numpy(ds)

    @functools.cached_property
    def vqvae(self):
        from musicflax.train import trainer  # pylint: disable=g-import-not-at-top
        return trainer.load_state(self.config.prior.vqvae_workdir, self.vqvae_step)

    def decode(self, code_batch: np.ndarray) -> list[dict]:
        """Codes [N, L] -> per sample a dict: roll/onsets (piano-roll) or wave (waveform)."""
        vq_config, vq_task, vq_state = self.vqvae
        level = self.config.prior.level
        out = vq_task.model.apply({"params": vq_state.params, **vq_state.model_state},
                                  jnp.asarray(code_batch), level, method="decode")
        out = np.asarray(out)
        if vq_config.data.representation == "pianoroll":
            roll, onsets = (np.asarray(x, np.uint8) for x in vq_task.predicted_rolls(out))
            return [{"roll": r, "onsets": o, "frame_rate": vq_config.data.frame_rate,
                     "group_programs": vq_task.groups.programs,
                     "group_names": vq_task.groups.names} for r, o in zip(roll, onsets)]
        return [{"wave": w[:, 0], "sample_rate": vq_config.data.sample_rate} for w in out]


TASKS = {"vqvae": VQVAETask, "prior": PriorTask}


def create_task(config: ml_collections.ConfigDict, workdir: epath.Path) -> Task:
    if config.task not in TASKS:
        raise ValueError(f"unknown task {config.task!r}; choose one of {sorted(TASKS)}")
    return TASKS[config.task](config, workdir)
