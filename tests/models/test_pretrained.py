"""Model directories: create(name, pretrained=DIR) and load_pretrained give the stored weights,
bit-exact at the stored size; another img_size resizes position embeddings (checked against
torch's bicubic); weights that do not fit and wrong names are clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from sarf_jax import models
from sarf_jax.models.pretrained import load_pretrained, save_pretrained

STORED_SIZE, LARGER_SIZE, CLASSES = 8, 12, 5  # patch 2: a 4x4 grid stored, loaded as 6x6
SMALL = {
    "vim_mini": {"depth": 2},
    "vit_mini": {"depth": 2},
    "plainmamba_mini": {"depth": 2},
    "vmamba_mini": {"depths": [1, 1]},
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """name -> (directory, the model saved there) for every mini, at STORED_SIZE."""
    saved = {}
    for seed, (name, overrides) in enumerate(SMALL.items()):
        model = models.create(name, num_classes=CLASSES, img_size=STORED_SIZE, rngs=nnx.Rngs(seed), **overrides)
        directory = tmp_path_factory.mktemp("pretrained") / name
        save_pretrained(directory, model, name=name, num_classes=CLASSES, img_size=STORED_SIZE, overrides=overrides)
        saved[name] = directory, model
    return saved


def images(size, seed=0):
    return jax.random.normal(jax.random.key(seed), (2, size, size, 3))


logits_of = nnx.jit(lambda model, x: model(x))  # one compiled program per model structure and size


def weights(model):
    return nnx.state(model, (nnx.Param, nnx.BatchStat))


def test_create_pretrained_is_load_pretrained_with_model_json_defaults(stored):
    directory, saved = stored["vim_mini"]
    model = models.create("vim_mini", pretrained=directory, drop_path_rate=0.1)  # no effect in eval
    loaded = load_pretrained(directory, drop_path_rate=0.1)
    assert model.head.out_features == CLASSES and model.img_size == STORED_SIZE and len(model.layers) == 2
    x = images(STORED_SIZE)
    np.testing.assert_array_equal(logits_of(model, x), logits_of(loaded, x))
    np.testing.assert_allclose(logits_of(model, x), logits_of(saved, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(SMALL))
def test_loading_at_the_stored_size_is_bit_exact(stored, name):
    directory, saved = stored[name]
    for model in (models.create(name, pretrained=directory, img_size=STORED_SIZE), load_pretrained(directory)):
        jax.tree.map(np.testing.assert_array_equal, weights(model), weights(saved))


def test_loaded_rng_streams_are_those_building_the_model_leaves(stored):
    """The weights are restored, never initialised; the model's structure, its RNG streams (drop
    path) and the caller's rngs still end as building the model would leave them."""
    directory, _ = stored["vim_mini"]
    rngs, built_rngs = nnx.Rngs(params=3, dropout=4), nnx.Rngs(params=3, dropout=4)
    loaded = load_pretrained(directory, rngs=rngs, drop_path_rate=0.1)
    built = models.create(
        "vim_mini", num_classes=CLASSES, img_size=STORED_SIZE, rngs=built_rngs, drop_path_rate=0.1, **SMALL["vim_mini"]
    )
    assert nnx.graphdef(loaded) == nnx.graphdef(built)
    streams = [nnx.to_flat_state(nnx.state(m, nnx.RngState)) for m in (loaded, built)]
    assert [path for path, _ in streams[0]] == [path for path, _ in streams[1]] and streams[0]
    for (path, a), (_, b) in zip(*streams):
        value = lambda v: jax.random.key_data(v) if jnp.issubdtype(v.dtype, jax.dtypes.prng_key) else v
        np.testing.assert_array_equal(value(a[...]), value(b[...]), err_msg=str(path))
    counts = [
        [(path, int(v[...])) for path, v in nnx.to_flat_state(nnx.state(r, nnx.RngCount))] for r in (rngs, built_rngs)
    ]
    assert counts[0] == counts[1] and counts[0][1][1] > 0  # the params stream advanced


@pytest.mark.parametrize("name", list(SMALL))
def test_loading_at_a_larger_size_keeps_every_other_weight(stored, name):
    directory, saved = stored[name]
    model = models.create(name, pretrained=directory, img_size=LARGER_SIZE)
    logits = logits_of(model, images(LARGER_SIZE))
    assert logits.shape == (2, CLASSES) and bool(jnp.isfinite(logits).all())
    loaded, original = nnx.to_flat_state(weights(model)), nnx.to_flat_state(weights(saved))
    assert [path for path, _ in loaded] == [path for path, _ in original]
    for (path, value), (_, saved_value) in zip(loaded, original):
        if path != ("pos_embed",):
            np.testing.assert_array_equal(value[...], saved_value[...], err_msg=str(path))


def torch_bicubic(grid, size):
    """(1, h, w, D) -> (1, size, size, D) with torch's bicubic, align_corners=False."""
    nchw = torch.from_numpy(np.asarray(grid, np.float64)).permute(0, 3, 1, 2)
    return F.interpolate(nchw, size=(size, size), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("name, stored_cls, loaded_cls", [("vit_mini", 0, 0), ("vim_mini", 8, 18)])
def test_class_token_entry_is_kept_and_the_patch_grid_resized_like_torch(stored, name, stored_cls, loaded_cls):
    """ViT's class token is first; Vim's sits in the middle of the sequence (h * w // 2)."""
    directory, saved = stored[name]
    old, new = (
        np.asarray(saved.pos_embed[...]),
        np.asarray(models.create(name, pretrained=directory, img_size=LARGER_SIZE).pos_embed[...]),
    )
    old_side, new_side = STORED_SIZE // 2, LARGER_SIZE // 2
    assert new.shape == (1, new_side**2 + 1, old.shape[-1])
    np.testing.assert_array_equal(new[:, loaded_cls], old[:, stored_cls])
    old_grid = np.delete(old, stored_cls, axis=1).reshape(1, old_side, old_side, -1)
    expected = torch_bicubic(old_grid, new_side).reshape(1, new_side**2, -1)
    np.testing.assert_allclose(np.delete(new, loaded_cls, axis=1), expected, atol=1e-5, rtol=0)


def test_vim_stride_override_resizes_to_the_finer_grid(stored):
    """As Vim's stride-8 fine-tunes start from the stride-16 weights: the grid follows the stride."""
    directory, saved = stored["vim_mini"]
    model = models.create("vim_mini", pretrained=directory, stride=1)
    assert model.grid == (7, 7) and model.pos_embed.shape == (1, 50, saved.pos_embed.shape[-1])
    np.testing.assert_array_equal(model.pos_embed[:, 24], saved.pos_embed[:, 8])


def test_plainmamba_resized_once_equals_the_stored_model_resizing_at_every_call(stored):
    """PlainMamba (like mmcls) resizes pos_embed in the forward pass for other image sizes; loading
    at that size resizes it once, to the same logits."""
    directory, saved = stored["plainmamba_mini"]
    model = models.create("plainmamba_mini", pretrained=directory, img_size=LARGER_SIZE)
    assert model.pos_embed.shape == (1, (LARGER_SIZE // 2) ** 2, model.embed_dim)
    x = images(LARGER_SIZE)
    np.testing.assert_allclose(logits_of(model, x), logits_of(saved, x), atol=1e-5, rtol=0)


def test_name_classes_and_missing_arguments_are_clear_errors(stored):
    directory, _ = stored["vim_mini"]
    with pytest.raises(ValueError, match=r"holds a 'vim_mini' model \(its model.json\), not 'vit_mini'"):
        models.create("vit_mini", pretrained=directory)
    with pytest.raises(ValueError, match=r"num_classes=7 differs from the 5 of its model.json"):
        models.create("vim_mini", pretrained=directory, num_classes=7)
    with pytest.raises(ValueError, match=r"in_chans=1 differs from the 3"):
        models.create("vim_mini", pretrained=directory, in_chans=1)
    with pytest.raises(TypeError, match=r"missing keyword arguments \['img_size', 'rngs'\]"):
        models.create("vim_mini", num_classes=3)


def test_weights_that_do_not_fit_are_a_clear_error_and_nothing_is_written(stored):
    directory, _ = stored["vim_mini"]
    before = sorted((p.relative_to(directory), p.stat().st_mtime_ns) for p in directory.rglob("*"))
    with pytest.raises(
        ValueError,
        match=r"do not fit the requested model \(img_size 8, overrides \{'depth': 3\}\)"
        r" \(0 shapes differ, \d+ missing, 0 unexpected",
    ):
        models.create("vim_mini", pretrained=directory, depth=3)
    with pytest.raises(
        ValueError,
        match=r"\(8 shapes differ, 0 missing, 0 unexpected; e.g. layers/0/mixer/A_b_log: "
        r"stored \(128, 16\), expected \(128, 8\)\)",
    ):
        load_pretrained(directory, d_state=8)
    assert sorted((p.relative_to(directory), p.stat().st_mtime_ns) for p in directory.rglob("*")) == before
