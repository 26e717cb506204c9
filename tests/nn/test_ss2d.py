"""nn.SS2D against an independent NumPy port of the official forward (no fixture exists for the
"v0" variant, and the VMamba fixture only has square grids), plus the scan orders, odd grids,
jit and grad.

The NumPy port follows MzeroMiko/VMamba classification/models/vmamba.py `SS2Dv0.forwardv0`
(and `SS2Dv2.forwardv2` for "v05_noz") in the official NCHW layout: sequences (B, K, D, L),
directions built with transpose/flip on (B, D, H, W), per-direction einsums, csms6s
`selective_scan_torch`'s loop, and the merge of `forwardv0` (wh_y / invwh_y).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sarf_jax.convert import load_state_dict
from sarf_jax.nn.ss2d import SS2D


def reference_ss2d(x_nhwc, sd, *, gated, d_state, dt_rank, eps=1e-5):
    """Official SS2D forward in NumPy float64; weights in the official (PyTorch) layouts."""
    silu = lambda t: t / (1 + np.exp(-t))
    softplus = lambda t: np.where(t > 20, t, np.log1p(np.exp(np.minimum(t, 20))))
    x = x_nhwc @ sd["in_proj.weight"].T
    if gated:
        x, z = np.split(x, 2, axis=-1)
        z = silu(z)
    x = x.transpose(0, 3, 1, 2)  # (B, D, H, W)
    B, D, H, W = x.shape
    L, K, N, R = H * W, 4, d_state, dt_rank
    weight = sd["conv2d.weight"]  # (D, 1, k, k), padding (k - 1) // 2
    k = weight.shape[-1]
    padded = np.pad(x, [(0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)])
    conv = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            conv += padded[:, :, i : i + H, j : j + W] * weight[None, :, 0, i, j, None, None]
    if "conv2d.bias" in sd:
        conv += sd["conv2d.bias"][None, :, None, None]
    x = silu(conv)

    x_hwwh = np.stack([x.reshape(B, D, L), x.transpose(0, 1, 3, 2).reshape(B, D, L)], axis=1)
    xs = np.concatenate([x_hwwh, np.flip(x_hwwh, axis=-1)], axis=1)  # (B, K, D, L)
    x_dbl = np.einsum("bkdl,kcd->bkcl", xs, sd["x_proj_weight"])
    dts, Bs, Cs = x_dbl[:, :, :R], x_dbl[:, :, R : R + N], x_dbl[:, :, R + N :]
    dts = np.einsum("bkrl,kdr->bkdl", dts, sd["dt_projs_weight"])

    u = xs.reshape(B, K * D, L)
    delta = softplus(dts.reshape(B, K * D, L) + sd["dt_projs_bias"].reshape(-1)[:, None])
    A = -np.exp(sd["A_logs"])  # (K D, N)
    Bc = np.repeat(Bs, D, axis=1)  # (B, K D, N, L): channel k*D + d reads group k
    Cc = np.repeat(Cs, D, axis=1)
    state = np.zeros((B, K * D, N))
    ys = np.zeros((B, K * D, L))
    for t in range(L):
        state = np.exp(delta[:, :, t, None] * A) * state + (delta[:, :, t] * u[:, :, t])[..., None] * Bc[..., t]
        ys[:, :, t] = np.sum(state * Cc[..., t], axis=-1)
    out_y = (ys + u * sd["Ds"][:, None]).reshape(B, K, D, L)

    inv_y = np.flip(out_y[:, 2:4], axis=-1)
    wh_y = out_y[:, 1].reshape(B, D, W, H).transpose(0, 1, 3, 2).reshape(B, D, L)
    invwh_y = inv_y[:, 1].reshape(B, D, W, H).transpose(0, 1, 3, 2).reshape(B, D, L)
    y = (out_y[:, 0] + inv_y[:, 0] + wh_y + invwh_y).transpose(0, 2, 1)  # (B, L, D)
    mean = y.mean(-1, keepdims=True)
    var = ((y - mean) ** 2).mean(-1, keepdims=True)
    y = (y - mean) / np.sqrt(var + eps) * sd["out_norm.weight"] + sd["out_norm.bias"]
    y = y.reshape(B, H, W, D)
    if gated:
        y = y * z
    return y @ sd["out_proj.weight"].T


def random_official_weights(rng, *, d_model, d_inner, d_state, dt_rank, gated, conv_bias, k=3):
    """Official SS2D state dict, every tensor away from its default (as the fixtures perturb)."""
    normal = lambda *shape, s=0.2: s * rng.standard_normal(shape)
    sd = {
        "in_proj.weight": normal((2 if gated else 1) * d_inner, d_model),
        "conv2d.weight": normal(d_inner, 1, k, k, s=0.3),
        "x_proj_weight": normal(4, dt_rank + 2 * d_state, d_inner),
        "dt_projs_weight": normal(4, d_inner, dt_rank, s=0.5),
        "dt_projs_bias": -2.0 + normal(4, d_inner, s=0.5),
        "A_logs": np.log(np.arange(1, d_state + 1))[None] + normal(4 * d_inner, d_state, s=0.5),
        "Ds": rng.uniform(0.5, 1.5, 4 * d_inner),
        "out_norm.weight": 1 + normal(d_inner, s=0.1),
        "out_norm.bias": normal(d_inner, s=0.05),
        "out_proj.weight": normal(d_model, d_inner),
    }
    if conv_bias:
        sd["conv2d.bias"] = normal(d_inner, s=0.1)
    return {key: value.astype(np.float32) for key, value in sd.items()}


@pytest.mark.parametrize(
    "forward_type, d_state, ssm_ratio, conv_bias, grid",
    [
        ("v0", 4, 2.0, True, (5, 7)),  # original SS2D: z-gated, conv bias, d_state > 1
        ("v05_noz", 1, 1.0, False, (7, 4)),  # released v2/v3 layer on a non-square grid
        ("v05_noz", 2, 2.0, False, (1, 6)),  # a single row
    ],
)
def test_matches_numpy_port_of_the_official_forward(forward_type, d_state, ssm_ratio, conv_bias, grid):
    d_model = 20
    d_inner, dt_rank, gated = int(ssm_ratio * d_model), math.ceil(d_model / 16), forward_type == "v0"
    rng = np.random.default_rng(0)
    sd = random_official_weights(
        rng, d_model=d_model, d_inner=d_inner, d_state=d_state, dt_rank=dt_rank, gated=gated, conv_bias=conv_bias
    )
    layer = SS2D(
        d_model, d_state=d_state, expand=ssm_ratio, conv_bias=conv_bias, forward_type=forward_type, rngs=nnx.Rngs(0)
    )
    load_state_dict(layer, sd)
    x = rng.standard_normal((2, *grid, d_model)).astype(np.float32)
    expected = reference_ss2d(
        x.astype(np.float64),
        {k: v.astype(np.float64) for k, v in sd.items()},
        gated=gated,
        d_state=d_state,
        dt_rank=dt_rank,
    )
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(layer, jnp.asarray(x)), expected, atol=1e-5, rtol=0)


def test_odd_grid_keeps_shape_under_jit_and_grad():
    layer = SS2D(16, d_state=1, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 7, 9, 16)), jnp.float32)
    y = nnx.jit(lambda m, x: m(x))(layer, x)
    assert y.shape == x.shape
    grads = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) ** 2)))(layer, x)
    for path, g in nnx.to_flat_state(grads):
        assert np.all(np.isfinite(g[...])) and np.any(g[...] != 0), path


def test_bfloat16_compute_passes_u_to_the_scan_unconverted(monkeypatch):
    """u reaches selective_scan in the compute dtype (the scan computes in float32 itself); the
    merged scan output is float32 and close to the float32 module's."""
    import sarf_jax.ops.cross_scan as cross_scan_module

    seen = []
    original = cross_scan_module.selective_scan
    monkeypatch.setattr(
        cross_scan_module, "selective_scan", lambda u, *a, **k: seen.append(u.dtype) or original(u, *a, **k)
    )
    layer = SS2D(16, d_state=1, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 6, 16)), jnp.float32)
    merged = layer.scan(x)
    layer.dtype = jnp.bfloat16
    merged_low = layer.scan(x.astype(jnp.bfloat16))
    assert seen == [jnp.float32, jnp.bfloat16]
    assert merged_low.dtype == jnp.float32
    assert float(jnp.abs(merged_low - merged).max()) < 0.02 * float(jnp.abs(merged).max())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(forward_type="v2"), "forward_type"),
        (dict(d_conv=4), "d_conv"),
        (dict(d_state=0), "d_state"),
        (dict(expand=0.01), r"expand must make int\(expand \* d_model\) >= 1"),
        (dict(bias=True), "bias must be False"),
        (dict(scan_impl="fast"), "impl"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SS2D(16, rngs=nnx.Rngs(0), **kwargs)
    with pytest.raises(ValueError, match="d_model=16"):
        SS2D(16, rngs=nnx.Rngs(0))(jnp.ones((1, 4, 4, 8)))


@pytest.mark.parametrize("scan_impl", ["auto", "pallas_gpu"])  # pallas_gpu: the fused cross-scan kernel
def test_flop_count_is_the_papers_analytic_count(scan_impl):
    """MACs of the projections and the 3x3 depthwise conv, 9·L·(K·E)·N + L·K·E for the scan."""
    from sarf_jax.evaluate import count_flops

    C, E, N, R, K, H, W = 96, 96, 1, 6, 4, 7, 9  # VMamba-T stage-0 widths on an odd grid
    layer = nnx.eval_shape(lambda: SS2D(C, d_state=N, scan_impl=scan_impl, rngs=nnx.Rngs(0)))
    L = H * W
    expected = (
        L * C * E + L * E * 9 + K * L * E * (R + 2 * N) + K * L * R * E + 9 * L * K * E * N + L * K * E + L * E * C
    )
    graphdef, state = nnx.split(layer)
    flops = count_flops(lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct((1, H, W, C), jnp.float32))
    assert flops == expected


def test_gpu_kernel_scans_the_grid_fused_and_matches_the_xla_path():
    """scan_impl="pallas_gpu" (interpreted here) runs the cross-scan fused into the kernel and
    gives the XLA path's output."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 5, 3, 16)), jnp.float32)
    outputs = {}
    for impl in ("reference", "pallas_gpu"):
        layer = SS2D(16, d_state=2, forward_type="v0", scan_impl=impl, rngs=nnx.Rngs(0))
        outputs[impl] = layer(x)
    assert "fused_scan_pallas" in str(jax.make_jaxpr(lambda x: layer(x))(x))
    np.testing.assert_allclose(outputs["pallas_gpu"], outputs["reference"], atol=1e-5, rtol=1e-5)
