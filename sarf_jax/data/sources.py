"""Random-access data sources: `len(source)` and `source[i] -> {"image": uint8 HWC, "label": int}`.

Names accepted by `make_source` (config.data.name):
  fashion_mnist      Debian's dataset-fashion-mnist IDX files (/usr/share/datasets/fashion-mnist,
                     or config.data.dir), else a prepared TFDS `fashion_mnist` (ArrayRecord);
  tfds:<name>        `tfds.data_source` (ArrayRecord / Parquet, prepared beforehand; no download,
                     no TensorFlow), e.g. tfds:imagenet2012 with config.data.dir = TFDS data_dir;
  imagefolder:<path> <path>/<split>/<class>/*.{png,jpg,jpeg}, classes in sorted order;
  synthetic          class-dependent random images, for benchmarks and tests.

Every source also carries `num_classes` and the per-channel `mean` / `std` (in [0, 1] units) that
normalise its images.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from sarf_jax.data.idx import read_idx

DEBIAN_FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))  # mean, std of the training images
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # as the official Vim/VMamba recipes
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")

MISSING_FASHION_MNIST = """\
Fashion-MNIST not found: no IDX files in {where} and no prepared TFDS fashion_mnist ({tfds_error}).
Do one of:
  apt-get install dataset-fashion-mnist       (Debian/Ubuntu: files in /usr/share/datasets/fashion-mnist)
  --config.data.dir=DIR                       (DIR holding {files}, optionally .gz)
  python -c "import tensorflow_datasets as tfds; tfds.data_source('fashion_mnist')"   (needs network)"""


@dataclasses.dataclass
class ArraySource:
    """In-memory images (N, H, W, C) uint8 and labels (N,)."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "label": int(self.labels[index])}


class TfdsSource:
    """`tfds.data_source(name)` records as {"image", "label"} (grayscale images keep 1 channel)."""

    def __init__(self, name: str, split: str, data_dir: str | None):
        import tensorflow_datasets as tfds

        try:
            self.records = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
            info = tfds.builder(name, data_dir=data_dir or None).info
        except Exception as error:  # DatasetNotFoundError, missing split, TFRecord-only preparation
            raise ValueError(
                f"config.data.name='tfds:{name}': cannot open split {split!r} in data_dir "
                f"{data_dir or '(TFDS default)'}: {error}. Prepare it first (ArrayRecord): "
                f"tfds.builder({name!r}, data_dir=...).download_and_prepare(file_format='array_record')"
            ) from error
        self.num_classes = info.features["label"].num_classes
        channels = info.features["image"].shape[-1]
        self.mean, self.std = IMAGENET_STATS if channels == 3 else ((0.5,) * channels, (0.5,) * channels)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {"image": np.asarray(record["image"], np.uint8), "label": int(record["label"])}


class ImageFolderSource:
    """Images under root/split/class/ decoded with Pillow to RGB."""

    def __init__(self, root: str, split: str):
        directory = pathlib.Path(root) / split
        if not directory.is_dir():
            raise ValueError(
                f"config.data.name='imagefolder:{root}': no directory {directory} "
                "(expected <root>/<split>/<class>/<image files>)"
            )
        self.classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
        self.files, labels = [], []
        for label, name in enumerate(self.classes):
            for file in sorted((directory / name).iterdir()):
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    self.files.append(file)
                    labels.append(label)
        if not self.files:
            raise ValueError(f"config.data.name='imagefolder:{root}': no images in {directory}/<class>/")
        self.labels = np.asarray(labels)
        self.num_classes = len(self.classes)
        self.mean, self.std = IMAGENET_STATS

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        from PIL import Image

        with Image.open(self.files[index]) as image:
            return {"image": np.asarray(image.convert("RGB")), "label": int(self.labels[index])}


def fashion_mnist(split: str, directory: str | None = None):
    """Fashion-MNIST from IDX files in `directory` (default: Debian's), else from TFDS."""
    if split not in FASHION_MNIST_FILES:
        raise ValueError(f"fashion_mnist: split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
    where = pathlib.Path(directory) if directory else DEBIAN_FASHION_MNIST
    found = [_find_idx(where, name) for name in FASHION_MNIST_FILES[split]]
    if all(found):
        images, labels = (read_idx(path) for path in found)
        if images.ndim != 3 or len(images) != len(labels):
            raise ValueError(
                f"fashion_mnist: {found[0]} holds {images.shape}, {found[1]} holds {labels.shape}; "
                "expected (N, 28, 28) images and N labels"
            )
        return ArraySource(images[..., None], labels.astype(np.int32), 10, *FASHION_MNIST_STATS)
    if directory:  # an explicit directory that lacks the files is an error, not a reason to try TFDS
        raise ValueError(
            f"config.data.dir={directory!r} has no {' / '.join(FASHION_MNIST_FILES[split])} IDX files (plain or .gz)"
        )
    try:
        source = TfdsSource("fashion_mnist", split, None)
    except ValueError as error:
        files = ", ".join(f + "[.gz]" for pair in FASHION_MNIST_FILES.values() for f in pair)
        raise ValueError(MISSING_FASHION_MNIST.format(where=where, tfds_error=error.__cause__, files=files)) from None
    source.mean, source.std = FASHION_MNIST_STATS
    return source


def _find_idx(directory: pathlib.Path, stem: str) -> pathlib.Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def synthetic(split: str, *, size: int, image_size: int, channels: int, num_classes: int, seed: int):
    """Random uint8 images whose mean brightness depends on the label, so a model can learn them."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    labels = rng.integers(0, num_classes, size).astype(np.int32)
    noise = rng.integers(0, 96, (size, image_size, image_size, channels))
    level = (labels * (160 // max(num_classes - 1, 1)))[:, None, None, None]
    images = np.clip(noise + level, 0, 255).astype(np.uint8)
    return ArraySource(images, labels, num_classes, (0.5,) * channels, (0.25,) * channels)


def make_source(data_config, split: str):
    """The source named by config.data.name for `split` (see the module docstring)."""
    name = data_config.name
    if name == "fashion_mnist":
        return fashion_mnist(split, data_config.get("dir") or None)
    if name == "synthetic":
        spec = data_config.synthetic
        return synthetic(
            split,
            size=spec.size if split == "train" else max(1, spec.size // 4),
            image_size=data_config.image_size,
            channels=spec.channels,
            num_classes=spec.num_classes,
            seed=spec.seed,
        )
    if name.startswith("tfds:") and len(name) > 5:
        return TfdsSource(name[5:], split, data_config.get("dir") or None)
    if name.startswith("imagefolder:") and len(name) > 12:
        return ImageFolderSource(name[12:], split)
    raise ValueError(
        f"config.data.name={name!r} is not a data source; valid: 'fashion_mnist', 'synthetic', "
        "'tfds:<name>', 'imagefolder:<path>'"
    )
