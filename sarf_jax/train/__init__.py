"""Training: the loop (train_and_evaluate), optimizer, steps, train state, checkpoints, metrics."""

from sarf_jax.train.loop import train_and_evaluate

__all__ = ["train_and_evaluate"]
