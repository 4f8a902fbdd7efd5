"""Evaluators as plug-ins (big_vision style): each a module with `run(ctx, cfg) -> dict`.

The trainer runs the ones its config names (`config.evals.<name>`) at every validation, and
`python -m musicflax.eval` runs the ones of the eval config offline, on the same Context
(musicflax.eval.context), so a key means the same thing in TensorBoard during training and
in report.json. `evaluate` runs them in a fixed order and returns one section per evaluator.
"""

from __future__ import annotations

from typing import Any, Callable

from musicflax import app
from musicflax.eval.evaluators import (codebook, generated, latent_space, loss, prior, probes,
                                       reconstruction)

EVALUATORS: dict[str, Callable[[Any, Any], dict]] = {
    "loss": loss.run,
    "codebook": codebook.run,
    "reconstruction": reconstruction.run,
    "probes": probes.run,
    "latent_space": latent_space.run,
    "prior": prior.run,
    "generated": generated.run,
}


def check(evals) -> None:
    unknown = set(evals or {}) - set(EVALUATORS)
    if unknown:
        raise app.UserError(f"unknown evaluators {sorted(unknown)}; known: {list(EVALUATORS)}")


# Evaluators that read the pitch probe's features of waveform windows (costly to compute).
NEEDS_PITCH_FEATURES = ("probes",)


def evaluate(ctx, evals) -> dict[str, dict]:
    """One section per enabled evaluator of `evals` (a config: name -> settings)."""
    check(evals)
    enabled = {name: settings for name, settings in (evals or {}).items()
               if settings is not None and settings.get("enabled", True)}
    ctx.pitch_features = any(name in enabled for name in NEEDS_PITCH_FEATURES)
    return {name: run(ctx, enabled[name]) for name, run in EVALUATORS.items() if name in enabled}


def flat_scalars(tree: dict, prefix: str = "") -> dict[str, float]:
    """Every number of a report as 'section/key/...': float (what TensorBoard gets)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_scalars(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out
