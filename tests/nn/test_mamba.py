"""nn.Mamba against independent PyTorch implementations: transformers' MambaMixer (one direction)
and the official Vim bimamba-v2 layer's outputs stored in the vim fixture."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer

from sarf_jax.convert import load_state_dict
from sarf_jax.nn import Mamba

D_MODEL, D_STATE, DT_RANK = 24, 8, 3


@functools.cache
def transformers_mixer_and_ours(scan_impl):
    """A perturbed transformers MambaMixer and an nn.Mamba holding the same weights."""
    torch.manual_seed(0)
    config = MambaConfig(
        hidden_size=D_MODEL,
        state_size=D_STATE,
        expand=2,
        conv_kernel=4,
        time_step_rank=DT_RANK,
        use_bias=False,
        use_conv_bias=True,
        hidden_act="silu",
    )
    mixer = MambaMixer(config, layer_idx=0).eval()  # eval: the pure-PyTorch slow_forward on CPU
    with torch.no_grad():
        for parameter in mixer.parameters():  # move every weight away from its default
            parameter.add_(0.1 * torch.randn_like(parameter))
    ours = Mamba(D_MODEL, d_state=D_STATE, dt_rank=DT_RANK, scan_impl=scan_impl, rngs=nnx.Rngs(0))
    load_state_dict(ours, {k: v.numpy() for k, v in mixer.state_dict().items()})
    return mixer, ours


@pytest.mark.parametrize("scan_impl", ["reference", "chunked"])
def test_matches_transformers_mamba_mixer_outputs_and_input_gradients(scan_impl):
    mixer, ours = transformers_mixer_and_ours(scan_impl)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 29, D_MODEL)).astype(np.float32)
    cotangent = rng.standard_normal(x.shape).astype(np.float32)

    x_torch = torch.tensor(x, requires_grad=True)
    out_torch = mixer(x_torch)
    (out_torch * torch.tensor(cotangent)).sum().backward()

    out = ours(jnp.asarray(x))
    grad = jax.grad(lambda x: jnp.sum(ours(x) * cotangent))(jnp.asarray(x))
    np.testing.assert_allclose(out, out_torch.detach().numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(grad, x_torch.grad.numpy(), atol=1e-3, rtol=0)


def test_parameter_gradients_match_transformers():
    mixer, ours = transformers_mixer_and_ours("chunked")
    x = np.random.default_rng(1).standard_normal((2, 17, D_MODEL)).astype(np.float32)
    mixer.zero_grad()
    mixer(torch.tensor(x)).square().sum().backward()
    graphdef, params = nnx.split(ours, nnx.Param)
    grads = jax.grad(lambda p: jnp.sum(jnp.square(nnx.merge(graphdef, p)(jnp.asarray(x)))))(params)
    ours_by_name = {".".join(map(str, path)): np.asarray(g[...]) for path, g in nnx.to_flat_state(grads)}
    for name, parameter in mixer.named_parameters():
        key = name.replace(".weight", ".kernel")
        expected = parameter.grad.numpy()
        if expected.ndim == 2 and key.endswith("kernel"):
            expected = expected.T
        elif expected.ndim == 3:
            expected = expected.transpose(2, 1, 0)
        np.testing.assert_allclose(ours_by_name[key], expected, atol=2e-3, rtol=1e-3, err_msg=name)


def rms_norm(x, weight, eps=1e-5):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


@pytest.mark.parametrize("scan_impl", ["reference", "chunked"])
def test_bidirectional_v2_matches_official_vim_layer(load_fixture, scan_impl):
    """Vim's first block: mixer(RMSNorm(residual)) must equal the official layer's output."""
    arrays, meta = load_fixture("vim")
    kwargs = meta["constructor_kwargs"]
    prefix = "sd/layers.0.mixer."
    mixer = Mamba(kwargs["embed_dim"], d_state=16, bidirectional="v2", scan_impl=scan_impl, rngs=nnx.Rngs(0))
    load_state_dict(mixer, arrays, rename=lambda k: k.removeprefix(prefix) if k.startswith(prefix) else None)
    hidden = rms_norm(arrays["feat/block0_residual"], arrays["sd/layers.0.norm.weight"])
    out = mixer(jnp.asarray(hidden, jnp.float32))
    np.testing.assert_allclose(out, arrays["feat/block0_hidden"], atol=1e-4, rtol=0)


def test_bfloat16_compute_stays_close_to_float32():
    _, ours = transformers_mixer_and_ours("chunked")
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 19, D_MODEL)), jnp.float32)
    graphdef, state = nnx.split(ours)
    low = nnx.merge(graphdef, state)
    for module in (low, low.conv1d, low.in_proj, low.x_proj, low.dt_proj, low.out_proj):
        module.dtype = jnp.bfloat16
    y_low, y = low(x.astype(jnp.bfloat16)), ours(x)
    assert y_low.dtype == jnp.bfloat16
    scale = float(jnp.abs(y).max())
    assert float(jnp.abs(y_low.astype(jnp.float32) - y).max()) < 0.05 * scale


def test_load_state_dict_names_missing_and_mismatched_keys():
    mixer, ours = transformers_mixer_and_ours("chunked")
    state_dict = {k: v.numpy() for k, v in mixer.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing 1 keys \['D'\], unexpected 1 keys \['D_typo'\]"):
        load_state_dict(ours, {(k + "_typo" if k == "D" else k): v for k, v in state_dict.items()})
    bad = dict(state_dict, **{"x_proj.weight": np.zeros((5, 48), np.float32)})
    before = np.asarray(ours.in_proj.kernel[...]).copy()
    with pytest.raises(ValueError, match=r"x_proj.weight has shape \(5, 48\), which maps to \(48, 5\)"):
        load_state_dict(ours, {k: v + 1 if k == "in_proj.weight" else v for k, v in bad.items()})
    np.testing.assert_array_equal(ours.in_proj.kernel[...], before)  # nothing half-written


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=0), r"d_model must be a positive int, got 0"),
        (dict(d_model=8, d_state=2.5), r"d_state must be a positive int"),
        (dict(d_model=8, bidirectional="v1"), r"bidirectional must be one of \(None, 'v2'\)"),
        (dict(d_model=8, scan_impl="triton"), r"impl must be one of"),
        (dict(d_model=8, dt_min=0.1, dt_max=0.01), r"0 < dt_min <= dt_max"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mamba(**kwargs, rngs=nnx.Rngs(0))


def test_wrong_input_width_is_named():
    _, ours = transformers_mixer_and_ours("chunked")
    with pytest.raises(ValueError, match=r"input must have shape \(batch, length, d_model=24\), got \(2, 5, 7\)"):
        ours(jnp.zeros((2, 5, 7)))
