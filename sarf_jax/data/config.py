"""The default data config: the fields that sources, pipelines and augmentation read.

configs/default.py starts from it, and eval.py uses it for a converted model, which has no
training run's config.json to read its data settings from.
"""

import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    """Fashion-MNIST at 28 px, light augmentation, evaluation without a crop."""
    data = ml_collections.ConfigDict()
    data.name = "fashion_mnist"  # or tfds:<name>, imagefolder:<path>, synthetic
    data.dir = ""  # IDX files / TFDS data_dir; "" = the default place
    data.train_split = "train"
    data.eval_split = "test"
    data.image_size = 28
    data.train_crop = "pad_crop"  # pad_crop | random_resized_crop | resize
    data.crop_min_scale = 0.08  # random_resized_crop: smallest area fraction (ImageNet's 0.08)
    data.pad = 2
    data.flip = True
    data.randaugment = ""  # e.g. "2,9": 2 ops at magnitude 9
    data.mixup_alpha = 0.0
    data.cutmix_alpha = 0.0
    data.mix_switch_prob = 0.5
    data.eval_crop_pct = 1.0  # ImageNet: 0.875 (resize 256, center-crop 224)
    data.num_threads = 2
    data.prefetch = 8
    data.synthetic = ml_collections.ConfigDict(dict(size=1024, channels=1, num_classes=10, seed=0))
    return data
