"""Flax modules: VQ-VAE encoder/decoder, quantizers, losses, prior. Pure JAX."""

import dataclasses


class UnknownFieldError(ValueError):
    """A model config names fields its module does not have (saved by another version)."""


def build(module_class, **fields):
    """`module_class(**fields)`, or an `UnknownFieldError` naming the fields it does not have,
    instead of a dataclass TypeError."""
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(module_class)})
    if unknown:
        raise UnknownFieldError(f"model config field(s) {', '.join(unknown)} unknown to this "
                                f"version's {module_class.__name__}")
    return module_class(**fields)
