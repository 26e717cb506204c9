"""nn.PlainMamba2D against a NumPy transcription of the official forward (four separate scans,
only u permuted, dt bias twice) on odd grids, and against the official layer 0 stored in the
plainmamba fixture."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from sarf_jax.convert import load_state_dict
from sarf_jax.nn import PlainMamba2D, scan_orders

D_MODEL, D_STATE, EXPAND, DT_RANK = 8, 4, 2, 2
E = D_MODEL * EXPAND


def silu(x):
    return x / (1 + np.exp(-x))


def softplus(x):
    return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20))))


def depthwise_conv(x, weight, bias=None):
    """(B, H, W, C) 'same' depthwise conv with a torch-layout weight (C, 1, k, k)."""
    k = weight.shape[-1]
    p = k // 2
    padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            out += padded[:, i : i + x.shape[1], j : j + x.shape[2]] * weight[:, 0, i, j]
    return out if bias is None else out + bias


def scan_reference(u, delta, A, B, C, D):
    """mamba_ssm selective_scan_ref on (batch, L, E) u/delta, (batch, L, N) B/C, float64."""
    state = np.zeros((u.shape[0], u.shape[2], A.shape[1]))
    ys = []
    for t in range(u.shape[1]):
        state = np.exp(delta[:, t, :, None] * A) * state + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        ys.append(np.einsum("ben,bn->be", state, C[:, t]))
    return np.stack(ys, axis=1) + u * D


def official_forward(sd, x):
    """PlainMamba2D.forward of plain_mamba_layer.py, statement by statement, in NumPy (float64)."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    batch, h, w, _ = x.shape
    length = h * w
    xz = x @ sd["in_proj.weight"].T + sd["in_proj.bias"]
    x, z = xz[..., :E], xz[..., E:]
    x_conv = silu(depthwise_conv(x, sd["conv2d.weight"], sd["conv2d.bias"])).reshape(batch, length, E)
    z = z.reshape(batch, length, E)
    x_dbl = x_conv @ sd["x_proj.weight"].T
    dt, B, C = x_dbl[..., :DT_RANK], x_dbl[..., DT_RANK : DT_RANK + D_STATE], x_dbl[..., DT_RANK + D_STATE :]
    dt = dt @ sd["dt_proj.weight"].T + sd["dt_proj.bias"]  # bias, first time
    A = -np.exp(sd["A_log"])
    scans = scan_orders.zigzag(h, w)
    y = 0
    for order, inverse, directions in zip(scans.orders, scans.inverses, scans.directions):
        u = x_conv[:, order]  # only u is permuted
        B_dir = B + sd["direction_Bs"][directions]  # step t's offset added to raster-t B
        delta = softplus(dt + sd["dt_proj.bias"])  # bias, second time (delta_bias)
        y = y + scan_reference(u, delta, A, B_dir, C, sd["D"])[:, inverse]
    out = (y * silu(z)) @ sd["out_proj.weight"].T + sd["out_proj.bias"]
    return out.reshape(batch, h, w, D_MODEL)


@functools.cache
def official_weights(seed=0):
    """Random torch-layout weights, away from any default (A_log perturbed, D not 1, ...)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "in_proj.weight": (2 * E, D_MODEL),
        "in_proj.bias": (2 * E,),
        "conv2d.weight": (E, 1, 7, 7),
        "conv2d.bias": (E,),
        "x_proj.weight": (DT_RANK + 2 * D_STATE, E),
        "dt_proj.weight": (E, DT_RANK),
        "dt_proj.bias": (E,),
        "A_log": (E, D_STATE),
        "D": (E,),
        "direction_Bs": (5, D_STATE),
        "out_proj.weight": (D_MODEL, E),
        "out_proj.bias": (D_MODEL,),
    }
    sd = {k: 0.3 * rng.standard_normal(s) for k, s in shapes.items()}
    sd["A_log"] = np.log(np.arange(1, D_STATE + 1))[None] + 0.5 * rng.standard_normal((E, D_STATE))
    sd["D"] = rng.uniform(0.5, 1.5, E)
    sd["direction_Bs"] = rng.standard_normal((5, D_STATE))  # large, so a wrong id would show
    return {k: v.astype(np.float32) for k, v in sd.items()}


def mixer(scan_impl="chunked", init_layer_scale=None):
    module = PlainMamba2D(
        D_MODEL,
        d_state=D_STATE,
        expand=EXPAND,
        dt_rank=DT_RANK,
        bias=True,
        init_layer_scale=init_layer_scale,
        scan_impl=scan_impl,
        rngs=nnx.Rngs(0),
    )
    gamma = {} if init_layer_scale is None else {"gamma": np.full(D_MODEL, init_layer_scale, np.float32)}
    load_state_dict(module, {**official_weights(), **gamma})
    return module


@pytest.mark.parametrize(
    "h, w, scan_impl",
    [
        (7, 9, "chunked"),
        (7, 9, "reference"),
        (7, 9, "pallas_gpu"),  # the GPU kernel reading the zig-zag orders (interpreted here)
        (4, 4, "chunked"),
        (3, 2, "chunked"),
        (1, 5, "chunked"),
    ],
)
def test_matches_a_numpy_transcription_of_the_official_forward(h, w, scan_impl):
    x = np.random.default_rng(1).standard_normal((2, h, w, D_MODEL)).astype(np.float32)
    expected = official_forward(official_weights(), x)
    np.testing.assert_allclose(mixer(scan_impl)(jnp.asarray(x)), expected, atol=2e-5, rtol=1e-5)


def test_jit_and_grad_on_an_odd_grid():
    module = mixer()
    graphdef, params = nnx.split(module)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 7, 9, D_MODEL)), jnp.float32)
    loss = jax.jit(lambda params, x: jnp.sum(jnp.square(nnx.merge(graphdef, params)(x))))
    value, (grad_params, grad_x) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    np.testing.assert_allclose(value, loss(params, x), rtol=1e-5)
    assert grad_x.shape == x.shape and bool(jnp.all(jnp.isfinite(grad_x)))
    for path, grad in nnx.to_flat_state(grad_params):
        assert bool(jnp.all(jnp.isfinite(grad[...]))) and float(jnp.abs(grad[...]).max()) > 0, path
    # every direction id occurs on a 7x9 grid, so every row of direction_Bs gets a gradient
    assert bool(jnp.all(jnp.abs(grad_params["direction_Bs"][...]).sum(axis=1) > 0))
    # directional derivative against central finite differences (float32, so loose)
    direction = jnp.asarray(np.random.default_rng(3).standard_normal(x.shape), jnp.float32)
    eps = 1e-2
    numeric = (loss(params, x + eps * direction) - loss(params, x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(grad_x, direction), numeric, rtol=2e-2)


def layer_norm(x, weight, bias, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def test_official_layer0_from_the_fixture(load_fixture):
    """feat/layer0 = GELU(BN(dwconv3x3(x + mixer(LN(x))))) with x = patch tokens + pos_embed."""
    arrays, meta = load_fixture("plainmamba")
    h, w = meta["grid"]
    dim = meta["constructor_kwargs"]["embed_dims"]
    prefix = "sd/backbone.layers.0."
    sd = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
    module = PlainMamba2D(dim, bias=True, rngs=nnx.Rngs(0))
    load_state_dict(module, {k.removeprefix("mamba."): v for k, v in sd.items() if k.startswith("mamba.")})

    x = (arrays["feat/patch_embed"] + arrays["sd/backbone.pos_embed"]).reshape(-1, h, w, dim)
    mixed = np.asarray(module(jnp.asarray(layer_norm(x, sd["norm.weight"], sd["norm.bias"])))) + x
    y = depthwise_conv(mixed.astype(np.float64), sd["dw.0.weight"])
    y = (y - sd["dw.1.running_mean"]) / np.sqrt(sd["dw.1.running_var"] + 1e-5) * sd["dw.1.weight"] + sd["dw.1.bias"]
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    np.testing.assert_allclose(y.reshape(arrays["feat/layer0"].shape), arrays["feat/layer0"], atol=1e-5, rtol=0)


def test_layer_scale_multiplies_the_output():
    plain, scaled = mixer(), mixer(init_layer_scale=0.5)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 3, 4, D_MODEL)), jnp.float32)
    np.testing.assert_allclose(scaled(x), 0.5 * plain(x), rtol=1e-6, atol=1e-7)


def test_bfloat16_compute_stays_close_to_float32():
    module = mixer()
    graphdef, state = nnx.split(module)
    low = nnx.merge(graphdef, state)
    for sub in (low, low.in_proj, low.conv2d, low.x_proj, low.dt_proj, low.out_proj):
        sub.dtype = jnp.bfloat16
    x = jnp.asarray(np.random.default_rng(5).standard_normal((2, 5, 6, D_MODEL)), jnp.float32)
    y_low, y = low(x.astype(jnp.bfloat16)), module(x)
    assert y_low.dtype == jnp.bfloat16
    assert float(jnp.abs(y_low.astype(jnp.float32) - y).max()) < 0.05 * float(jnp.abs(y).max())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(d_model=0), r"d_model must be a positive int, got 0"),
        (dict(d_model=8, d_conv=4), r"PlainMamba2D: d_conv must be an odd int >= 1, got 4"),
        (dict(d_model=8, conv_size=7), r"unknown SSM arguments \['conv_size'\]; valid: \['d_state', "),
        (dict(d_model=8, dt_init="zeros"), r"dt_init must be one of \('random', 'constant'\), got 'zeros'"),
        (dict(d_model=8, dt_rank=0), r"dt_rank must be 'auto' or a positive int, got 0"),
        (dict(d_model=8, scan_impl="cuda"), r"impl must be one of"),
    ],
)
def test_bad_constructor_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlainMamba2D(**kwargs, rngs=nnx.Rngs(0))


def test_wrong_input_shape_is_named():
    with pytest.raises(ValueError, match=r"\(batch, H, W, d_model=8\), got \(2, 10, 8\)"):
        mixer()(jnp.zeros((2, 10, 8)))


def test_flop_count_is_the_same_with_the_fused_gpu_kernel():
    from sarf_jax.analysis import count_flops

    x = jax.ShapeDtypeStruct((2, 7, 9, D_MODEL), jnp.float32)
    counts = []
    for impl in ("chunked", "pallas_gpu"):
        graphdef, state = nnx.split(mixer(impl))
        counts.append(count_flops(lambda s, x: nnx.merge(graphdef, s)(x), state, x))
    assert counts[0] == counts[1] > 0
