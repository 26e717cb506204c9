"""Data sources on files the tests generate: IDX (Fashion-MNIST layout), image folders, TFDS
(mock_data), synthetic; and the errors for missing data."""

import ml_collections
import numpy as np
import pytest

from sarf_jax.data import make_source
from sarf_jax.data.idx import read_idx, write_idx
from sarf_jax.data.sources import FASHION_MNIST_FILES


def data_config(**fields):
    config = ml_collections.ConfigDict(
        dict(name="fashion_mnist", dir="", image_size=28, synthetic=dict(size=40, channels=3, num_classes=5, seed=1))
    )
    config.update(fields)
    return config


@pytest.fixture
def fmnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 5)):
        images_name, labels_name = FASHION_MNIST_FILES[split]
        write_idx(tmp_path / f"{images_name}.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(tmp_path / labels_name, rng.integers(0, 10, count))  # plain, not gzipped
    return tmp_path


def test_idx_round_trip_and_truncation_error(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), array)
    write_idx(tmp_path / "b", array)
    (tmp_path / "b").write_bytes((tmp_path / "b").read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        read_idx(tmp_path / "b")


def test_fashion_mnist_reads_idx_files_from_data_dir(fmnist_dir):
    train = make_source(data_config(dir=str(fmnist_dir)), "train")
    test = make_source(data_config(dir=str(fmnist_dir)), "test")
    assert (len(train), len(test), train.num_classes) == (12, 5, 10)
    example = train[3]
    assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8
    images = read_idx(fmnist_dir / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(example["image"][..., 0], images[3])
    assert example["label"] == int(read_idx(fmnist_dir / "train-labels-idx1-ubyte")[3])


def test_fashion_mnist_missing_files_name_the_directory(tmp_path):
    with pytest.raises(ValueError, match=r"config.data.dir='.*' has no train-images-idx3-ubyte"):
        make_source(data_config(dir=str(tmp_path)), "train")


def test_image_folder_labels_follow_sorted_class_names(tmp_path):
    from PIL import Image

    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((10, 12, 3), 40 * label + i, np.uint8)).save(tmp_path / "train" / name / f"{i}.png")
    source = make_source(data_config(name=f"imagefolder:{tmp_path}"), "train")
    assert (len(source), source.num_classes) == (4, 2)
    assert [source[i]["label"] for i in range(4)] == [0, 0, 1, 1]
    assert source[3]["image"].shape == (10, 12, 3) and source[3]["image"][0, 0, 0] == 41
    with pytest.raises(ValueError, match=r"no directory .*validation"):
        make_source(data_config(name=f"imagefolder:{tmp_path}"), "validation")


def test_tfds_data_source_through_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        source = make_source(data_config(name="tfds:mnist"), "train")
        assert len(source) == 6 and source.num_classes == 10
        example = source[2]
    assert example["image"].shape == (28, 28, 1) and example["image"].dtype == np.uint8
    assert 0 <= example["label"] < 10


def test_synthetic_is_deterministic_and_label_dependent():
    a, b = (make_source(data_config(name="synthetic"), "train") for _ in range(2))
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.shape == (40, 28, 28, 3) and len(make_source(data_config(name="synthetic"), "test")) == 10
    means = [a.images[a.labels == k].mean() for k in range(5) if np.any(a.labels == k)]
    assert means == sorted(means)


def test_unknown_source_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"config.data.name='mnist' is not a data source; valid: 'fashion_mnist'"):
        make_source(data_config(name="mnist"), "train")
