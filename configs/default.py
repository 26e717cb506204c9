r"""ViT-mini (4x4 patches) on Fashion-MNIST: what `make train` trains, minutes on a 2-core CPU.

Command:
  python train.py --config configs/default.py --workdir /tmp/sarf_fmnist

Expected: 72% top-1 on the Fashion-MNIST test set (0.7205; EMA weights 0.721) after 900 steps
(~1 epoch) in 6.6 minutes including start-up and evaluation (`make train`), measured 2026-11-26 on
the project's 2-core x86-64 VM while a test run shared its cores (~2.5-3 steps/s).

Switch backbone with one word: `--config.model.name=vim_mini` (or `vmamba_mini`, `plainmamba_mini`);
`config.model.overrides` (patch_size=4: a 7x7 token grid) applies to each of them.
The Mamba models cost several times more per step than the ViT on a CPU (their selective scans
run sequentially there), which is why the CPU default is the ViT baseline.
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
