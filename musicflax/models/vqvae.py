"""Multi-level (Jukebox-style) VQ-VAE over 1D windows `[B, T, C]`, and its configuration.

Level l is an independent encoder -> quantizer -> decoder whose hop is the product of the
strides of the first sum(downs_t[:l+1]) stages; every level reconstructs the whole input.

Typical use (the EMA codebook is state in the "codebook" collection, see quantizers.py):

    model = vqvae_from_config(config.model, input_channels=384)
    variables = model.init(jax.random.key(0), x, train=False)
    (outputs, aux), state = model.apply(variables, x, train=True, mutable=["codebook"],
                                        rngs={"restart": key})
    codes = model.apply(variables, x, method="encode")
    recon = model.apply(variables, codes[0], 0, method="decode")
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from musicflax.models import build
from musicflax.models.layers import Decoder, Encoder
from musicflax.models.losses import STFT_RESOLUTIONS
from musicflax.models.quantizers import EMAVectorQuantizer, ResidualVQ, make_quantizer

# Entries of the model config that configure the loss rather than the module.
LOSS_ENTRIES = ("output", "loss")


def default_model_config() -> ml_collections.ConfigDict:
    """Every model field with defaults suited to 128-frame piano-roll windows."""
    return ml_collections.ConfigDict(dict(
        width=64,                  # channels of every conv
        res_depth=4,               # residual blocks per down-sampling stage
        dilation_growth=3,         # dilation of block i: growth ** (i % dilation_cycle)
        dilation_cycle=4,
        levels=2,                  # how many of the levels below are built (1..len(downs_t))
        downs_t=(3, 2, 2),         # stride stages per level
        strides_t=(2, 2, 2),       # stride of each stage of a level -> hops 8, 32, 128
        quantizer=dict(
            type="ema_vq",         # 'ema_vq', 'rvq' (residual: `stages` EMA codebooks) or 'fsq'
            codebook_size=512,     # ema_vq / rvq: K per codebook (fsq: prod(fsq_levels))
            code_dim=64,           # ema_vq: D (fsq: len(fsq_levels))
            ema_decay=0.99,
            commitment=0.02,       # beta of beta * ||z - sg(e)||^2
            restart_threshold=1.0,  # EMA count below which a code is dead and restarted
            init="kmeans",         # 'random_batch' or 'kmeans' (first training batch)
            kmeans_iters=10,
            fsq_levels=(8, 5, 5, 5),
            stages=4,              # rvq: codebooks per position (codes [B, T, stages])
            quantizer_dropout=False,  # rvq: train with a random 1..stages of them per window
        ),
        # Per level (finest first), where levels differ: quantizer types and codebook sizes
        # overriding quantizer.type / quantizer.codebook_size ('' / 0: as above).
        level_quantizer_types=(),
        level_codebook_sizes=(),
        dtype="float32",           # compute dtype, 'float32' or 'bfloat16'; params stay f32
        output_bias=0.0,           # initial bias of the output layer (logits: -4.6 = 1% on)
        output="bernoulli",        # 'bernoulli' (piano-roll logits) or 'waveform'
        loss=dict(
            onset_weight=1.0,      # weight of the mean BCE over the onset channels
            spectral_weight=1.0,   # waveform: weight of the multi-resolution STFT loss
            stft_resolutions=STFT_RESOLUTIONS,  # (n_fft, hop, window length) each
        ),
    ))


def jukebox_model_config() -> ml_collections.ConfigDict:
    """Jukebox's published VQ-VAE (Dhariwal et al. 2020) on waveforms.

    Not reproduced: Jukebox's L-inf term and its scaling of the losses by the data's bandwidth;
    its spectral loss is replaced by this codebase's multi-resolution STFT loss.
    """
    config = default_model_config()
    config.update(width=64, res_depth=4, dilation_growth=3, dilation_cycle=4, levels=3,
                  downs_t=(3, 2, 2), strides_t=(2, 2, 2), output="waveform")
    config.quantizer.update(type="ema_vq", codebook_size=2048, code_dim=64, ema_decay=0.99,
                            commitment=0.02, restart_threshold=1.0, init="random_batch")
    config.loss.spectral_weight = 1.0
    return config


def level_quantizer(quantizer: Mapping[str, Any], level: int, types: Sequence[str] = (),
                    sizes: Sequence[int] = ()) -> dict:
    """The quantizer spec of one level: `quantizer` with that level's overrides."""
    spec = dict(quantizer)
    if level < len(types) and types[level]:
        spec["type"] = types[level]
    if level < len(sizes) and sizes[level]:
        spec["codebook_size"] = int(sizes[level])
    return spec


def vqvae_from_config(model_config: Mapping[str, Any], input_channels: int) -> VQVAE:
    """The module for a model config (`output` and `loss` are left to `losses.vqvae_loss`)."""
    fields = ml_collections.ConfigDict(model_config).to_dict()
    for entry in LOSS_ENTRIES:
        fields.pop(entry, None)
    # Hashable containers, so the module can be hashed (e.g. as a static jit argument).
    fields.update(downs_t=tuple(fields["downs_t"]), strides_t=tuple(fields["strides_t"]),
                  level_quantizer_types=tuple(fields.get("level_quantizer_types", ())),
                  level_codebook_sizes=tuple(fields.get("level_codebook_sizes", ())),
                  quantizer=flax.core.FrozenDict(
                      fields["quantizer"], fsq_levels=tuple(fields["quantizer"]["fsq_levels"])))
    return build(VQVAE, input_channels=input_channels, **fields)


class VQVAE(nn.Module):
    """`__call__(x, train)` -> (outputs, aux); `encode(x)` -> codes; `decode(codes, level)`.

    outputs: per level, the reconstruction [B, T, C] float32 (logits for piano-rolls).
    aux: `codes` (per level, int32 [B, T / hop]), `latents` (per level, the quantized vectors
    [B, T / hop, D] the decoder reads), `commit_loss` ([B] per window, summed over
    levels), `commit_losses` (per level, [B]) and `codebook_stats` (per level, see
    `quantizers.usage_stats`).
    """

    input_channels: int
    width: int
    res_depth: int
    dilation_growth: int
    dilation_cycle: int
    levels: int
    downs_t: Sequence[int]
    strides_t: Sequence[int]
    quantizer: Mapping[str, Any]
    dtype: str = "float32"
    output_bias: float = 0.0
    level_quantizer_types: Sequence[str] = ()
    level_codebook_sizes: Sequence[int] = ()

    def quantizer_of(self, level: int) -> dict:
        return level_quantizer(self.quantizer, level, self.level_quantizer_types,
                               self.level_codebook_sizes)

    @property
    def hops(self) -> tuple[int, ...]:
        """Input samples (frames) per code, per level."""
        return tuple(math.prod(self._strides(level)) for level in range(self.levels))

    def _strides(self, level: int) -> list[int]:
        return [s for d, s in zip(self.downs_t[:level + 1], self.strides_t) for _ in range(d)]

    def setup(self):
        if len(self.downs_t) != len(self.strides_t):
            raise ValueError(f"downs_t {self.downs_t} and strides_t {self.strides_t} differ in "
                             "length")
        if not 1 <= self.levels <= len(self.downs_t):
            raise ValueError(f"levels={self.levels} must be in 1..{len(self.downs_t)}")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype {self.dtype!r} must be 'float32' or 'bfloat16'")
        self.quantizers = [make_quantizer(self.quantizer_of(level))
                           for level in range(self.levels)]
        tower = dict(width=self.width, depth=self.res_depth,
                     dilation_growth=self.dilation_growth, dilation_cycle=self.dilation_cycle,
                     dtype=jnp.dtype(self.dtype))
        self.encoders = [Encoder(strides=self._strides(level), out_dim=q.dim, **tower)
                         for level, q in enumerate(self.quantizers)]
        self.decoders = [Decoder(strides=self._strides(level), out_dim=self.input_channels,
                                 output_bias=self.output_bias, **tower)
                         for level in range(self.levels)]

    def __call__(self, x: jax.Array, train: bool):
        x = self._check_input(x)
        outputs, codes, latents, commit_losses, stats = [], [], [], [], []
        for level in range(self.levels):
            q = self.quantizers[level](self.encoders[level](x), train)
            outputs.append(self.decoders[level](q.quantized).astype(jnp.float32))
            codes.append(q.codes)
            latents.append(q.quantized)
            commit_losses.append(q.commit_loss)
            stats.append(q.stats)
        return outputs, {"codes": codes, "latents": latents, "commit_loss": sum(commit_losses),
                         "commit_losses": commit_losses, "codebook_stats": stats}

    def encode(self, x: jax.Array) -> list[jax.Array]:
        """Codes per level, int32 [B, T / hop]; never updates the codebook."""
        x = self._check_input(x)
        return [q(enc(x), train=False).codes for enc, q in zip(self.encoders, self.quantizers)]

    def candidates(self, x: jax.Array, level: int, k: int) -> jax.Array:
        """The `k` codes nearest each encoder output of `level`, nearest first (what
        `models.search.refine_codes` chooses from): [B, T / hop, k], or [B, T / hop, stages,
        k] for residual VQ (each stage's nearest to what the nearest codes before it
        leave); VQ and residual-VQ levels only."""
        quantizer = self.quantizers[level]
        if not isinstance(quantizer, (EMAVectorQuantizer, ResidualVQ)):
            raise ValueError(f"code search needs an 'ema_vq' or 'rvq' quantizer; level "
                             f"{level} has {self.quantizer_of(level)['type']!r}")
        return quantizer.candidates(self.encoders[level](self._check_input(x)), k)

    def decode(self, codes: jax.Array | Sequence[jax.Array], level: int | None = None):
        """One level's codes [B, T_l] -> its output [B, T, C]; with `level=None`, a list of
        codes (one per level from level 0) -> the list of outputs."""
        if level is None:
            return [self.decode(c, i) for i, c in enumerate(codes)]
        return self.decode_vectors(self.quantizers[level].lookup(codes), level)

    def embed(self, x: jax.Array) -> list[jax.Array]:
        """Quantized latents per level, [B, T / hop, D]: what the codes stand for (probes,
        interpolation); never updates the codebook."""
        x = self._check_input(x)
        return [q(enc(x), train=False).quantized
                for enc, q in zip(self.encoders, self.quantizers)]

    def decode_vectors(self, vectors: jax.Array, level: int) -> jax.Array:
        """Latent vectors [B, T_l, D] (codebook entries or points between them) -> output."""
        return self.decoders[level](vectors).astype(jnp.float32)

    def _check_input(self, x: jax.Array) -> jax.Array:
        if x.ndim != 3 or x.shape[-1] != self.input_channels:
            raise ValueError(f"expected inputs [B, T, {self.input_channels}], got {x.shape}")
        if x.shape[1] % self.hops[-1]:
            raise ValueError(f"window length {x.shape[1]} is not a multiple of the hop "
                             f"{self.hops[-1]} of level {self.levels - 1}")
        # Piano-rolls arrive as uint8.
        return x.astype(jnp.float32)
