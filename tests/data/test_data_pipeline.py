"""grain pipelines: determinism, per-host sharding, iterator state, eval padding; augmentation."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from sarf_jax.data import augment, eval_iterator, mixup_cutmix, train_iterator
from sarf_jax.data.pipeline import TrainTransform, parse_randaugment
from sarf_jax.data.sources import ArraySource


def source(n=20, size=8):
    images = np.arange(n * size * size, dtype=np.int64).reshape(n, size, size, 1) % 251
    return ArraySource(images.astype(np.uint8), np.arange(n) % 3, 3, (0.5,), (0.5,))


def config(**fields):
    base = dict(
        image_size=8,
        train_crop="pad_crop",
        crop_min_scale=0.08,
        pad=1,
        flip=True,
        randaugment="",
        eval_crop_pct=1.0,
        num_threads=2,
        prefetch=2,
    )
    return ml_collections.ConfigDict({**base, **fields})


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_training_stream_is_deterministic_and_reshuffles_each_epoch():
    a = take(train_iterator(source(), config(), global_batch_size=4, seed=3), 10)
    b = take(train_iterator(source(), config(), global_batch_size=4, seed=3), 10)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    epoch1 = np.concatenate([x["label"] for x in a[:5]])
    assert a[0]["image"].shape == (4, 8, 8, 1) and a[0]["image"].dtype == np.uint8
    assert sorted(epoch1.tolist()) == sorted((np.arange(20) % 3).tolist())  # one epoch = every example once
    other = take(train_iterator(source(), config(), global_batch_size=4, seed=4), 1)[0]
    assert not np.array_equal(other["image"], a[0]["image"])


def test_hosts_together_see_exactly_the_single_host_batch():
    single = take(train_iterator(source(), config(), global_batch_size=6, seed=0), 4)
    hosts = [
        take(train_iterator(source(), config(), global_batch_size=6, seed=0, process_index=p, process_count=3), 4)
        for p in range(3)
    ]
    for step in range(4):
        for field in ("image", "label"):
            together = np.concatenate([hosts[p][step][field] for p in range(3)])
            np.testing.assert_array_equal(together, single[step][field])


def test_iterator_state_restores_the_position():
    iterator = train_iterator(source(), config(), global_batch_size=4, seed=1)
    take(iterator, 3)
    state = iterator.get_state()
    expected = take(iterator, 2)
    restored = train_iterator(source(), config(), global_batch_size=4, seed=1)
    restored.set_state(state)
    for x, y in zip(take(restored, 2), expected):
        np.testing.assert_array_equal(x["image"], y["image"])


def test_eval_pass_covers_every_example_once_with_masked_padding():
    halves = [
        list(eval_iterator(source(n=10), config(), global_batch_size=4, channels=1, process_index=p, process_count=2))
        for p in range(2)
    ]
    batches = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*halves)]
    assert len(batches) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(mask, [1] * 10 + [0] * 2)
    np.testing.assert_array_equal(labels[:10], np.arange(10) % 3)


def test_imagenet_eval_resizes_shorter_side_to_256_and_center_crops_224():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    out = augment.resize_center_crop(image, 224, 0.875)
    expected = np.asarray(Image.fromarray(image).resize((341, 256), Image.BICUBIC))[16:240, 58:282]
    np.testing.assert_array_equal(out, expected)


def test_train_crops_and_randaugment_keep_shape_and_are_seeded():
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for crop in (
        lambda r: augment.random_resized_crop(image, 32, r),
        lambda r: augment.pad_random_crop(image, 32, 4, r),
        lambda r: augment.rand_augment(image, r, 3, 9),
    ):
        a, b = crop(np.random.default_rng(5)), crop(np.random.default_rng(5))
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.uint8 and a.shape[-1] == 3
    assert parse_randaugment("2,9") == (2, 9.0) and parse_randaugment("") is None
    with pytest.raises(ValueError, match=r"config.data.randaugment"):
        parse_randaugment("nine")


def test_crop_min_scale_bounds_the_random_resized_crop_area():
    image = np.random.default_rng(1).integers(0, 256, (16, 16, 1), dtype=np.uint8)
    whole = TrainTransform(16, "random_resized_crop", flip=False, crop_min_scale=1.0)
    for seed in range(5):  # the whole image (any aspect other than 1 does not fit), resized to itself
        out = whole({"image": image, "label": 0}, np.random.default_rng(seed))["image"]
        np.testing.assert_array_equal(out, image)
    default = TrainTransform(16, "random_resized_crop", flip=False)
    outs = [default({"image": image, "label": 0}, np.random.default_rng(seed))["image"] for seed in range(5)]
    assert any(not np.array_equal(out, image) for out in outs)


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_mixes_images_and_targets_with_the_same_weight(mixup_alpha, cutmix_alpha):
    images = jnp.stack([jnp.full((6, 6, 1), float(i)) for i in range(4)])
    targets = jax.nn.one_hot(jnp.arange(4), 4)
    for seed in range(3):
        mixed, mixed_targets = mixup_cutmix(
            jax.random.key(seed), images, targets, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha
        )
        np.testing.assert_allclose(mixed_targets.sum(-1), 1.0, rtol=1e-6)
        lam = float(mixed_targets[0, 0])  # sample 0 is mixed with sample 3
        np.testing.assert_allclose(float(mixed[0].mean()), 3 * (1 - lam), atol=1e-5)
    same = mixup_cutmix(jax.random.key(0), images, targets, mixup_alpha=0.0, cutmix_alpha=0.0)
    assert same[0] is images and same[1] is targets
