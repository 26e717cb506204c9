"""Scans that read u in their own orders (sarf_jax.ops.ordered_scan, PlainMamba's zig-zags): the GPU
kernel reading u and writing y through the orders table against the unfused XLA path (the
oracle), in interpret mode: forward and every gradient on odd grids, a 1x1 grid (L = 1), several
channel tiles, bfloat16; the fallback, argument errors, and the Triton lowering at PlainMamba-L1's
layer shape from this CPU host."""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_cross_scan import assert_compiled_kernel_matches_reference, triton_calls

from sarf_jax.nn import scan_orders
from sarf_jax.ops import scan_pallas_gpu
from sarf_jax.ops.ordered_scan import ordered_selective_scan

ARG_NAMES = ("x", "dt", "A", "B", "C", "D", "delta_bias")
BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)


def random_args(batch, height, width, d_inner, state, seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *shape, s=1.0: (s * rng.standard_normal(shape)).astype(np.float32)
    length = height * width
    return dict(
        x=normal(batch, length, d_inner),
        dt=normal(batch, length, d_inner, s=0.5),
        A=-np.exp(normal(4 * d_inner, state, s=0.3)),
        B=normal(batch, length, 4, state),
        C=normal(batch, length, state),
        D=normal(4 * d_inner),
        delta_bias=normal(4 * d_inner, s=0.3),
    )


def scan_and_grads(args, orders, impl, dtype=jnp.float32, **options):
    values = [jnp.asarray(args[k], dtype if k in ("x", "dt", "B", "C") else jnp.float32) for k in ARG_NAMES]
    weights = jnp.asarray(np.random.default_rng(9).standard_normal(args["x"].shape), jnp.float32)
    run = lambda *v: ordered_selective_scan(*v, orders, impl=impl, interpret=True, **options)
    y = jax.jit(run)(*values)
    loss = lambda *v: jnp.sum(run(*v).astype(jnp.float32) * weights)
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(values)))))(*values)
    return y, dict(zip(ARG_NAMES, grads))


@pytest.fixture
def short_chunks(monkeypatch):
    monkeypatch.setattr(scan_pallas_gpu, "CHUNK", 4)


@pytest.mark.parametrize(
    "grid, d_inner, state",
    [
        ((5, 3), 8, 4),  # odd grid: the reversed snakes start bottom-right
        ((1, 1), 8, 2),  # L = 1
        ((4, 6), 48, 16),  # 3 channel tiles of 16 per scan, PlainMamba's 16 states
    ],
)
def test_fused_kernel_matches_the_unfused_xla_path_forward_and_gradients(grid, d_inner, state, short_chunks):
    orders = scan_orders.zigzag(*grid).orders
    args = random_args(2, *grid, d_inner, state, seed=sum(grid))
    y, grads = scan_and_grads(args, orders, "pallas_gpu", fused=True)
    expected_y, expected_grads = scan_and_grads(args, orders, "reference")
    assert y.shape == args["x"].shape
    np.testing.assert_allclose(y, expected_y, atol=1e-5 * float(jnp.abs(expected_y).max()), rtol=1e-5)
    for name in ARG_NAMES:
        e = expected_grads[name]
        np.testing.assert_allclose(grads[name], e, atol=1e-5 * float(jnp.abs(e).max()), rtol=1e-4, err_msg=name)


def test_fused_kernel_in_bfloat16_matches_the_xla_path_within_bfloat16_rounding(short_chunks):
    orders = scan_orders.zigzag(5, 4).orders
    args = random_args(2, 5, 4, 16, 4, seed=3)
    y, grads = scan_and_grads(args, orders, "pallas_gpu", jnp.bfloat16, fused=True)
    expected_y, expected_grads = scan_and_grads(args, orders, "reference", jnp.bfloat16)
    assert y.dtype == jnp.bfloat16 and grads["x"].dtype == jnp.bfloat16 and grads["C"].dtype == jnp.bfloat16
    y, expected_y = (np.asarray(t, np.float32) for t in (y, expected_y))
    np.testing.assert_allclose(y, expected_y, atol=4 * BF16_EPS * np.abs(expected_y).max())
    for name in ARG_NAMES:
        g, e = (np.asarray(t, np.float32) for t in (grads[name], expected_grads[name]))
        np.testing.assert_allclose(g, e, atol=4 * BF16_EPS * np.abs(e).max(), rtol=4 * BF16_EPS, err_msg=name)


def test_fused_is_the_default_for_the_gpu_kernel_and_named_for_flop_counters():
    orders = scan_orders.zigzag(3, 4).orders
    args = {k: jnp.asarray(v) for k, v in random_args(1, 3, 4, 8, 2).items()}
    jaxpr = lambda **options: str(jax.make_jaxpr(lambda a: ordered_selective_scan(**a, orders=orders, **options))(args))
    assert "fused_scan_pallas" in jaxpr(impl="pallas_gpu")
    unfused = jaxpr(impl="pallas_gpu", fused=False)
    assert "fused_scan_pallas" not in unfused and "selective_scan_pallas" in unfused
    assert "fused_scan_pallas" not in jaxpr(impl="chunked")


def test_a_state_the_kernel_cannot_take_runs_unfused_with_one_warning():
    orders = scan_orders.zigzag(3, 4).orders
    args = random_args(1, 3, 4, 8, 3)  # state 3: not a power of two
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = ordered_selective_scan(**args, orders=orders, impl="pallas_gpu", interpret=True)
    assert any("fused GPU kernel cannot take state size 3" in str(w.message) for w in caught)
    expected = ordered_selective_scan(**args, orders=orders, impl="reference")
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(fused=True, impl="chunked"), "fused=True needs the GPU kernel"),
        (dict(orders=np.zeros((4, 12), int)), "orders must be .* permutations"),
        (dict(orders=np.arange(12)[None].repeat(4, 0)[:, :11]), r"orders must be \(K, L=12\)"),
        (dict(C=np.zeros((1, 12, 4, 2), np.float32)), r"C must have shape \(1, 12, 2\)"),
        (dict(A=np.zeros((8, 2), np.float32)), r"A must have shape \(32, 2\)"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_field(change, message):
    args = {**random_args(1, 3, 4, 8, 2), "orders": scan_orders.zigzag(3, 4).orders, **change}
    with pytest.raises(ValueError, match=message):
        ordered_selective_scan(**args)


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_fused_kernel_lowers_for_cuda_at_plainmamba_l1_layer_shape_reading_u_once(backward):
    batch, height, width, d_inner, state = 2, 14, 14, 384, 16  # PlainMamba-L1 at 224 px
    length = height * width
    orders = scan_orders.zigzag(height, width).orders
    bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    args = (
        bf16(batch, length, d_inner),
        bf16(batch, length, d_inner),
        f32(4 * d_inner, state),
        bf16(batch, length, 4, state),
        bf16(batch, length, state),
        f32(4 * d_inner),
        f32(4 * d_inner),
    )
    calls = triton_calls(
        lambda *a: ordered_selective_scan(*a, orders, impl="pallas_gpu", interpret=False), args, backward
    )
    assert len(calls) == (2 if backward else 1)
    for call in calls:  # u and dt as they are (batch, L, d_inner), not K copies
        assert re.search(rf": \(tensor<{batch}x{length}x{d_inner}xbf16>, tensor<{batch}x{length}x{d_inner}xbf16>", call)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (the fused kernel is the GPU kernel's)")
def test_compiled_kernel_on_this_accelerator_reads_the_orders_and_matches_reference():
    orders = scan_orders.zigzag(14, 14).orders
    args = {k: jnp.asarray(v) for k, v in random_args(2, 14, 14, 384, 16, seed=5).items()}
    run = lambda impl: lambda *v: ordered_selective_scan(*v, orders, impl=impl)
    assert_compiled_kernel_matches_reference(run, [args[k] for k in ARG_NAMES], ARG_NAMES)
