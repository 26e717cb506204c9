r"""VMamba-mini (4x4 patches, a 7x7 first-stage grid) on Fashion-MNIST: what `make train` trains.

Command (`make train` runs both, then prints the table and writes results.md and the plot):
  python train.py --config configs/default.py --workdir runs/default
  python eval.py --workdir runs/default --sweep configs/sweeps/default.py --weights ema

Measured 2026-11-30 on the project's 2-core VM (Intel Xeon, idle, no accelerator), `make train`
from a fresh clone, setup excluded: 87.48% top-1 on the Fashion-MNIST test set with the EMA
weights (87.55% without) after 3,500 steps of batch 64 (~3.7 epochs, ~12 steps/s on tcmalloc),
then the dense / SARF-ToMe / SARF-EViT / EViT / ToMe table at `paper_like=hybrid_2p1`; 6 min 42 s
from the start of training to the printed table.

Why this model: of the visual Mamba minis it reaches the most accuracy per minute on a CPU
(at patch 2, a 14x14 grid, each image costs 3.6x the FLOPs). Its 7x7 grid is also why
SARF loses much more here than in the paper: one reduction site there removes a whole row and
column (7→6, 27% of the stage's tokens); see the README.

Switch backbone with one word: `--config.model.name=plainmamba_mini` (or `vim_mini`, `vit_mini`);
`config.model.overrides` (patch_size=4) applies to each of them.
Any key can be overridden on the command line, e.g. `--config.total_steps=100`.
Data: Debian's `dataset-fashion-mnist` IDX files (apt-get install dataset-fashion-mnist), or
`--config.data.dir=DIR` with the four IDX files.
"""

import ml_collections

from sarf_jax.data.config import default_data_config


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.name = "vmamba_mini"
    config.model.overrides = ml_collections.ConfigDict(dict(patch_size=4))  # constructor arguments
    config.init_from = ""  # a model directory (save_pretrained / convert) or a training workdir
    config.init_from_weights = "params"  # "ema": a training workdir's EMA weights
    config.reduction = "none"  # reduction active in training and eval, e.g. "sarf_tome:keep=0.6"

    config.data = default_data_config()  # sarf_jax/data/config.py: every data field and its default

    config.batch_size = 64  # global, over all hosts and devices
    config.eval_batch_size = 500
    config.total_steps = 3500
    config.grad_accum_steps = 1
    config.optimizer = ml_collections.ConfigDict(
        dict(lr=3e-3, min_lr=1e-5, warmup_steps=100, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0)
    )
    config.label_smoothing = 0.1
    config.ema_decay = 0.99  # 0: no EMA
    config.dtype = "float32"  # compute dtype; "bfloat16" on accelerators

    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.checkpoint_every = 500
    config.keep_checkpoints = 3
    config.log_every = 50
    config.eval_every = 0  # 0: evaluate at the end only
    config.profile_steps = 0  # N > 0: trace N steps (after this run's first two) into WORKDIR/profile/
    config.progress_bar = True
    return config
