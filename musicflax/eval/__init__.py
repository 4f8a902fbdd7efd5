"""Evaluation building blocks: audio metrics, linear probes, music statistics and figures."""
