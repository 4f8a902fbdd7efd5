"""Analysis-by-synthesis encoding: codes chosen for what the decoder makes of them.

A VQ-VAE's encoder gives each position the code nearest its output vector. That is what
training assigns, not the code sequence whose decoding comes closest to the input: the
decoder reads every code together with its neighbours. `refine_codes` searches for a
better sequence by coordinate descent, as speech codecs do (CELP): position by position,
it tries the position's k nearest codes with the rest of the window held and keeps the one
whose decoded window has the lowest reconstruction loss. The rate does not change (the same
codebook); encoding costs k decodes per position and sweep. The loss never rises: the code
in place is always among the candidates.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax


def refine_codes(window_loss: Callable[[jax.Array], jax.Array], candidates: jax.Array,
                 sweeps: int) -> jax.Array:
    """Codes [B, T] found from `candidates` [B, T, k] (nearest first: [..., 0] is where the
    search starts) in `sweeps` passes over the positions, first to last.

    `window_loss(trial)` takes trial codes [B, k, T] (k variants of each window) and returns
    their reconstruction losses [B, k]; windows are searched independently.
    """
    batch, length, k = candidates.shape

    def visit(i, codes):
        position = i % length
        trial = jnp.repeat(codes[:, None], k, axis=1)
        trial = trial.at[:, :, position].set(candidates[:, position])
        best = jnp.argmin(window_loss(trial), axis=1)
        return trial[jnp.arange(batch), best]

    return lax.fori_loop(0, sweeps * length, visit, candidates[..., 0])
