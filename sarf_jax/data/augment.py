"""Image augmentation: per-example crops, flips and RandAugment (NumPy + Pillow, in the input
pipeline, driven by the per-example generator grain derives from the seed and the example's
position), and batch-level mixup / cutmix (JAX, inside the train step).

Recipes follow timm as the official Vim / VMamba / PlainMamba training scripts use it
(`create_transform(is_training=True, auto_augment='rand-m9-mstd0.5-inc1', interpolation='bicubic')`,
`Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mode='batch')`); the RandAugment here
is a smaller re-implementation (13 ops, fixed magnitude), not a bit-exact copy.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageEnhance, ImageOps


def _pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _array(pil_image, channels: int) -> np.ndarray:
    array = np.asarray(pil_image)
    return array[..., None] if channels == 1 and array.ndim == 2 else array


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of an HWC uint8 image (Pillow, as torchvision's Resize)."""
    if image.shape[:2] == (height, width):
        return image
    return _array(_pil(image).resize((width, height), Image.BICUBIC), image.shape[-1])


def resize_center_crop(image: np.ndarray, size: int, crop_pct: float = 0.875) -> np.ndarray:
    """ImageNet evaluation: shorter side to floor(size / crop_pct) (bicubic), centre size x size.

    timm's eval transform with crop_pct 0.875 at 224: resize 256, center-crop 224.
    """
    if image.shape[:2] == (size, size) and crop_pct == 1.0:
        return image
    scale = math.floor(size / crop_pct)
    height, width = image.shape[:2]
    if height <= width:
        new_h, new_w = scale, max(scale, int(scale * width / height))
    else:
        new_h, new_w = max(scale, int(scale * height / width)), scale
    image = resize(image, new_h, new_w)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return image[top : top + size, left : left + size]


def pad_random_crop(image: np.ndarray, size: int, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by `pad` and take a random size x size window (the CIFAR/MNIST-style crop)."""
    image = resize(image, size, size)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    top, left = rng.integers(0, 2 * pad + 1, 2)
    return padded[top : top + size, left : left + size]


def random_resized_crop(
    image: np.ndarray, size: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> np.ndarray:
    """Inception crop (torchvision RandomResizedCrop): random area and aspect, resized bicubic."""
    height, width = image.shape[:2]
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            return resize(image[top : top + h, left : left + w], size, size)
    side = min(height, width)  # fallback: central square
    top, left = (height - side) // 2, (width - side) // 2
    return resize(image[top : top + side, left : left + side], size, size)


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_ops: int = 2, magnitude: float = 9) -> np.ndarray:
    """Apply `num_ops` ops drawn uniformly from RAND_AUGMENT_OPS at `magnitude` (0..10)."""
    pil_image = _pil(image)
    for index in rng.integers(0, len(RAND_AUGMENT_OPS), num_ops):
        level = magnitude / 10.0
        sign = 1 if rng.random() < 0.5 else -1
        pil_image = RAND_AUGMENT_OPS[index](pil_image, level, sign)
    return _array(pil_image, image.shape[-1])


def _affine(pil_image, matrix):
    return pil_image.transform(pil_image.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=128)


def _enhance(kind):
    return lambda im, level, sign: getattr(ImageEnhance, kind)(im).enhance(1.0 + sign * 0.9 * level)


RAND_AUGMENT_OPS = [  # (image, level in [0, 1], random sign) -> image
    lambda im, level, sign: im,
    lambda im, level, sign: ImageOps.autocontrast(im),
    lambda im, level, sign: ImageOps.equalize(im),
    lambda im, level, sign: im.rotate(sign * 30 * level, fillcolor=128),
    lambda im, level, sign: ImageOps.posterize(im, max(1, 8 - int(4 * level))),
    lambda im, level, sign: ImageOps.solarize(im, 256 - int(256 * level)),
    _enhance("Contrast"),
    _enhance("Brightness"),
    _enhance("Sharpness"),
    lambda im, level, sign: _affine(im, (1, sign * 0.3 * level, 0, 0, 1, 0)),  # shear x
    lambda im, level, sign: _affine(im, (1, 0, 0, sign * 0.3 * level, 1, 0)),  # shear y
    lambda im, level, sign: _affine(im, (1, 0, sign * 0.45 * level * im.size[0], 0, 1, 0)),  # translate x
    lambda im, level, sign: _affine(im, (1, 0, 0, 0, 1, sign * 0.45 * level * im.size[1])),  # translate y
]


def mixup_cutmix(
    rng: jax.Array,
    images: jax.Array,
    targets: jax.Array,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
):
    """timm `Mixup(mode='batch')`: one lambda for the batch, partner = the batch reversed.

    With both alphas > 0, cutmix is used with probability `switch_prob`. The cutmix box has area
    (1 - lambda) of the image, is clipped at the borders, and lambda is corrected to the clipped
    area. images (B, H, W, C) float, targets (B, classes) probabilities.
    """
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return images, targets
    choose, mix_key, cut_key, box_key = jax.random.split(rng, 4)
    use_cutmix = (
        (jax.random.uniform(choose) < switch_prob)
        if (mixup_alpha > 0 and cutmix_alpha > 0)
        else jnp.asarray(cutmix_alpha > 0)
    )
    lam_mix = jax.random.beta(mix_key, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else jnp.float32(1.0)
    lam_cut = jax.random.beta(cut_key, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else jnp.float32(1.0)

    height, width = images.shape[1:3]
    ratio = jnp.sqrt(1.0 - lam_cut)
    cut_h, cut_w = (height * ratio).astype(jnp.int32), (width * ratio).astype(jnp.int32)
    center_y = jax.random.randint(box_key, (), 0, height)
    center_x = jax.random.randint(jax.random.fold_in(box_key, 1), (), 0, width)
    y0, y1 = jnp.clip(center_y - cut_h // 2, 0, height), jnp.clip(center_y + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(center_x - cut_w // 2, 0, width), jnp.clip(center_x + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
    lam_cut = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)

    partner = images[::-1]
    cut_images = jnp.where(box[None, :, :, None], partner, images)
    mixed_images = lam_mix * images + (1.0 - lam_mix) * partner
    lam = jnp.where(use_cutmix, lam_cut, lam_mix).astype(targets.dtype)
    images = jnp.where(use_cutmix, cut_images, mixed_images)
    return images, lam * targets + (1.0 - lam) * targets[::-1]
