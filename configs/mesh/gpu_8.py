r"""Vim-Tiny ImageNet recipe (configs/imagenet_vim_tiny.py) on one host with 8 GPUs.

Mesh: data=8 (pure data parallelism; Vim-Tiny's 7M parameters fit every GPU). For larger models
use fsdp (e.g. data=2, fsdp=4) to split parameters and optimizer state, or tensor=2 to split the
Mamba inner dimension. Global batch 1024 = 128 per GPU, bf16 compute, the official recipe's lr.

Command:
  python train.py --config configs/mesh/gpu_8.py --workdir DIR --config.data.dir=TFDS_DIR
Several such hosts: add --coordinator_address=HOST0:1234 --num_processes=N --process_id=I on each
(and set mesh.data to 8 x N). Expected: 76.1% top-1 (paper); not measured by this project.
"""

from configs import imagenet_vim_tiny


def get_config():
    config = imagenet_vim_tiny.get_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 8, 1, 1
    config.data.num_threads = 32
    return config
