"""musicflax: VQ-VAE + autoregressive prior for classical music (MusicNet), in JAX/Flax."""

__version__ = "0.1.0"
