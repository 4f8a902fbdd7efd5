"""Flax modules: VQ-VAE encoder/decoder, quantizers, losses, prior. Pure JAX."""
