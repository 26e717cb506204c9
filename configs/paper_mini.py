r"""The paper-like minis on Fashion-MNIST at 28 px: what `make reproduce` trains.

`vmamba_paper_mini` and `plainmamba_paper_mini` (2x2 patches) run their heaviest stage on a
14x14 grid, where each `paper_like=hybrid_*` site removes one row and column (14-17% of the
tokens, as the paper's tables do on ImageNet grids). The recipe is configs/default.py's, with
no augmentation and no label smoothing: in a budget of a few epochs these models underfit, and
crops, flips and label smoothing only slowed them (vmamba_paper_mini, 1,500 steps at 14 px:
82.3% test top-1 with them, 86.6% without).

    python train.py --config configs/paper_mini.py:vmamba_paper_mini --workdir runs/vm
    python eval.py --workdir runs/vm --sweep configs/sweeps/paper_mini.py --weights ema

Measured times and accuracy: results/paper_minis.md (the machine and date are there).
"""

import ml_collections

from configs import default

# model -> (constructor overrides, steps of batch 64). PlainMamba's four scans with d_state 8
# and its 7x7 convolution made a training step 2.5x VMamba's (44 images/s forward + backward on
# the 2-core CPU); d_state 1 (as VMamba's) and a 3x3 convolution give 89 (VMamba: 110).
RECIPES = {
    "vmamba_paper_mini": ({}, 2400),
    "plainmamba_paper_mini": (dict(d_state=1, conv_size=3), 2000),
}


def get_config(model: str = "vmamba_paper_mini") -> ml_collections.ConfigDict:
    if model not in RECIPES:
        raise ValueError(f"configs/paper_mini.py: the argument must be one of {tuple(RECIPES)}, got {model!r}")
    config = default.get_config()
    config.model.name = model
    overrides, steps = RECIPES[model]
    config.model.overrides = ml_collections.ConfigDict(overrides)
    config.data.train_crop, config.data.flip, config.label_smoothing = "resize", False, 0.0
    config.total_steps = steps
    config.optimizer.lr = 3e-3
    config.checkpoint_every = 800
    return config
