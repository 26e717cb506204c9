r"""Vim-Tiny ImageNet recipe (configs/imagenet_vim_tiny.py) on a Cloud TPU v5e-256 pod slice.

256 chips on 64 hosts (4 chips each, 16 GiB HBM per chip). Mesh: data=64 x fsdp=4 x tensor=1:
parameters and optimizer state are split over groups of 4 chips (FSDP), the batch over all 256.
Vim-Tiny would fit unsharded; fsdp=4 shows the layout that larger variants (vim_base) need.
Global batch 4096 (16 per chip) with the learning rate scaled linearly (5e-4 per 512 images).

Command, on every host of the slice (the hosts find each other: jax.distributed auto-detects TPU):
  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE --worker=all --command="cd sarf_jax && \
    python train.py --config configs/mesh/tpu_v5e_256.py --workdir gs://BUCKET/vim_tiny_v5e \
    --config.data.dir=gs://BUCKET/tensorflow_datasets"
Preemptible / spot slices: re-run the same command; it resumes from the newest checkpoint.
Expected: 76.1% top-1 (paper); not measured by this project.
"""

from configs import imagenet_vim_tiny


def get_config():
    config = imagenet_vim_tiny.get_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 64, 4, 1
    config.batch_size = 4096
    steps_per_epoch = imagenet_vim_tiny.IMAGENET_TRAIN_IMAGES // config.batch_size
    config.total_steps = 300 * steps_per_epoch
    config.optimizer.lr = 5e-4 * config.batch_size / 512
    config.optimizer.warmup_steps = 5 * steps_per_epoch
    config.eval_every = 10 * steps_per_epoch
    config.eval_batch_size = 4096
    config.checkpoint_every = 1000
    return config
