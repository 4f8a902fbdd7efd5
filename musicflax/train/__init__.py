"""The one training loop both stages share: mesh, state, steps, checkpoints, logging."""
