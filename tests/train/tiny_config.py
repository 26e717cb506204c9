"""A tiny vim_mini on synthetic 16x16 images: seconds per run on CPU, for the training tests.

get_config("vit_mini") swaps the backbone.
"""

import ml_collections

from configs import default


def get_config(model: str = "vim_mini") -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = model
    config.model.overrides = ml_collections.ConfigDict(dict(depth=1, embed_dim=16, patch_size=4, drop_path_rate=0.1))
    if model == "vit_mini":
        config.model.overrides.num_heads = 2
    else:  # the loop, not the scan, is under test here: the plain recurrence compiles 2x faster
        config.model.overrides.scan_impl = "reference"
    config.data.name = "synthetic"
    config.data.image_size = 16
    config.data.synthetic = ml_collections.ConfigDict(dict(size=64, channels=1, num_classes=4, seed=0))
    config.data.num_threads = 1
    config.batch_size = 8
    config.eval_batch_size = 16
    config.total_steps = 6
    config.optimizer.warmup_steps = 2
    config.checkpoint_every = 2
    config.keep_checkpoints = 10
    config.log_every = 1
    config.progress_bar = False
    config.data.mixup_alpha = 0.8
    config.data.cutmix_alpha = 1.0
    return config
