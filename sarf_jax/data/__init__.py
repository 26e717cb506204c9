"""Input data: sources (fashion_mnist, tfds:<name>, imagefolder:<path>, synthetic), grain
pipelines (deterministic, per-host sharded, checkpointable) and augmentation."""

from sarf_jax.data.augment import mixup_cutmix
from sarf_jax.data.pipeline import eval_iterator, normalize, train_iterator
from sarf_jax.data.sources import make_source

__all__ = ["eval_iterator", "make_source", "mixup_cutmix", "normalize", "train_iterator"]
