"""1D convolutional building blocks of the VQ-VAE: dilated residual stacks, encoder, decoder.

All layers are time-major (`[B, T, C]`). `dtype` is the compute dtype; parameters stay float32.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class SubPixelConvTranspose(nn.Module):
    """`nn.ConvTranspose(features, (kernel_size,), strides=(stride,), padding="SAME")`, the
    same parameters and the same function, computed as one small stride-1 convolution per
    output phase, interleaved (sub-pixel / depth-to-space).

    A transposed convolution is a convolution of the input dilated by `stride` (zeros between
    samples); XLA runs that dilation slowly (its gradient ~60x slower than a plain convolution
    of the same size on CPU, worse on GPU). Output frame q*stride + r only ever meets the
    kernel taps k = k_r (mod stride) of its phase r, at consecutive input frames q + d: each
    phase is an ordinary convolution with those taps, and no multiply is spent on the zeros.
    """

    features: int
    kernel_size: int
    stride: int
    dtype: Any = None

    def phases(self) -> list[tuple[list[int], int]]:
        """Per output phase r: (its kernel taps in order, the input offset of the first)."""
        k, s = self.kernel_size, self.stride
        # The padding lax.conv_transpose gives the dilated input for 'SAME'.
        low = k - 1 if s > k - 1 else math.ceil((k + s - 2) / 2)
        out = []
        for r in range(s):
            taps = [tap for tap in range(k) if (r + tap - low) % s == 0]
            out.append((taps, (r + taps[0] - low) // s if taps else 0))
        return out

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (self.kernel_size, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        dtype = self.dtype or jnp.result_type(x, kernel)
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        ys = []
        for taps, first in self.phases():
            if not taps:  # a kernel shorter than the stride leaves this phase empty
                ys.append(jnp.zeros((*x.shape[:-1], self.features), dtype))
                continue
            # y_r[q] = sum_j kernel[taps[j]] . x[q + first + j]; negative padding crops.
            ys.append(lax.conv_general_dilated(
                x, kernel[np.asarray(taps)], (1,), [(-first, first + len(taps) - 1)],
                dimension_numbers=("NWC", "WIO", "NWC")))
        y = jnp.stack(ys, axis=-2)
        y = y.reshape(*y.shape[:-3], y.shape[-3] * self.stride, self.features)
        return y + bias.astype(dtype)


class ResBlock(nn.Module):
    """act -> dilated conv (k=3) -> act -> conv (k=1), added back to the input."""

    width: int
    dilation: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.Conv(self.width, (3,), kernel_dilation=(self.dilation,), dtype=self.dtype)(
            nn.relu(x))
        h = nn.Conv(self.width, (1,), dtype=self.dtype)(nn.relu(h))
        return x + h


class ResStack(nn.Module):
    """`depth` residual blocks whose dilation grows by `growth`, restarting every `cycle` blocks.

    The decoder runs the dilations in reverse (largest first), mirroring the encoder.
    """

    width: int
    depth: int
    growth: int
    cycle: int
    reverse: bool = False
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dilations = [self.growth ** (i % self.cycle) for i in range(self.depth)]
        for dilation in reversed(dilations) if self.reverse else dilations:
            x = ResBlock(self.width, dilation, dtype=self.dtype)(x)
        return x


class _Tower(nn.Module):
    """Fields shared by `Encoder` and its mirror `Decoder`."""

    width: int
    depth: int
    dilation_growth: int
    dilation_cycle: int
    strides: Sequence[int]
    out_dim: int
    dtype: Any = None

    def stack(self, reverse: bool = False) -> ResStack:
        return ResStack(self.width, self.depth, self.dilation_growth, self.dilation_cycle,
                        reverse=reverse, dtype=self.dtype)


class Encoder(_Tower):
    """One strided conv (kernel 2*stride) + residual stack per stage, then a k=3 projection.

    The time axis shrinks by prod(strides); it must be divisible by that.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for stride in self.strides:
            # Total padding of `stride` makes the output exactly T / stride long for any stride.
            x = nn.Conv(self.width, (2 * stride,), strides=(stride,),
                        padding=[(stride // 2, stride - stride // 2)], dtype=self.dtype)(x)
            x = self.stack()(x)
        return nn.Conv(self.out_dim, (3,), dtype=self.dtype)(x)


class Decoder(_Tower):
    """Mirror of `Encoder`: k=3 input conv, then per stage (in reverse) a residual stack with
    reversed dilations and a transposed conv (kernel 2*stride, as sub-pixel convolution), then
    a k=3 output projection whose bias starts at `output_bias`."""

    output_bias: float = 0.0

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = nn.Conv(self.width, (3,), dtype=self.dtype)(z)
        for i, stride in enumerate(reversed(self.strides)):
            x = self.stack(reverse=True)(x)
            # Named as the nn.ConvTranspose it computes, whose parameters it shares.
            x = SubPixelConvTranspose(self.width, 2 * stride, stride, dtype=self.dtype,
                                      name=f"ConvTranspose_{i}")(x)
        return nn.Conv(self.out_dim, (3,), dtype=self.dtype,
                       bias_init=nn.initializers.constant(self.output_bias))(x)
