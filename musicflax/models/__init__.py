"""Flax modules: VQ-VAE encoder/decoder, quantizers, losses, prior. Pure JAX."""

import dataclasses


def build(module_class, **fields):
    """`module_class(**fields)`, or a one-line ValueError naming the fields it does not have
    (a config saved by another version of musicflax) instead of a dataclass TypeError."""
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(module_class)})
    if unknown:
        raise ValueError(f"model config field(s) {', '.join(unknown)} unknown to this version's "
                         f"{module_class.__name__}")
    return module_class(**fields)
