r"""Vim-Tiny on ImageNet-1k from scratch, the DeiT-style recipe of the official Vim repository
(hustvl/Vim vim/scripts/pt-vim-t.sh: AdamW lr 5e-4 per 512 images, weight decay 0.05, 300 epochs,
5 warm-up epochs, cosine to 1e-5, label smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment
m9, bicubic random-resized crops; eval resize 256 / center-crop 224).

Data: `tfds:imagenet2012` prepared as ArrayRecord in config.data.dir (manual download; then
`tfds.builder("imagenet2012", data_dir=DIR).download_and_prepare(file_format="array_record")`).

Command (one host, all its devices):
  python train.py --config configs/imagenet_vim_tiny.py --workdir DIR --config.data.dir=TFDS_DIR
Hardware-specific variants: configs/mesh/. Expected: the paper reports 76.1% top-1 for Vim-Tiny;
not run by this project (no accelerator here).
"""

from configs import default

IMAGENET_TRAIN_IMAGES = 1_281_167


def get_config():
    config = default.get_config()
    config.model.name = "vim_tiny"
    config.model.overrides = dict(drop_path_rate=0.0)
    config.data.name = "tfds:imagenet2012"
    config.data.eval_split = "validation"
    config.data.image_size = 224
    config.data.train_crop = "random_resized_crop"
    config.data.randaugment = "2,9"
    config.data.mixup_alpha = 0.8
    config.data.cutmix_alpha = 1.0
    config.data.eval_crop_pct = 0.875
    config.data.num_threads = 16
    config.data.prefetch = 4
    config.batch_size = 1024
    config.eval_batch_size = 1000
    steps_per_epoch = IMAGENET_TRAIN_IMAGES // config.batch_size
    config.total_steps = 300 * steps_per_epoch
    config.optimizer.lr = 5e-4 * config.batch_size / 512
    config.optimizer.min_lr = 1e-5
    config.optimizer.warmup_steps = 5 * steps_per_epoch
    config.optimizer.weight_decay = 0.05
    config.optimizer.grad_clip = 0.0
    config.label_smoothing = 0.1
    config.ema_decay = 0.0
    config.dtype = "bfloat16"
    config.checkpoint_every = 2000
    config.log_every = 100
    config.eval_every = 10 * steps_per_epoch
    return config
