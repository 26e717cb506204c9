"""VMamba's four-direction scan (sarf_jax.ops.cross_scan): the scan orders, and the GPU kernel with
the cross-scan fused into it against the unfused XLA path (the oracle), in interpret mode.

* Orders: `cross_scan` reads rows, columns and their reverses on odd grids; `cross_merge` undoes
  them; `cross_scan_per_direction` reads direction k's own values in order k.
* Fused kernel: forward and the gradients of all eight arguments against `impl="reference"` on
  odd grids (13x11), a 1x1 grid (L = 1), several channel tiles per direction, state 1 and 4;
  bfloat16 inputs; the fallbacks (a state the kernel cannot take; sharded inputs) and argument
  errors; and the real Triton lowering at VMamba-T's stage shapes from this CPU host.
"""

import re
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sarf_jax.ops import scan_pallas_gpu
from sarf_jax.ops.cross_scan import cross_merge, cross_scan, cross_scan_per_direction, cross_selective_scan

ARG_NAMES = ("x", "dt", "dt_weight", "A", "B", "C", "D", "delta_bias")
BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)


def test_cross_scan_reads_rows_columns_and_their_reverses_on_odd_grids():
    height, width = 3, 5
    grid = np.arange(height * width, dtype=np.float32).reshape(1, height, width, 1)
    sequences = np.asarray(cross_scan(jnp.asarray(grid)))[0, :, :, 0]  # (L, K)
    row_major = np.arange(height * width)
    column_major = np.arange(height * width).reshape(height, width).T.reshape(-1)
    np.testing.assert_array_equal(sequences[:, 0], row_major)
    np.testing.assert_array_equal(sequences[:, 1], column_major)
    np.testing.assert_array_equal(sequences[:, 2], row_major[::-1])
    np.testing.assert_array_equal(sequences[:, 3], column_major[::-1])
    # merging puts every direction back in grid order: four copies of the grid
    np.testing.assert_array_equal(cross_merge(cross_scan(jnp.asarray(grid)), height, width), 4 * grid)


def test_cross_scan_per_direction_reads_direction_k_in_order_k():
    # a per-position value that differs by direction: direction k's slice must come out in scan
    # order k, exactly as cross_scan orders a value shared by all directions
    height, width, channels = 3, 5, 2
    values = np.random.default_rng(0).normal(size=(2, height, width, 4, channels)).astype(np.float32)
    result = np.asarray(cross_scan_per_direction(jnp.asarray(values)))
    for k in range(4):
        expected = np.asarray(cross_scan(jnp.asarray(values[:, :, :, k])))[:, :, k]
        np.testing.assert_array_equal(result[:, :, k], expected)


def random_args(batch, height, width, d_inner, state, rank=3, seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *shape, s=1.0: (s * rng.standard_normal(shape)).astype(np.float32)
    return dict(
        x=normal(batch, height, width, d_inner),
        dt=normal(batch, height, width, 4, rank, s=0.5),
        dt_weight=normal(4, d_inner, rank, s=0.5),
        A=-np.exp(normal(4 * d_inner, state, s=0.3)),
        B=normal(batch, height, width, 4, state),
        C=normal(batch, height, width, 4, state),
        D=normal(4 * d_inner),
        delta_bias=normal(4 * d_inner, s=0.3),
    )


def scan_and_grads(args, impl, dtype=jnp.float32, **options):
    """(merged y, grads of a random projection of it w.r.t. all eight arguments)."""
    values = [
        jnp.asarray(args[k], dtype if k in ("x", "dt", "dt_weight", "B", "C") else jnp.float32) for k in ARG_NAMES
    ]
    weights = jnp.asarray(np.random.default_rng(9).standard_normal(args["x"].shape), jnp.float32)
    run = lambda *v: cross_selective_scan(*v, impl=impl, interpret=True, **options)
    y = jax.jit(run)(*values)
    grads = jax.jit(jax.grad(lambda *v: jnp.sum(run(*v) * weights), argnums=tuple(range(8))))(*values)
    return y, dict(zip(ARG_NAMES, grads))


@pytest.fixture
def short_chunks(monkeypatch):
    monkeypatch.setattr(scan_pallas_gpu, "CHUNK", 4)  # the backward unrolls one chunk: compiles faster


@pytest.mark.parametrize(
    "grid, d_inner, state",
    [
        ((13, 11), 8, 2),  # odd grid, L = 143 (a partial last chunk)
        ((1, 1), 8, 1),  # L = 1
        ((4, 6), 48, 4),  # 3 channel tiles of 16 per direction
    ],
)
def test_fused_kernel_matches_the_unfused_xla_path_forward_and_gradients(grid, d_inner, state, short_chunks):
    args = random_args(2, *grid, d_inner, state, seed=sum(grid))
    y, grads = scan_and_grads(args, "pallas_gpu", fused=True)
    expected_y, expected_grads = scan_and_grads(args, "reference")
    assert y.shape == (2, *grid, d_inner) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, expected_y, atol=1e-5 * float(jnp.abs(expected_y).max()), rtol=1e-5)
    for name in ARG_NAMES:
        e = expected_grads[name]
        np.testing.assert_allclose(grads[name], e, atol=1e-5 * float(jnp.abs(e).max()), rtol=1e-4, err_msg=name)


def test_fused_kernel_in_bfloat16_matches_the_xla_path_within_bfloat16_rounding(short_chunks):
    args = random_args(2, 5, 7, 16, 1, seed=3)
    y, grads = scan_and_grads(args, "pallas_gpu", jnp.bfloat16, fused=True)
    expected_y, expected_grads = scan_and_grads(args, "reference", jnp.bfloat16)
    assert grads["x"].dtype == jnp.bfloat16 and grads["dt"].dtype == jnp.bfloat16
    # both round each direction's y to bfloat16 before the merge, and differ below that rounding
    np.testing.assert_allclose(y, expected_y, atol=4 * BF16_EPS * float(jnp.abs(expected_y).max()))
    for name in ARG_NAMES:
        g, e = (np.asarray(t, np.float32) for t in (grads[name], expected_grads[name]))
        np.testing.assert_allclose(g, e, atol=4 * BF16_EPS * np.abs(e).max(), rtol=4 * BF16_EPS, err_msg=name)


def test_fused_is_the_default_for_the_gpu_kernel_and_named_for_flop_counters():
    args = {k: jnp.asarray(v) for k, v in random_args(1, 3, 4, 8, 2).items()}
    jaxpr = lambda **options: str(jax.make_jaxpr(lambda a: cross_selective_scan(**a, **options))(args))
    assert "fused_scan_pallas" in jaxpr(impl="pallas_gpu")
    unfused = jaxpr(impl="pallas_gpu", fused=False)
    assert "fused_scan_pallas" not in unfused and "selective_scan_pallas" in unfused
    assert "fused_scan_pallas" not in jaxpr(impl="pallas_tpu") and "fused_scan_pallas" not in jaxpr(impl="chunked")


def test_a_state_the_kernel_cannot_take_runs_unfused_with_one_warning():
    args = random_args(1, 3, 4, 8, 3)  # state 3: not a power of two
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = cross_selective_scan(**args, impl="pallas_gpu", interpret=True)
    assert any("fused GPU kernel cannot take state size 3" in str(w.message) for w in caught)
    np.testing.assert_allclose(y, cross_selective_scan(**args, impl="reference"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(fused=True, impl="chunked"), "fused=True needs the GPU kernel"),
        (dict(fused="yes"), "fused must be None, True or False"),
        (dict(B=np.zeros((1, 3, 4, 4, 3), np.float32)), r"B must have shape \(1, 3, 4, 4, 2\)"),
        (dict(D=np.zeros(8, np.float32)), r"D must have shape \(32,\)"),
        (dict(x=np.zeros((3, 4, 8), np.float32)), r"x must have shape \(batch, H, W, d_inner\)"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_field(change, message):
    args = {**random_args(1, 3, 4, 8, 2), **change}
    with pytest.raises(ValueError, match=message):
        cross_selective_scan(**args)


def triton_calls(forward, args, backward):
    """The Triton kernel calls of `forward` (or of the gradient of its sum) lowered for an H100 from
    this CPU host (lowering for 'cuda' needs an abstract GPU device in scope)."""
    argnums = tuple(range(len(args)))
    fn = jax.grad(lambda *a: jnp.sum(forward(*a).astype(jnp.float32)), argnums=argnums) if backward else forward
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=132)
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=device)):
        text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    return re.findall(r"__gpu\$xla\.gpu\.triton.*", text)


STAGES = {"vmamba_t_stage0": (56, 56, 96), "vmamba_t_stage2": (14, 14, 384)}  # (H, W, d_inner), N 1


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("stage", STAGES)
def test_fused_kernel_lowers_for_cuda_at_vmamba_t_stage_shapes_reading_the_grid(stage, backward):
    height, width, d_inner = STAGES[stage]
    batch, rank, state = 2, 6, 1
    bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    args = (
        bf16(batch, height, width, d_inner),
        bf16(batch, height, width, 4, rank),
        bf16(4, d_inner, rank),
        f32(4 * d_inner, state),
        bf16(batch, height, width, 4, state),
        bf16(batch, height, width, 4, state),
        f32(4 * d_inner),
        f32(4 * d_inner),
    )
    calls = triton_calls(lambda *a: cross_selective_scan(*a, impl="pallas_gpu", interpret=False), args, backward)
    assert len(calls) == (2 if backward else 1)
    length = height * width
    for call in calls:  # every kernel reads the grid itself (batch, H*W, d_inner), not a 4x copy
        assert re.search(rf": \(tensor<{batch}x{length}x{d_inner}xbf16>", call), call[:300]


SHARDED_SCRIPT = textwrap.dedent("""
    import warnings
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from sarf_jax.ops.cross_scan import cross_selective_scan

    rng = np.random.default_rng(0)
    n = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    args = [n(2, 3, 5, 8), n(2, 3, 5, 4, 2), n(4, 8, 2), -jnp.exp(n(32, 2)), n(2, 3, 5, 4, 2), n(2, 3, 5, 4, 2),
            n(32), n(32)]
    expected = cross_selective_scan(*args, impl="reference")
    mesh = jax.make_mesh((2,), ("data",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        put = lambda x: jax.device_put(x, NamedSharding(mesh, P("data")))
        sharded = [put(a) if a.ndim >= 4 else a for a in args]
        scan = jax.jit(lambda *a: cross_selective_scan(*a, impl="pallas_gpu", interpret=True))
        assert "shard_map" in str(scan.trace(*sharded).jaxpr)
        np.testing.assert_allclose(scan(*sharded), expected, atol=1e-5, rtol=1e-5)
    assert any("sharded inputs run the unfused kernel per shard" in str(w.message) for w in caught)
    print("OK")
""")


def test_sharded_inputs_run_the_unfused_kernel_per_shard():
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def assert_compiled_kernel_matches_reference(run, values, names):
    """run(impl) -> fn(*values): the jitted GPU kernel's output and gradients against `reference`."""
    np.testing.assert_allclose(jax.jit(run("pallas_gpu"))(*values), run("reference")(*values), atol=1e-4, rtol=1e-4)
    loss = lambda impl: lambda *v: jnp.sum(run(impl)(*v) ** 2)
    grads = jax.jit(jax.grad(loss("pallas_gpu"), argnums=tuple(range(len(values)))))(*values)
    expected = jax.jit(jax.grad(loss("reference"), argnums=tuple(range(len(values)))))(*values)
    for name, g, e in zip(names, grads, expected):
        np.testing.assert_allclose(g, e, atol=1e-3 * np.abs(e).max(), rtol=1e-3, err_msg=name)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (the fused kernel is the GPU kernel's)")
def test_compiled_kernel_on_this_accelerator_fuses_the_cross_scan_and_matches_reference():
    args = {k: jnp.asarray(v) for k, v in random_args(2, 56, 56, 96, 1, rank=6, seed=5).items()}
    run = lambda impl: lambda *v: cross_selective_scan(*v, impl=impl)
    assert_compiled_kernel_matches_reference(run, [args[k] for k in ARG_NAMES], ARG_NAMES)
