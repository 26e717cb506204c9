"""PlainMamba: the official fixture through from_official, official sizes (parameters, GFLOPs),
jit + grad on the mini variant, other input sizes, and bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from sarf_jax import models
from sarf_jax.convert import from_official, official_names
from sarf_jax.convert import plainmamba as adapter
from sarf_jax.evaluate import model_gflops, parameter_count
from sarf_jax.reduction import Spec


@pytest.fixture(scope="module")
def fixture(load_fixture):
    arrays, meta = load_fixture("plainmamba")
    state_dict = {k.removeprefix("sd/"): v for k, v in arrays.items() if k.startswith("sd/")}
    kwargs = {**meta["constructor_kwargs"], "num_classes": meta["num_classes"]}
    return arrays, meta, state_dict, kwargs


@pytest.fixture(scope="module")
def converted(fixture):
    _, _, state_dict, kwargs = fixture
    return from_official("plainmamba", kwargs, state_dict)


def test_official_fixture_logits_and_features(fixture, converted):
    arrays, meta, _, _ = fixture
    model = converted
    images = jnp.asarray(arrays["input"].transpose(0, 2, 3, 1))  # NCHW -> NHWC
    batch, dim = arrays["feat/pre_head"].shape
    tokens = lambda grid: np.asarray(grid).reshape(batch, -1, dim)  # (B, h, w, D) -> raster (B, L, D)

    np.testing.assert_allclose(jax.jit(model)(images), arrays["logits"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(tokens(model.patch_embed(images)), arrays["feat/patch_embed"], atol=5e-5, rtol=0)
    x = model.embed(images)
    assert x.shape[1:3] == tuple(meta["grid"])
    np.testing.assert_allclose(tokens(model.layers[0](x)), arrays["feat/layer0"], atol=5e-5, rtol=0)
    for layer in model.layers:
        x = layer(x)
    np.testing.assert_allclose(tokens(model.ln1(x)), arrays["feat/final_norm"], atol=5e-5, rtol=0)
    np.testing.assert_allclose(model.pool(x), arrays["feat/pre_head"], atol=5e-5, rtol=0)


def test_checkpoint_key_forms(fixture, converted):
    """mmcls keys (backbone.*, head.fc.*), bare backbone keys, and EMA-hook buffers (dropped)."""
    _, _, state_dict, kwargs = fixture
    bare = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
    ema = {"ema_backbone_ln1_weight": np.zeros(1, np.float32), "ema_head_fc_bias": np.zeros(1, np.float32)}
    for variant in (bare, {**state_dict, **ema}):
        model = from_official("plainmamba", kwargs, variant, rngs=nnx.Rngs(1))
        np.testing.assert_array_equal(
            model.layers[2].mamba.direction_Bs[...], converted.layers[2].mamba.direction_Bs[...]
        )
        np.testing.assert_array_equal(model.head.fc.kernel[...], converted.head.fc.kernel[...])
    assert adapter.rename("backbone.layers.0.mamba.A_log") == "layers.0.mamba.A_log"
    assert adapter.rename("head.fc.weight") == "head.fc.weight"
    assert adapter.rename("ema_backbone_pos_embed") is None


def abstract(name, **kwargs):
    return nnx.eval_shape(lambda: models.create(name, rngs=nnx.Rngs(0), **kwargs))


# Official figures: parameters with head / backbone only (measured on the official model, see
# docs/official_code.md#plainmamba-variants), GFLOPs at 224 px (published tables).
OFFICIAL = {
    "plainmamba_l1": (7.552, 7.359, 3.0),
    "plainmamba_l2": (26.146, 25.761, 8.1),
    "plainmamba_l3": (50.956, 50.507, 14.4),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_sizes_parameters_and_gflops(name):
    total, backbone, gflops = OFFICIAL[name]
    model = abstract(name, num_classes=1000, img_size=224)
    head = model.head.fc.kernel.size + model.head.fc.bias.size
    assert round(parameter_count(model) / 1e6, 3) == total
    assert round((parameter_count(model) - head) / 1e6, 3) == backbone
    assert abs(model_gflops(model, 224) / gflops - 1) < 0.03


@pytest.mark.parametrize("arch, name", [("L1", "plainmamba_l1"), ("L2", "plainmamba_l2"), ("L3", "plainmamba_l3")])
def test_official_arch_names_build_the_registered_variants(arch, name):
    built = nnx.eval_shape(lambda: adapter.build({"arch": arch, "img_size": 224}, nnx.Rngs(0)))
    registered = abstract(name, num_classes=1000, img_size=224)
    shapes = lambda m: {k: v[0].shape for k, v in official_names(m).items()}
    assert shapes(built) == shapes(registered)


def test_mini_is_a_14x14_grid_for_fashion_mnist():
    model = abstract("plainmamba_mini", num_classes=10, img_size=28, in_chans=1)
    grid = jax.eval_shape(lambda m, x: m.embed(x), model, jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))
    assert grid.shape[1:3] == (14, 14)
    assert jax.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)).shape == (2, 10)


@functools.cache
def mini_train_step():
    model = models.create(
        "plainmamba_mini", num_classes=10, img_size=28, in_chans=1, drop_path_rate=0.1, rngs=nnx.Rngs(0)
    )
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, rest, images, labels):
        def loss(params, rest):
            model = nnx.merge(graphdef, params, rest, copy=True)
            logits = model(images, train=True)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), nnx.state(model)

        return jax.value_and_grad(loss, has_aux=True)(params, rest)

    return graphdef, params, rest, step


def test_mini_jit_and_grad_in_training_mode():
    graphdef, params, rest, step = mini_train_step()
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((4, 28, 28, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 4))
    (loss, new_state), grads = step(params, rest, images, labels)
    assert np.isfinite(float(loss))
    for path, grad in nnx.to_flat_state(grads):
        assert bool(jnp.all(jnp.isfinite(grad[...]))) and float(jnp.abs(grad[...]).max()) > 0, path
    # training mode updates BatchNorm's running statistics
    before = nnx.merge(graphdef, params, rest).patch_embed.stem[1].mean[...]
    after = nnx.merge(graphdef, new_state).patch_embed.stem[1].mean[...]
    assert float(jnp.abs(after - before).max()) > 0


def test_drop_path_rates_rise_linearly_to_the_last_layer():
    model = abstract("plainmamba_l1", num_classes=10, img_size=32, drop_path_rate=0.2)
    rates = [layer.drop_path.rate for layer in model.layers]
    np.testing.assert_allclose(rates, np.linspace(0, 0.2, 24))


def test_other_input_sizes_resize_the_position_embedding_like_torch():
    model = models.create(
        "plainmamba_mini", num_classes=10, img_size=16, in_chans=1, depth=1, rngs=nnx.Rngs(0)
    )  # position embedding for an 8 x 8 grid
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 18, 10, 1)), jnp.float32)
    grid = model.embed(images)
    assert grid.shape == (2, 9, 5, model.embed_dim)
    pos = np.asarray(model.pos_embed[...]).reshape(1, 8, 8, -1)
    expected = (
        F.interpolate(torch.tensor(pos).permute(0, 3, 1, 2), size=(9, 5), mode="bicubic", align_corners=False)
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_allclose(grid - model.patch_embed(images), np.broadcast_to(expected, grid.shape), atol=1e-5)
    assert model(images).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embed_dim=64, foo=1), r"unsupported keys \['embed_dim', 'foo'\]"),
        (dict(arch="L4"), r"arch='L4' is not supported; valid: None or one of \['L1', 'L2', 'L3'\]"),
        (dict(out_indices=[1, 3], num_layers=4), r"out_indices=\[1, 3\] is not supported"),
        (dict(interpolate_mode="bilinear"), r"interpolate_mode='bilinear' is not supported"),
        (dict(layer_cfgs=[{}, {}]), r"layer_cfgs=\[\{\}, \{\}\] is not supported"),
        (dict(layer_cfgs={"mamba_cfg": {"d_conv": 4}}), r"unsupported keys \['d_conv'\] in layer_cfgs\['mamba_cfg'\]"),
        (dict(norm_cfg={"type": "BN"}), r"norm_cfg=\{'type': 'BN'\} is not supported"),
        (dict(freeze_patch_embed=True), r"freeze_patch_embed=True is not supported"),
        (dict(img_size=(224, 192)), r"img_size=\(224, 192\) is not supported"),
        (dict(img_size=100), r"img_size must be a multiple of patch_size=16, got 100"),
    ],
)
def test_unsupported_constructor_kwargs_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        adapter.build(kwargs, nnx.Rngs(0))


def test_supported_options_change_the_expected_keys():
    base = dict(img_size=32, num_layers=2, embed_dims=16, layer_cfgs={"mamba_cfg": {"bias": True}})
    keys = lambda **kw: set(official_names(nnx.eval_shape(lambda: adapter.build({**base, **kw}, nnx.Rngs(0)))))
    plain = keys()
    assert "layers.0.norm.bias" in plain and "ln1.weight" in plain and "pos_embed" in plain
    assert "layers.0.norm.bias" not in keys(layer_cfgs={"use_rms_norm": True, "mamba_cfg": {}})
    assert "layers.1.mamba.gamma" in keys(layer_cfgs={"mamba_cfg": {"init_layer_scale": 1e-2}})
    assert "ln1.weight" not in keys(final_norm=False) and "pos_embed" not in keys(with_pos_embed=False)
    assert "layers.1.mamba.in_proj.bias" not in keys(layer_cfgs={"mamba_cfg": {}})  # official default bias=False


def test_checkpoint_of_another_size_names_key_and_shapes(fixture):
    _, _, state_dict, kwargs = fixture
    with pytest.raises(
        ValueError,
        match=r"\S+ has shape \(.*64.*\), which maps to \(.*\), "
        r"but the model's \S+ has shape \(.*32.*\)",
    ):
        from_official("plainmamba", {**kwargs, "embed_dims": 32}, state_dict)
    with pytest.raises(ValueError, match=r"missing 14 keys \['layers.4.mamba.A_log'"):
        from_official("plainmamba", {**kwargs, "num_layers": 5}, state_dict)


def test_bad_model_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"img_size must be a multiple of patch_size=2, got 27"):
        models.create("plainmamba_mini", num_classes=10, img_size=27, in_chans=1, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"patch_size must be even"):
        models.create("plainmamba_mini", num_classes=10, img_size=27, in_chans=1, patch_size=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"layers_with_dwconv must hold layer indices in \[0, 4\)"):
        models.create("plainmamba_mini", num_classes=10, img_size=28, layers_with_dwconv=(4,), rngs=nnx.Rngs(0))
    model = abstract("plainmamba_mini", num_classes=10, img_size=28, in_chans=1)
    with pytest.raises(ValueError, match=r"images must have shape \(batch, H, W, in_chans=1\), got \(2, 28, 28, 3\)"):
        model(jnp.zeros((2, 28, 28, 3)))
    with pytest.raises(ValueError, match=r"multiples of patch_size=2, got \(28, 27\)"):
        model(jnp.zeros((2, 28, 27, 1)))
    with pytest.raises(ValueError, match=r"sarf_tome can reduce H=14 to 7 .. 14"):
        model(jnp.zeros((2, 28, 28, 1)), reduction=Spec("sarf_tome", {1: 36}))
    with pytest.raises(ValueError, match="expected a sarf_jax.reduction.Spec or None"):
        model(jnp.zeros((2, 28, 28, 1)), reduction="sarf_tome")
    assert model.reduction_sites(None) is None and model.reduction_sites(Spec("none")) is None
