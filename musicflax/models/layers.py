"""1D convolutional building blocks of the VQ-VAE: dilated residual stacks, encoder, decoder.

All layers are time-major (`[B, T, C]`). `dtype` is the compute dtype; parameters stay float32.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax


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
    reversed dilations and a transposed conv (kernel 2*stride), then a k=3 output projection
    whose bias starts at `output_bias`."""

    output_bias: float = 0.0

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        x = nn.Conv(self.width, (3,), dtype=self.dtype)(z)
        for stride in reversed(self.strides):
            x = self.stack(reverse=True)(x)
            x = nn.ConvTranspose(self.width, (2 * stride,), strides=(stride,), padding="SAME",
                                 dtype=self.dtype)(x)
        return nn.Conv(self.out_dim, (3,), dtype=self.dtype,
                       bias_init=nn.initializers.constant(self.output_bias))(x)
