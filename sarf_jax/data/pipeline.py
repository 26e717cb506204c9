"""grain pipelines: an endless shuffled, augmented training stream and an ordered evaluation pass.

Determinism: the order is a function of (seed, epoch) (grain's shuffle reshuffles every epoch)
and each example's augmentation draws from a generator seeded by (seed, its global position), so
batch k is the same whatever the number of hosts, threads or restarts. Per-host sharding gives
host p the p-th contiguous slice of every global batch (after augmentation), so the hosts' local
batches laid side by side along the mesh's batch axis are exactly the single-host global batch,
in the same order (which mixup's batch pairing depends on).
The iterator's state (grain `get_state`) is one integer and goes into every checkpoint.

Batches hold uint8 images (normalised on the device, which keeps host->device traffic 4x smaller)
and int32 labels; evaluation batches add a float `mask` that is 0 on padding.
"""

from __future__ import annotations

import dataclasses

import grain
import jax
import jax.numpy as jnp
import numpy as np

from sarf_jax.data import augment

TRAIN_CROPS = ("pad_crop", "random_resized_crop", "resize")


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 (or float in [0, 255]) NHWC -> float32 (x / 255 - mean) / std per channel, on the device."""
    return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


class HostSlice(grain.MapDataset):
    """Host `index` of `count`: element k is global position (k // local) * global + index * local + k % local."""

    def __init__(self, parent: grain.MapDataset, global_batch_size: int, index: int, count: int):
        super().__init__(parent)
        self.local = global_batch_size // count
        self.global_batch_size, self.index = global_batch_size, index
        self.length = len(parent) // global_batch_size * self.local

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        batch, offset = divmod(k, self.local)
        return self._parent[batch * self.global_batch_size + self.index * self.local + offset]


@dataclasses.dataclass(frozen=True)
class TrainTransform:
    """Per-example training augmentation (picklable, for grain workers)."""

    image_size: int
    crop: str = "pad_crop"
    pad: int = 2
    flip: bool = True
    randaugment: tuple[int, float] | None = None
    crop_min_scale: float = 0.08

    def __call__(self, example: dict, rng: np.random.Generator) -> dict:
        image = example["image"]
        if self.crop == "pad_crop":
            image = augment.pad_random_crop(image, self.image_size, self.pad, rng)
        elif self.crop == "random_resized_crop":
            image = augment.random_resized_crop(image, self.image_size, rng, scale=(self.crop_min_scale, 1.0))
        else:
            image = augment.resize(image, self.image_size, self.image_size)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        if self.randaugment:
            image = augment.rand_augment(image, rng, *self.randaugment)
        return {"image": np.ascontiguousarray(image), "label": np.int32(example["label"])}


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Deterministic evaluation preprocessing; positions past the dataset become masked padding."""

    source: object
    image_size: int
    crop_pct: float
    channels: int

    def __call__(self, index: int) -> dict:
        if index >= len(self.source):
            return {
                "image": np.zeros((self.image_size, self.image_size, self.channels), np.uint8),
                "label": np.int32(0),
                "mask": np.float32(0.0),
            }
        example = self.source[index]
        image = augment.resize_center_crop(example["image"], self.image_size, self.crop_pct)
        return {"image": image, "label": np.int32(example["label"]), "mask": np.float32(1.0)}


def parse_randaugment(spec: str) -> tuple[int, float] | None:
    """'2,9' -> (2 ops, magnitude 9); '' -> None."""
    if not spec:
        return None
    try:
        num_ops, magnitude = spec.split(",")
        parsed = int(num_ops), float(magnitude)
    except ValueError:
        parsed = None
    if parsed is None or parsed[0] < 1 or not 0 <= parsed[1] <= 10:
        raise ValueError(
            f"config.data.randaugment must be '' or 'num_ops,magnitude' with num_ops >= 1 and "
            f"magnitude in [0, 10], e.g. '2,9'; got {spec!r}"
        )
    return parsed


def train_transform(data_config) -> TrainTransform:
    if data_config.train_crop not in TRAIN_CROPS:
        raise ValueError(f"config.data.train_crop must be one of {TRAIN_CROPS}, got {data_config.train_crop!r}")
    return TrainTransform(
        data_config.image_size,
        data_config.train_crop,
        data_config.pad,
        data_config.flip,
        parse_randaugment(data_config.randaugment),
        data_config.crop_min_scale,
    )


def _read_options(data_config) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=data_config.num_threads, prefetch_buffer_size=data_config.prefetch)


def train_iterator(
    source, data_config, *, global_batch_size: int, seed: int, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
    """Endless iterator of this host's share of each global training batch."""
    if global_batch_size % process_count:
        raise ValueError(
            f"config.batch_size={global_batch_size} must be divisible by the number of processes ({process_count})"
        )
    dataset = (
        grain.MapDataset.source(source).shuffle(seed=seed).repeat().random_map(train_transform(data_config), seed=seed)
    )
    dataset = HostSlice(dataset, global_batch_size, process_index, process_count)
    return iter(
        dataset.batch(global_batch_size // process_count, drop_remainder=True).to_iter_dataset(
            _read_options(data_config)
        )
    )


def eval_iterator(
    source, data_config, *, global_batch_size: int, process_index: int = 0, process_count: int = 1, channels: int
):
    """One ordered pass over `source`, padded to whole global batches (padding has mask 0)."""
    num_batches = -(-len(source) // global_batch_size)
    transform = EvalTransform(source, data_config.image_size, data_config.eval_crop_pct, channels)
    dataset = grain.MapDataset.range(num_batches * global_batch_size).map(transform)
    dataset = HostSlice(dataset, global_batch_size, process_index, process_count)
    dataset = dataset.batch(global_batch_size // process_count)
    return iter(dataset.to_iter_dataset(_read_options(data_config)))
