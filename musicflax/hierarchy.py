"""A hierarchy of priors over one VQ-VAE's levels, and ancestral sampling through it.

A top-level prior over the coarsest level (conditioned on composer and ensemble), then one
upsampler prior per finer level, each reading the codes of the level above it (Jukebox's
design). Sampling draws the top level, then each finer level given the one above, and the
finest level's codes are what the VQ-VAE decodes. A single top-level prior is a hierarchy of
one. Used by `musicflax.sample` and by the `generated` evaluator.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from musicflax import app


@dataclasses.dataclass(frozen=True)
class Hierarchy:
    """Opened prior runs (musicflax.train.run.Run), coarsest level first."""

    runs: tuple

    def __post_init__(self):
        top = self.runs[0].task
        if top.upper_level >= 0:
            raise app.UserError(f"{self.runs[0].workdir} is an upsampler (of level {top.level} "
                                f"from {top.upper_level}): the first prior must be a top-level one")
        for above, below in zip(self.runs, self.runs[1:]):
            a, b = above.task, below.task
            if b.vqvae.workdir != a.vqvae.workdir or \
                    int(b.vqvae.state.step) != int(a.vqvae.state.step):
                raise app.UserError(f"{below.workdir} models codes of {b.vqvae.workdir} step "
                                    f"{int(b.vqvae.state.step)}, {above.workdir} those of "
                                    f"{a.vqvae.workdir} step {int(a.vqvae.state.step)}")
            if b.upper_level != a.level:
                raise app.UserError(f"{below.workdir} upsamples from level {b.upper_level}, but "
                                    f"the prior above it models level {a.level}")

    @property
    def tasks(self):
        return [r.task for r in self.runs]

    @property
    def finest(self):
        return self.runs[-1].task

    @property
    def vocab(self):
        return self.tasks[0].vocab

    def prime(self, recording: int, seconds: float) -> list[np.ndarray]:
        """Every level's tokens of the first `seconds` of a recording (a train or validation
        recording of the VQ-VAE's data)."""
        primes = []
        for task in self.tasks:
            for codeset in task.codesets():
                hit = np.flatnonzero(codeset.ids == recording)
                if not len(hit):
                    continue
                seq = codeset.sequences()[hit[0]]
                count = max(1, round(seconds * codeset.codes_per_second))
                # Whole coarse codes / positions: the alignment of its windows.
                count = math.ceil(count / task.align) * task.align
                if count >= len(seq):
                    raise app.UserError(f"recording {recording} has only "
                                        f"{len(seq) / codeset.codes_per_second:.1f} s of codes")
                primes.append(seq[:count])
                break
            else:
                raise app.UserError(f"recording {recording} is in no split of the prior's data")
        return primes

    def sample(self, seed: int, num: int, seconds: float, composer: int = -1,
               ensemble: int = -1, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               guidance: float = 1.0, primes: list[np.ndarray] | None = None
               ) -> tuple[list[np.ndarray], list[dict]]:
        """(tokens per level [num, L_l], per level {level, codes, seconds, realtime}).

        Each level's tokens cover the same music; `seconds` of it at the top level rounded up
        to whole top-level codes. The time of a level includes compiling its sampler once.
        """
        key = jax.random.PRNGKey(seed)
        tokens, stats, upper = [], [], None
        for depth, (opened, task) in enumerate(zip(self.runs, self.tasks)):
            if upper is None:
                positions = math.ceil(seconds * task.codes_per_second / task.align)
                length = max(1, positions) * task.align
            else:
                length = upper.shape[1] * task.upper_hop
            prime = None if primes is None else np.broadcast_to(primes[depth],
                                                                (num, len(primes[depth])))
            start = time.perf_counter()
            out = np.asarray(task.model.sample(
                opened.state.params, jax.random.fold_in(key, depth), num, length, composer,
                ensemble, temperature=temperature, top_k=top_k, top_p=top_p,
                guidance_scale=guidance, prime=prime, upper=upper))
            elapsed = time.perf_counter() - start
            music = length / task.codes_per_second
            stats.append({"level": task.level, "tokens": length, "seconds": elapsed,
                          "music_seconds": music, "realtime": num * music / elapsed})
            tokens.append(out)
            upper = out
        return tokens, stats
