"""Bottleneck quantizers: EMA vector quantization (with data init and dead-code restarts), its
residual stack (RVQ), and finite scalar quantization (FSQ); each reports its batch's codebook
statistics.

Both quantizers map `[B, T, D]` float inputs to a `QuantizerOutput` whose `quantized` vectors
carry straight-through gradients, and both have `lookup(codes)` so codes alone can be decoded.

The EMA codebook is state, not a parameter: it lives in the mutable collection `"codebook"`
and changes only in calls with `train=True` where that collection is mutable; those calls
need an rng stream named `"restart"`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from musicflax.models import metrics

CODEBOOK = "codebook"

# EMA count a code gets when it is (re)initialised from data, as in Jukebox.
_FRESH_COUNT = 1.0


class QuantizerOutput(NamedTuple):
    quantized: jax.Array           # [B, T, D] float32, straight-through to the input
    codes: jax.Array               # [B, T] int32
    commit_loss: jax.Array         # [B]: per window (leading axis) of the input
    stats: dict[str, jax.Array]    # see `usage_stats`


def usage_stats(codes: jax.Array, codebook_size: int, ema_counts: jax.Array | None = None,
                threshold: float = 1.0) -> dict[str, jax.Array]:
    """`metrics.codebook_stats` of one batch's codes (any shape) over a codebook of K codes."""
    counts = jnp.bincount(codes.ravel(), length=codebook_size)
    return metrics.codebook_stats(counts, ema_counts, threshold)


def _distances(flat: jax.Array, embedding: jax.Array) -> jax.Array:
    """Squared Euclidean distances [N, K] from each row of `flat` [N, D] to each code."""
    # Full float32 matmul: the default (bf16-pass) precision on accelerators can flip the
    # choice between nearby codes.
    cross = jnp.matmul(flat, embedding.T, precision=lax.Precision.HIGHEST)
    return (jnp.sum(flat ** 2, axis=1, keepdims=True) - 2 * cross
            + jnp.sum(embedding ** 2, axis=1))


def nearest_codes(flat: jax.Array, embedding: jax.Array) -> jax.Array:
    """Index of the closest codebook row (squared Euclidean) for each row of `flat` [N, D]."""
    return jnp.argmin(_distances(flat, embedding), axis=1).astype(jnp.int32)


def candidate_codes(flat: jax.Array, embedding: jax.Array, k: int) -> jax.Array:
    """The `k` closest codes [N, k] of each row of `flat`, nearest first."""
    _, codes = lax.top_k(-_distances(flat, embedding), k)
    return codes.astype(jnp.int32)


def random_rows(key: jax.Array, flat: jax.Array, n: int) -> jax.Array:
    """`n` rows of `flat` drawn at random, distinct where the batch has enough rows."""
    return flat[jax.random.choice(key, flat.shape[0], (n,), replace=flat.shape[0] < n)]


def kmeans(flat: jax.Array, centers: jax.Array, iterations: int) -> jax.Array:
    """Lloyd iterations from `centers`; a center that loses all its points stays put."""
    k = centers.shape[0]

    def step(_, centers):
        codes = nearest_codes(flat, centers)
        sums = jax.ops.segment_sum(flat, codes, num_segments=k)
        counts = jnp.bincount(codes, length=k)[:, None]
        return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), centers)

    return lax.fori_loop(0, iterations, step, centers)


class _EMACodebookFields(nn.Module):
    """The settings of an EMA codebook, shared by `EMAVectorQuantizer` and `ResidualVQ`
    (whose every stage is one)."""

    codebook_size: int
    code_dim: int
    decay: float = 0.99
    commitment: float = 0.02
    restart_threshold: float = 1.0
    init_method: str = "random_batch"
    kmeans_iters: int = 10

    @property
    def dim(self) -> int:
        return self.code_dim


class EMAVectorQuantizer(_EMACodebookFields):
    """VQ-VAE bottleneck whose codebook follows an EMA of the encoder outputs assigned to it.

    Collection `"codebook"`: `embedding` [K, D], EMA `cluster_size` [K] and `embed_sum` [K, D],
    and `initialized` (bool). The first updating call replaces the random starting codebook
    by encoder outputs of its batch (`init_method` 'random_batch', or 'kmeans' refining them)
    and does no EMA step. Every later updating call first restarts dead codes (EMA count below
    `restart_threshold`) at random encoder outputs of the batch, then assigns, then takes the
    EMA step (with Laplace-smoothed counts). Random choices use the `"restart"` rng stream, so
    they are the same on every device.
    """

    epsilon: float = 1e-5

    def setup(self):
        if self.init_method not in ("random_batch", "kmeans"):
            raise ValueError(f"unknown codebook init {self.init_method!r}")
        shape = (self.codebook_size, self.code_dim)
        self.embedding = self.variable(
            CODEBOOK, "embedding", lambda: jax.random.normal(self.make_rng("params"), shape))
        self.cluster_size = self.variable(
            CODEBOOK, "cluster_size", jnp.full, (self.codebook_size,), _FRESH_COUNT, jnp.float32)
        self.embed_sum = self.variable(
            CODEBOOK, "embed_sum", lambda: self.embedding.value * _FRESH_COUNT)
        self.initialized = self.variable(CODEBOOK, "initialized", lambda: jnp.array(False))

    def lookup(self, codes: jax.Array) -> jax.Array:
        return jnp.take(self.embedding.value, codes, axis=0)

    def candidates(self, z: jax.Array, k: int) -> jax.Array:
        """The `k` codes closest to each vector of `z` [B, T, D]: [B, T, k], nearest first."""
        flat = z.astype(jnp.float32).reshape(-1, self.code_dim)
        return candidate_codes(flat, self.embedding.value, k).reshape(*z.shape[:-1], k)

    def __call__(self, z: jax.Array, train: bool) -> QuantizerOutput:
        flat = z.astype(jnp.float32).reshape(-1, self.code_dim)
        # The codebook learns only by EMA, so codes restarted or initialised from encoder
        # outputs must not carry gradient back to the encoder.
        data = lax.stop_gradient(flat)
        # Dead codes are judged on the counts entering this call, i.e. those a training call
        # restarts; reported before the restart so the statistic shows them.
        stats_counts = self.cluster_size.value
        state = (self.embedding.value, self.cluster_size.value, self.embed_sum.value)
        if train and self.is_mutable_collection(CODEBOOK) and not self.is_initializing():
            init_key, restart_key = jax.random.split(self.make_rng("restart"))
            state, codes, quantized = lax.cond(
                self.initialized.value,
                lambda: self._train_step(data, state, restart_key),
                lambda: self._init_step(data, init_key))
            self.embedding.value, self.cluster_size.value, self.embed_sum.value = state
            self.initialized.value = jnp.array(True)
        else:
            codes = nearest_codes(data, state[0])
            quantized = state[0][codes]
        # Per window (leading axis), so that validation can mask padded windows.
        error = ((flat - lax.stop_gradient(quantized)) ** 2).reshape(z.shape[0], -1)
        commit_loss = self.commitment * jnp.mean(error, axis=1)
        # Exactly `quantized` in the forward pass, identity gradient to the encoder.
        quantized = quantized + (flat - lax.stop_gradient(flat))
        return QuantizerOutput(
            quantized.reshape(z.shape), codes.reshape(z.shape[:-1]), commit_loss,
            usage_stats(codes, self.codebook_size, stats_counts, self.restart_threshold))

    def _init_step(self, flat, key):
        embedding = random_rows(key, flat, self.codebook_size)
        if self.init_method == "kmeans":
            embedding = kmeans(flat, embedding, self.kmeans_iters)
        codes = nearest_codes(flat, embedding)
        counts = jnp.full((self.codebook_size,), _FRESH_COUNT, jnp.float32)
        return (embedding, counts, embedding * _FRESH_COUNT), codes, embedding[codes]

    def _train_step(self, flat, state, key):
        embedding, cluster_size, embed_sum = state
        dead = cluster_size < self.restart_threshold
        fresh = random_rows(key, flat, self.codebook_size)
        embedding = jnp.where(dead[:, None], fresh, embedding)
        embed_sum = jnp.where(dead[:, None], fresh * _FRESH_COUNT, embed_sum)
        cluster_size = jnp.where(dead, _FRESH_COUNT, cluster_size)

        codes = nearest_codes(flat, embedding)
        quantized = embedding[codes]
        counts = jnp.bincount(codes, length=self.codebook_size)
        sums = jax.ops.segment_sum(flat, codes, num_segments=self.codebook_size)
        cluster_size = self.decay * cluster_size + (1 - self.decay) * counts
        embed_sum = self.decay * embed_sum + (1 - self.decay) * sums
        # Laplace smoothing keeps rarely used codes from dividing by ~0.
        total = jnp.sum(cluster_size)
        smoothed = ((cluster_size + self.epsilon)
                    / (total + self.codebook_size * self.epsilon) * total)
        return (embed_sum / smoothed[:, None], cluster_size, embed_sum), codes, quantized


def _fsq_constants(levels: Sequence[int]):
    levels_arr = jnp.asarray(levels, jnp.int32)
    half_width = levels_arr // 2
    basis = jnp.asarray([math.prod(levels[:i]) for i in range(len(levels))], jnp.int32)
    return levels_arr, half_width, basis


def fsq_quantize(z: jax.Array, levels: Sequence[int], eps: float = 1e-3):
    """(quantized [..., d] in [-1, 1] with straight-through rounding, codes [...] int32)."""
    levels_arr, half_width, _ = _fsq_constants(levels)
    levels_f = levels_arr.astype(jnp.float32)
    # Bound each dimension to an interval holding exactly L integers: (-(L-1)/2, (L-1)/2) for
    # odd L, shifted by 1/2 for even L (with zero still mapping to zero).
    half_l = (levels_f - 1) * (1 + eps) / 2
    offset = jnp.where(levels_arr % 2 == 0, 0.5, 0.0)
    bounded = jnp.tanh(z + jnp.arctanh(offset / half_l)) * half_l - offset
    quantized = (jnp.round(bounded) + (bounded - lax.stop_gradient(bounded))) / half_width
    return quantized, fsq_codes(lax.stop_gradient(quantized), levels)


def fsq_codes(quantized: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Grid vectors [..., d] -> their mixed-radix codes [...] int32."""
    _, half_width, basis = _fsq_constants(levels)
    digits = jnp.round(quantized * half_width).astype(jnp.int32) + half_width
    return jnp.sum(digits * basis, axis=-1)


def fsq_lookup(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
    """Mixed-radix codes [...] -> the grid vectors [..., d] (inverse of `fsq_codes`)."""
    levels_arr, half_width, basis = _fsq_constants(levels)
    digits = (codes[..., None] // basis) % levels_arr
    return (digits - half_width) / half_width


class FSQ(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023): no codebook state, no commitment loss.

    The encoder's output projection is the projection to len(levels) dimensions.
    """

    levels: Sequence[int]

    @property
    def dim(self) -> int:
        return len(self.levels)

    @property
    def codebook_size(self) -> int:
        return math.prod(self.levels)

    def lookup(self, codes: jax.Array) -> jax.Array:
        return fsq_lookup(codes, self.levels)

    def __call__(self, z: jax.Array, train: bool) -> QuantizerOutput:
        del train  # FSQ has no state to update; the argument keeps the quantizer interface.
        quantized, codes = fsq_quantize(z.astype(jnp.float32), self.levels)
        return QuantizerOutput(quantized, codes, jnp.zeros(z.shape[:1], jnp.float32),
                               usage_stats(codes, self.codebook_size))


class ResidualVQ(_EMACodebookFields):
    """Residual vector quantization (SoundStream, EnCodec, DAC): `stages` EMA quantizers, each
    quantizing what the stages before it left; the output is the sum of their codebook
    vectors and the codes are [B, T, stages].

    Every stage is an `EMAVectorQuantizer` of its own (data init, EMA, dead-code restarts).
    With `dropout`, each training window keeps only its first n ~ U{1..stages} stages in the
    sum it passes on (all stages still learn their residuals), so that fewer stages decode
    too. Gradients pass straight through the whole sum once.
    """

    stages: int = 4
    dropout: bool = False

    def setup(self):
        self.stage_quantizers = [EMAVectorQuantizer(
            self.codebook_size, self.code_dim, self.decay, self.commitment,
            self.restart_threshold, self.init_method, self.kmeans_iters)
            for _ in range(self.stages)]

    def lookup(self, codes: jax.Array) -> jax.Array:
        """codes [..., n] (the first n <= stages stages) -> the sum of their vectors."""
        return sum(q.lookup(codes[..., i]) for i, q in enumerate(self.stage_quantizers[
            :codes.shape[-1]]))

    def candidates(self, z: jax.Array, k: int) -> jax.Array:
        """Per stage, the `k` codes closest to what the nearest codes of the stages before
        it leave of `z` [B, T, D]: [B, T, stages, k], nearest first."""
        residual, out = z.astype(jnp.float32), []
        for q in self.stage_quantizers:
            out.append(q.candidates(residual, k))
            residual = residual - q.lookup(out[-1][..., 0])
        return jnp.stack(out, axis=-2)

    def __call__(self, z: jax.Array, train: bool) -> QuantizerOutput:
        z = z.astype(jnp.float32)
        keep = jnp.full(z.shape[:1], self.stages)
        if train and self.dropout and self.is_mutable_collection(CODEBOOK) and \
                not self.is_initializing():
            keep = jax.random.randint(self.make_rng("restart"), z.shape[:1], 1, self.stages + 1)
        residual, total, codes, commit, stats = z, jnp.zeros_like(z), [], 0.0, {}
        for i, q in enumerate(self.stage_quantizers):
            out = q(residual, train)
            hard = lax.stop_gradient(out.quantized)
            total = total + hard * (i < keep)[:, None, None]
            residual = residual - hard
            codes.append(out.codes)
            commit = commit + out.commit_loss * (i < keep)
            stats.update({f"stage{i}/{k}": v for k, v in out.stats.items()})
        # One straight-through estimator for the whole sum: identity gradient to z.
        quantized = z + lax.stop_gradient(total - z)
        return QuantizerOutput(quantized, jnp.stack(codes, -1), commit, stats)


def ema_cluster_sizes(model_state) -> list[jax.Array]:
    """Each level's EMA code counts from the "codebook" collection: [K] per level, or
    [stages, K] for residual VQ; empty for FSQ."""
    leaves = jax.tree_util.tree_leaves_with_path(model_state)
    levels: dict[int, dict[int, jax.Array]] = {}
    for path, value in leaves:
        name = jax.tree_util.keystr(path)
        if name.endswith("['cluster_size']"):
            level = int(re.search(r"quantizers_(\d+)", name).group(1))
            stage = re.search(r"stage_quantizers_(\d+)", name)
            levels.setdefault(level, {})[int(stage.group(1)) if stage else -1] = value
    out = []
    for level in sorted(levels):
        stages = levels[level]
        out.append(jnp.asarray(stages[-1]) if -1 in stages else
                   jnp.stack([stages[i] for i in sorted(stages)]))
    return out


def make_quantizer(spec: Mapping[str, Any]) -> nn.Module:
    """The quantizer described by a model config's `quantizer` entry."""
    ema = dict(codebook_size=spec["codebook_size"], code_dim=spec["code_dim"],
               decay=spec["ema_decay"], commitment=spec["commitment"],
               restart_threshold=spec["restart_threshold"], init_method=spec["init"],
               kmeans_iters=spec["kmeans_iters"])
    if spec["type"] == "ema_vq":
        return EMAVectorQuantizer(**ema)
    if spec["type"] == "rvq":
        return ResidualVQ(stages=spec["stages"], dropout=spec["quantizer_dropout"], **ema)
    if spec["type"] == "fsq":
        return FSQ(levels=tuple(spec["fsq_levels"]))
    raise ValueError(f"unknown quantizer type {spec['type']!r} (expected 'ema_vq', 'rvq' or "
                     "'fsq')")
