"""Autoregressive prior over one level's VQ-VAE codes: a decoder-only transformer, its loss,
and KV-cached sampling with classifier-free guidance and a sliding window.

Positions enter only as rotary embeddings (RoPE) of queries and keys, so attention scores
depend on relative offsets alone. That is why RoPE was chosen: a key rotated once for its
position stays valid in a KV cache, and a window that slides and is re-encoded from position
0 sees exactly the relative geometry it was trained on (no absolute position to run out of).

Layout. The input at position 0 is a learned start vector plus the conditioning embeddings;
the input at position t > 0 is code t-1, so the logits at t predict code t (the first code is
predicted too) and a window of `max_len` codes fills the `max_len` positions of the context.

Conditioning. Composer and ensemble ids in [0, n) select an embedding added to the start
vector; -1 (or n itself) selects the learned "null" embedding, the unconditional branch of
classifier-free guidance. In training each id becomes null with probability cond_drop_prob.

Upsampler (Jukebox-style, `upper_vocab_size > 0`): the prior also reads the coarser level's
codes `upper` [B, ceil(T / upper_hop)]. The embedding of coarse code t // upper_hop plus a
learned embedding of the phase t % upper_hop is added to the input at the position that
predicts fine code t. (Jukebox upsamples with a learned deconvolution; a repeat plus a phase
embedding is the simplest form that keeps cached decoding exact.) `offset`, where a method
takes it, is the absolute index of the window's first code in the sequence that `upper`
describes; a training window and its coarse codes start together (offset 0).

Sampling (`Prior.sample`): one jitted `lax.scan` over positions, batched over samples, with a
preallocated KV cache per layer ([B, heads, max_len, head_dim], written with
`lax.dynamic_update_slice`). Every code n is drawn with `fold_in(rng, n)`, so a seed fixes the
sample and the cached and uncached paths draw identically.

Sliding-window rule (L = max_len, keep = L // 2). A window starting at code a holds the start
vector at position 0 and codes a..n-1 at positions 1..n-a, and predicts code n at position
n - a. When code n would need position L (n - a == L: the cache is full), the cache is rebuilt
from scratch, by one `prefill` of the start vector and the last `keep` codes n-keep..n-1
(a = n - keep, positions 0..keep), and code n is predicted at position keep. So the first
window covers codes 0..L-1, a new one starts every L - keep codes after that, and every code
sees at least `keep` codes of context. A `prime` of P < L codes is encoded whole; a longer one
as if the cache had just filled (start vector + its last `keep` codes).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from musicflax.models import build

Cache = tuple[dict[str, jax.Array], ...]  # per layer: {"k", "v"} of [B, heads, max_len, head_dim]

_INIT = nn.initializers.normal(0.02)


def default_prior_config() -> ml_collections.ConfigDict:
    """Every prior field, with defaults for MusicNet codes of the VQ-VAE's default codebook."""
    return ml_collections.ConfigDict(dict(
        vocab_size=512,         # codebook size K of the level modelled (stages * K for RVQ)
        # Residual-VQ codes a position: token s*K + c is code c of stage s, at token positions
        # with position % stages == s; each position's logits cover only its stage's K codes.
        stages=1,
        num_layers=8,
        num_heads=8,
        head_dim=64,            # d_model = num_heads * head_dim
        mlp_dim=2048,
        dropout=0.1,            # on the residual branches, training only
        max_len=1024,           # context length in codes (start vector included)
        num_composers=10,       # conditioning vocabulary sizes (full MusicNet: 10 composers,
        num_ensembles=21,       # 21 ensembles; take them from the data); 0 = none
        cond_drop_prob=0.1,     # classifier-free: chance each id is replaced by null in training
        dtype="float32",        # compute dtype, 'float32' or 'bfloat16'; params stay float32
        upsampler=dict(
            upper_vocab_size=0,  # codebook size of the coarser level; 0 = not an upsampler
            upper_hop=1,         # codes of this level per code of the coarser level
        ),
    ))


def prior_from_config(config: Mapping[str, Any]) -> "Prior":
    fields = ml_collections.ConfigDict(config).to_dict()
    upsampler = fields.pop("upsampler", {})
    return build(Prior, **fields, **upsampler)


# ---------------------------------------------------------------------------- layers

def rope(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
    """Rotates feature pairs (i, i + D/2) of x [B, T, H, D] by angle position * base^(-2i/D)."""
    half = x.shape[-1] // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions.astype(jnp.float32)[:, None, None] * freqs  # [T, 1, D/2]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


class SelfAttention(nn.Module):
    """Causal multi-head attention with RoPE. Without a cache the T inputs attend among
    themselves; with one, their keys/values are written at positions[0] and the queries attend
    to every cached position <= their own (later, stale entries are masked out)."""

    num_heads: int
    head_dim: int
    dtype: Any

    @nn.compact
    def __call__(self, x, positions, cache: dict[str, jax.Array] | None):
        qkv = nn.DenseGeneral((3, self.num_heads, self.head_dim), dtype=self.dtype,
                              kernel_init=_INIT, name="qkv")(x)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = rope(q, positions), rope(k, positions)
        # Heads before positions, as in the cache, so that both attention dots read the cache
        # in place: with positions first XLA:CPU transposes the whole cache on every step.
        q, k, v = (jnp.swapaxes(t, 1, 2) for t in (q, k, v))
        key_positions = positions
        if cache is not None:
            cache = {name: jax.lax.dynamic_update_slice(
                cache[name], new.astype(cache[name].dtype), (0, 0, positions[0], 0))
                for name, new in (("k", k), ("v", v))}
            k, v = cache["k"], cache["v"]
            key_positions = jnp.arange(k.shape[2])
        scores = jnp.einsum("bhqd,bhkd->bhqk", q / math.sqrt(self.head_dim), k,
                            preferred_element_type=jnp.float32)
        mask = key_positions[None, :] <= positions[:, None]
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v.astype(self.dtype))
        out = nn.DenseGeneral(x.shape[-1], axis=(-3, -1), dtype=self.dtype, kernel_init=_INIT,
                              name="out")(out)
        return out, cache


class Block(nn.Module):
    """Pre-norm transformer block; the residual stream stays float32."""

    num_heads: int
    head_dim: int
    mlp_dim: int
    dropout: float
    dtype: Any

    @nn.compact
    def __call__(self, x, positions, cache, train: bool):
        drop = nn.Dropout(self.dropout, deterministic=not train)
        h, cache = SelfAttention(self.num_heads, self.head_dim, self.dtype)(
            nn.LayerNorm(dtype=self.dtype)(x), positions, cache)
        x = x + drop(h)
        h = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=_INIT)(
            nn.LayerNorm(dtype=self.dtype)(x))
        h = nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=_INIT)(nn.gelu(h))
        return x + drop(h), cache


# ---------------------------------------------------------------------------- model

_OTHER_STAGE = -1e9  # the logit of a token of another residual-VQ stage than the position's


class Prior(nn.Module):
    """`__call__(tokens, composer, ensemble, train)` -> logits [B, T, K] (teacher forcing);
    `prefill` / `decode_step` run the same network through a KV cache (`init_cache`);
    `sample` / `sample_uncached` generate codes. composer/ensemble: int32 [B], or None = null."""

    vocab_size: int
    num_layers: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    max_len: int
    dropout: float = 0.0
    num_composers: int = 0
    num_ensembles: int = 0
    cond_drop_prob: float = 0.0
    dtype: str = "float32"
    upper_vocab_size: int = 0
    upper_hop: int = 1
    stages: int = 1

    def setup(self):
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype {self.dtype!r} must be 'float32' or 'bfloat16'")
        if self.vocab_size % self.stages:
            raise ValueError(f"vocab_size {self.vocab_size} is not stages={self.stages} codebooks")
        width = self.num_heads * self.head_dim
        self.embed = nn.Embed(self.vocab_size, width, embedding_init=_INIT)
        self.start = self.param("start", _INIT, (width,))
        # One extra row per table: the null id.
        self.cond_embeds = [nn.Embed(n + 1, width, embedding_init=_INIT, name=name)
                            for name, n in (("composer_embed", self.num_composers),
                                            ("ensemble_embed", self.num_ensembles)) if n]
        if self.upper_vocab_size:
            self.upper_embed = nn.Embed(self.upper_vocab_size, width, embedding_init=_INIT)
            self.phase_embed = nn.Embed(self.upper_hop, width, embedding_init=_INIT)
        self.blocks = [Block(self.num_heads, self.head_dim, self.mlp_dim, self.dropout,
                             jnp.dtype(self.dtype)) for _ in range(self.num_layers)]
        self.final_norm = nn.LayerNorm(dtype=jnp.dtype(self.dtype))
        self.head = nn.Dense(self.vocab_size, dtype=jnp.dtype(self.dtype), kernel_init=_INIT)

    def __call__(self, tokens, composer=None, ensemble=None, train: bool = False,
                 upper=None, offset=0):
        """Logits [B, T, K] float32 whose row t predicts tokens[:, t] from tokens[:, :t]."""
        if tokens.shape[1] > self.max_len:
            raise ValueError(f"{tokens.shape[1]} codes exceed the context max_len={self.max_len}")
        previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
        return self._forward(previous, jnp.arange(tokens.shape[1]), composer, ensemble, None,
                             train, upper, offset)[0]

    def prefill(self, tokens, composer, ensemble, cache: Cache, upper=None, offset=0):
        """Encodes [start, tokens] (W + 1 positions) into a cache: (logits [B, W + 1, K], cache).
        The last row predicts the code after `tokens`."""
        previous = jnp.pad(tokens, ((0, 0), (1, 0)))
        return self._forward(previous, jnp.arange(previous.shape[1]), composer, ensemble, cache,
                             False, upper, offset)

    def decode_step(self, token, position, composer, ensemble, cache: Cache, upper=None,
                    offset=0):
        """Feeds one input at `position` (token [B], the code before it; ignored at position 0,
        whose input is the start vector): (logits [B, K] for the code at `position`, cache)."""
        positions = jnp.reshape(position, (1,)).astype(jnp.int32)
        logits, cache = self._forward(token[:, None], positions, composer, ensemble, cache,
                                      False, upper, offset)
        return logits[:, 0], cache

    @nn.nowrap
    def init_cache(self, batch_size: int) -> Cache:
        shape = (batch_size, self.num_heads, self.max_len, self.head_dim)
        return tuple({"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
                     for _ in range(self.num_layers))

    def _forward(self, previous, positions, composer, ensemble, cache, train, upper, offset):
        """previous [B, T]: the code fed at each of `positions` (ignored at position 0)."""
        start = self._start_vector(previous.shape[0], composer, ensemble, train)
        x = jnp.where((positions == 0)[None, :, None], start[:, None], self.embed(previous))
        if self.upper_vocab_size:
            if upper is None:
                raise ValueError("an upsampler prior needs the coarser level's codes `upper`")
            targets = offset + positions
            # Clipped: padded positions past the end of `upper` must not read garbage.
            x = x + self.upper_embed(jnp.take(upper, targets // self.upper_hop, axis=1,
                                              mode="clip"))
            x = x + self.phase_embed(targets % self.upper_hop)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, positions, None if cache is None else cache[i], train)
            new_cache.append(layer_cache)
        logits = self.head(self.final_norm(x)).astype(jnp.float32)
        if self.stages > 1:
            stage = (offset + positions) % self.stages
            token_stage = jnp.arange(self.vocab_size) // (self.vocab_size // self.stages)
            # Finite, so that guidance's cond - uncond stays 0 there instead of NaN.
            logits = jnp.where(token_stage == stage[:, None], logits, _OTHER_STAGE)
        return logits, None if cache is None else tuple(new_cache)

    def _start_vector(self, batch_size, composer, ensemble, train):
        start = jnp.broadcast_to(self.start, (batch_size, self.start.shape[0]))
        tables = iter(self.cond_embeds)
        for ids, n in ((composer, self.num_composers), (ensemble, self.num_ensembles)):
            if not n:
                continue
            ids = jnp.full((batch_size,), -1, jnp.int32) if ids is None else jnp.asarray(ids)
            ids = jnp.where(ids < 0, n, ids)
            if train and self.cond_drop_prob > 0:
                drop = jax.random.bernoulli(self.make_rng("dropout"), self.cond_drop_prob,
                                            ids.shape)
                ids = jnp.where(drop, n, ids)
            start = start + next(tables)(ids)
        return start

    @nn.nowrap
    def sample(self, params, rng, num_samples: int, length: int, composer=None, ensemble=None,
               temperature=1.0, top_k=0, top_p=1.0, guidance_scale=1.0, prime=None, upper=None,
               cached: bool = True) -> jax.Array:
        """Codes int32 [num_samples, length], starting with `prime` [num_samples, P] if given.

        composer / ensemble: an id or ids [num_samples], None = null. temperature 0 is greedy;
        top_k 0 and top_p 1 filter nothing. guidance_scale s mixes logits as
        uncond + s * (cond - uncond); at 1, or for a model without conditioning, it is the
        plain conditional and costs no extra batch.
        `upper` [num_samples, >= ceil(length / upper_hop)] for an upsampler prior. One
        compilation per (model, num_samples, length, P, guided); the rest are traced values.
        """
        def ids(x):
            return jnp.broadcast_to(jnp.asarray(-1 if x is None else x, jnp.int32),
                                    (num_samples,))

        prime = jnp.zeros((num_samples, 0), jnp.int32) if prime is None else jnp.asarray(prime)
        prime = jnp.broadcast_to(prime.astype(jnp.int32), (num_samples, prime.shape[-1]))
        if not 0 <= prime.shape[1] < length:
            raise ValueError(f"prime of {prime.shape[1]} codes leaves nothing to sample in "
                             f"length {length}")
        if self.upper_vocab_size:
            if upper is None or upper.shape[-1] * self.upper_hop < length:
                raise ValueError(f"an upsampler prior needs `upper` covering {length} codes")
            upper = jnp.broadcast_to(jnp.asarray(upper, jnp.int32),
                                     (num_samples, upper.shape[-1]))
        guided = float(guidance_scale) != 1.0 and bool(self.num_composers or self.num_ensembles)
        return _generate(self, params, rng, prime, ids(composer), ids(ensemble), upper,
                         jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p),
                         jnp.float32(guidance_scale), length=length, guided=guided,
                         cached=cached)

    @nn.nowrap
    def sample_uncached(self, *args, **kwargs) -> jax.Array:
        """`sample` recomputing the whole window's forward pass for every code: the reference
        the cached path must reproduce, and the baseline of benchmarks/sampling.py."""
        return self.sample(*args, **kwargs, cached=False)


@functools.partial(jax.jit, static_argnames=("model", "length", "guided", "cached"))
def _generate(model: Prior, params, rng, prime, composer, ensemble, upper, temperature, top_k,
              top_p, guidance_scale, *, length: int, guided: bool, cached: bool):
    num_samples, num_primed = prime.shape
    context, keep = model.max_len, model.max_len // 2
    variables = {"params": params}
    if guided:
        # Second half of the model batch: the same samples with null conditioning.
        null = jnp.full_like(composer, -1)
        composer, ensemble = (jnp.concatenate([c, null]) for c in (composer, ensemble))
        upper = None if upper is None else jnp.concatenate([upper, upper])

    def model_batch(codes):
        return jnp.concatenate([codes, codes]) if guided else codes

    def pick(logits, n):
        if guided:
            cond, uncond = jnp.split(logits, 2)
            logits = uncond + guidance_scale * (cond - uncond)
        return sample_logits(jax.random.fold_in(rng, n), logits, temperature, top_k, top_p)

    def encode(codes, window_start, size):
        """Fresh cache holding start + codes[window_start : window_start + size]."""
        window = jax.lax.dynamic_slice_in_dim(codes, window_start, size, axis=1)
        logits, cache = model.apply(
            variables, model_batch(window), composer, ensemble,
            model.init_cache(composer.shape[0]), upper, window_start, method="prefill")
        return logits[:, -1], cache

    def uncached_logits(codes, window_start, n):
        window = jax.lax.dynamic_slice_in_dim(codes, window_start, context, axis=1)
        logits = model.apply(variables, model_batch(window), composer, ensemble,
                             upper=upper, offset=window_start)
        return jax.lax.dynamic_index_in_dim(logits, n - window_start, axis=1, keepdims=False)

    # Padded by a context, so window slices never run past the end (where XLA would clamp).
    codes = jnp.zeros((num_samples, length + context), jnp.int32).at[:, :num_primed].set(prime)
    first_start = 0 if num_primed < context else num_primed - keep
    if cached:
        logits, cache = encode(codes, first_start, num_primed - first_start)
    else:
        logits, cache = uncached_logits(codes, first_start, num_primed), None
    # Whether some code will find the cache full; statically known, spares compiling the rebuild.
    may_fill = length - 1 >= first_start + context

    def step(carry, n):
        """Draws code n, then computes the logits for code n + 1."""
        codes, window_start, logits, cache = carry
        codes = codes.at[:, n].set(pick(logits, n))
        full = n + 1 - window_start == context
        if cached:
            def advance():
                return model.apply(variables, model_batch(codes[:, n]), n + 1 - window_start,
                                   composer, ensemble, cache, upper, window_start,
                                   method="decode_step")

            if may_fill:
                logits, cache = jax.lax.cond(full, lambda: encode(codes, n + 1 - keep, keep),
                                             advance)
            else:
                logits, cache = advance()
        window_start = jnp.where(full, n + 1 - keep, window_start)
        if not cached:
            logits = uncached_logits(codes, window_start, n + 1)
        return (codes, window_start, logits, cache), None

    (codes, _, logits, _), _ = jax.lax.scan(
        step, (codes, jnp.int32(first_start), logits, cache),
        jnp.arange(num_primed, length - 1, dtype=jnp.int32))
    return codes.at[:, length - 1].set(pick(logits, length - 1))[:, :length]


# ---------------------------------------------------------------------------- sampling filters

def top_k_filter(logits: jax.Array, k) -> jax.Array:
    """Keeps exactly the k largest logits along the last axis (ties go to the lower index);
    the rest become -inf. k <= 0 keeps all."""
    ranks = jnp.argsort(jnp.argsort(-logits, axis=-1), axis=-1)
    return jnp.where((ranks < k) | (k <= 0), logits, -jnp.inf)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus filter: keeps the smallest set of most probable entries whose probability mass
    reaches p (always at least the most probable one); the rest become -inf. p >= 1 keeps all."""
    order = jnp.argsort(-logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = (mass_before < p) | (jnp.arange(logits.shape[-1]) == 0) | (p >= 1)
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
    return jnp.where(keep, logits, -jnp.inf)


def sample_logits(rng, logits, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
    """One code per row of logits [B, K]: temperature, then top-k, then top-p, then a
    categorical draw; temperature 0 is the argmax (greedy)."""
    logits = logits.astype(jnp.float32)
    scaled = logits / jnp.maximum(temperature, 1e-6)
    drawn = jax.random.categorical(rng, top_p_filter(top_k_filter(scaled, top_k), top_p))
    return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


# ---------------------------------------------------------------------------- loss

def prior_loss(logits, tokens, mask=None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy in nats over the (masked) codes, with bits_per_code and accuracy."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    weights = jnp.ones_like(nll) if mask is None else mask.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weights), 1.0)
    ce = jnp.sum(nll * weights) / total
    accuracy = jnp.sum((jnp.argmax(logits, -1) == tokens) * weights) / total
    return ce, {"cross_entropy": ce, "bits_per_code": ce / math.log(2), "accuracy": accuracy}
