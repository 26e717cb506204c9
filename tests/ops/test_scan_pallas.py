"""The Pallas selective-scan kernels without an accelerator.

* Interpret mode: both kernels, through the public `selective_scan`, match `impl="reference"`
  forward (y and last state) and in the gradients of all eight arguments, on shapes that give
  many sequence and channel tiles, a partial last tile, groups that straddle channel tiles,
  state 1, length 1, no optional inputs, and the TPU kernel's folded layout (rows of 128 channels
  on the sublanes when the state is small); and bfloat16 inputs.
* Lowering: `jax.jit(...).trace(...).lower(lowering_platforms=...)` runs the real Mosaic TPU
  lowering (which checks the tile rules interpret mode ignores) and the Triton GPU lowering, for
  forward and backward at Vim-S and VMamba-T layer shapes, and the folded layout at VMamba-T's
  stage shapes. Compiling needs the hardware.
* Fallback to `chunked` with a one-time warning, dispatch names, and (in a subprocess with four
  CPU devices) sharded inputs through shard_map.
"""

import contextlib
import json
import re
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_selective_scan import ARG_NAMES, random_args  # the same random inputs as the XLA impls

from sarf_jax.ops import scan_pallas, scan_pallas_gpu, scan_pallas_tpu, selective_scan
from sarf_jax.ops.selective_scan import resolve_impl

KERNELS = ("pallas_tpu", "pallas_gpu")
BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)  # 2^-7


# name: (random_args shape, TPU tiling constants, options, expected TPU tiling)
CASES = {
    "one_tile": (dict(batch=2, length=13, channels=6, state=4), {}, "all", scan_pallas_tpu.Tiling(13, 1, 6, 1, 1, 13)),
    "many_tiles_partial_last": (
        dict(batch=2, length=20, channels=256, state=16),
        dict(MAX_SEQ_TILE=8, CHANNEL_TILE=128),
        "all",
        scan_pallas_tpu.Tiling(8, 3, 128, 1, 2, 8),
    ),
    "groups_straddle_tiles_state_1": (
        dict(batch=1, length=150, channels=384, state=1, groups=2),
        dict(MAX_SEQ_TILE=128, CHANNEL_TILE=128),
        "all",
        scan_pallas_tpu.Tiling(128, 2, 128, 1, 3, 128),
    ),
    # the folded layout: three rows of 128 channels on the sublanes, a group boundary inside row 1
    "folded_state_1": (
        dict(batch=1, length=150, channels=384, state=1, groups=2),
        dict(MAX_SEQ_TILE=128, VMEM_BUDGET_BYTES=64 * 2**20),
        "all",
        scan_pallas_tpu.Tiling(128, 2, 128, 3, 1, 128),
    ),
    # two states x two folded rows share the sublanes; three channel tiles, two sub-blocks per
    # sequence tile, a partial last tile, group boundaries inside folded rows
    "folded_state_4_tiles": (
        dict(batch=2, length=120, channels=768, state=4, groups=4),
        dict(MAX_SEQ_TILE=64),
        "all",
        scan_pallas_tpu.Tiling(64, 2, 128, 2, 3, 32),
    ),
    "length_1_folded": (
        dict(batch=2, length=1, channels=256, state=1),
        {},
        "all",
        scan_pallas_tpu.Tiling(1, 1, 128, 2, 1, 1),
    ),
    "sub_blocks_in_a_tile": (
        dict(batch=2, length=40, channels=256, state=16, groups=2),
        dict(MAX_SEQ_TILE=24, CHANNEL_TILE=128),
        "all",
        scan_pallas_tpu.Tiling(24, 2, 128, 1, 2, 8),
    ),
    "grouped_no_options": (
        dict(batch=2, length=11, channels=24, state=4, groups=3),
        {},
        "none",
        scan_pallas_tpu.Tiling(11, 1, 24, 1, 1, 11),
    ),
}


@pytest.fixture
def small_tiles(monkeypatch):
    """Shrink the kernels' tiles so that small shapes give many tiles (and interpret mode compiles
    in seconds: the GPU backward unrolls one chunk)."""

    def apply(tpu_constants):
        for name, value in tpu_constants.items():
            monkeypatch.setattr(scan_pallas_tpu, name, value)
        monkeypatch.setattr(scan_pallas_gpu, "CHUNK", 4)

    return apply


def scan_and_grads(args, options, impl, dtype=jnp.float32):
    """(y, last_state or None, grads dict) of a random projection of the outputs."""
    use_all = options == "all"
    args = dict(args)
    if not use_all:
        args["delta"] = np.abs(args["delta"])  # a raw step must be >= 0 without softplus
        for name in ("D", "z", "delta_bias"):
            args[name] = None
    low = {
        k: None if v is None else jnp.asarray(v, dtype if k in ("u", "delta", "B", "C", "z") else jnp.float32)
        for k, v in args.items()
    }
    present = tuple(k for k in ARG_NAMES if low[k] is not None)
    rng = np.random.default_rng(7)
    y_weights = jnp.asarray(rng.standard_normal(args["u"].shape), jnp.float32)
    state_weights = jnp.asarray(rng.standard_normal((args["u"].shape[0], *args["A"].shape)), jnp.float32)
    kwargs = dict(delta_softplus=use_all, impl=impl, interpret=True)

    def loss(*values):
        y, last_state = selective_scan(**dict(zip(present, values)), return_last_state=True, **kwargs)
        return jnp.sum(y.astype(jnp.float32) * y_weights) + jnp.sum(last_state * state_weights)

    values = [low[k] for k in present]
    if use_all:
        y, last_state = jax.jit(lambda *v: selective_scan(**dict(zip(present, v)), return_last_state=True, **kwargs))(
            *values
        )
    else:  # the path without the last state output
        y, last_state = jax.jit(lambda *v: selective_scan(**dict(zip(present, v)), **kwargs))(*values), None
    grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(present)))))(*values)
    return y, last_state, dict(zip(present, grads))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_in_interpret_mode_matches_reference_forward_and_gradients(kernel, case, small_tiles):
    shape, tpu_constants, options, expected_tiling = CASES[case]
    small_tiles(tpu_constants)
    assert (
        scan_pallas_tpu.plan_tiling(shape["length"], shape["channels"], shape["state"], shape.get("groups") or 1)
        == expected_tiling
    )
    args = random_args(**shape, seed=1)
    y, last_state, grads = scan_and_grads(args, options, kernel)
    expected_y, expected_state, expected_grads = scan_and_grads(args, options, "reference")
    np.testing.assert_allclose(y, expected_y, atol=1e-5, rtol=1e-5)
    if last_state is not None:
        np.testing.assert_allclose(last_state, expected_state, atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys()
    for name, expected in expected_grads.items():
        if not (name == "A" and shape["length"] == 1):  # one step from h = 0: A does not matter
            assert np.abs(expected).max() > 0, f"gradient of {name} is identically zero"
        np.testing.assert_allclose(grads[name], expected, atol=1e-4, rtol=1e-4, err_msg=name)


@pytest.mark.parametrize(
    "kernel, case",
    [(kernel, "many_tiles_partial_last") for kernel in KERNELS] + [("pallas_tpu", "folded_state_4_tiles")],
)
def test_bfloat16_inputs_match_reference_within_one_bfloat16_step(kernel, case, small_tiles):
    """bf16 u, delta, B, C, z: both paths scan the same rounded inputs in fp32 and round once, so
    y and the bf16 gradients (u, delta, B, C, z) differ by at most about one bf16 unit
    (tolerance: 2^-7 relative plus 2^-7 of the array's largest magnitude, for cancellations);
    the last state and the fp32 parameter gradients (A, D, delta_bias) to fp32 accuracy."""
    shape, tpu_constants, _, expected_tiling = CASES[case]
    small_tiles(tpu_constants)
    tiling = scan_pallas_tpu.plan_tiling(shape["length"], shape["channels"], shape["state"], shape.get("groups") or 1)
    assert tiling == expected_tiling
    args = random_args(**shape, seed=2)
    y, last_state, grads = scan_and_grads(args, "all", kernel, jnp.bfloat16)
    expected_y, expected_state, expected_grads = scan_and_grads(args, "all", "reference", jnp.bfloat16)
    assert y.dtype == jnp.bfloat16
    as32 = lambda x: np.asarray(x, np.float32)
    np.testing.assert_allclose(as32(y), as32(expected_y), rtol=BF16_EPS, atol=BF16_EPS * np.abs(as32(expected_y)).max())
    np.testing.assert_allclose(last_state, expected_state, atol=1e-5, rtol=1e-5)
    for name, expected in expected_grads.items():
        assert grads[name].dtype == expected.dtype, name
        expected = as32(expected)
        tolerance = dict(rtol=BF16_EPS, atol=BF16_EPS * np.abs(expected).max())
        if name in ("A", "D", "delta_bias"):
            tolerance = dict(rtol=1e-4, atol=1e-4 * np.abs(expected).max())
        np.testing.assert_allclose(as32(grads[name]), expected, err_msg=name, **tolerance)


@pytest.mark.parametrize("fixture", ["selective_scan_bnl", "selective_scan_grouped"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_in_interpret_mode_matches_mamba_ssm_reference_fixture(load_fixture, kernel, fixture):
    """The official selective_scan_ref outputs (length 33: a partial GPU chunk of 8)."""
    arrays, _ = load_fixture(fixture)
    channels_last = lambda x: np.moveaxis(x, -1, 1)  # (batch, D, L), (batch, [G,] N, L) stored
    args = {k: channels_last(arrays[k]) for k in ("u", "delta", "z", "B", "C")}
    args.update(A=arrays["A"], D=arrays["D"], delta_bias=arrays["delta_bias"])
    y, last_state = selective_scan(**args, delta_softplus=True, return_last_state=True, impl=kernel, interpret=True)
    np.testing.assert_allclose(channels_last(np.asarray(y)), arrays["out"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(last_state, arrays["last_state"], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# Lowering for the real platforms from this CPU host.

LAYER_SHAPES = {  # (batch, length, channels, state, groups), bf16 inputs
    "vim_s": (2, 197, 768, 16, None),  # Vim-S: d_inner 768, 14x14 patches + class token
    "vmamba_t": (2, 3136, 384, 1, 4),  # VMamba-T stage 0: 56x56, d_inner 96 x K=4 directions
}


def abstract_args(batch, length, channels, state, groups):
    bc = (batch, length, state) if groups is None else (batch, length, groups, state)
    bf16 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    f32 = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    return (
        bf16((batch, length, channels)),
        bf16((batch, length, channels)),
        f32((channels, state)),
        bf16(bc),
        bf16(bc),
        f32((channels,)),
        bf16((batch, length, channels)),
        f32((channels,)),
    )


def lowered_text(impl, args, platform, backward):
    def forward(*values):
        return selective_scan(*values, delta_softplus=True, impl=impl, interpret=False)

    fn = forward
    if backward:
        fn = jax.grad(lambda *v: jnp.sum(forward(*v).astype(jnp.float32)), argnums=tuple(range(8)))
    return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("layer", LAYER_SHAPES)
def test_tpu_kernel_lowers_for_tpu_at_layer_shapes(layer, backward):
    batch, length, channels, state, groups = LAYER_SHAPES[layer]
    tiling = scan_pallas_tpu.plan_tiling(length, channels, state, groups or 1)
    assert tiling.num_seq_tiles > 1 and tiling.num_channel_tiles > 1  # the carry path is lowered
    text = lowered_text("pallas_tpu", abstract_args(*LAYER_SHAPES[layer]), "tpu", backward)
    assert text.count("tpu_custom_call") == (2 if backward else 1)  # backward: saving forward + backward


def abstract_tpu(device_kind):
    """A context in which traces are for this TPU chip (its VMEM size known), on a CPU host."""
    device = jax.sharding.AbstractDevice(device_kind=device_kind, platform="tpu", num_cores=1)
    return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=device))


VMAMBA_T_STAGES = {0: (2, 3136, 384, 1, 4), 2: (2, 196, 1536, 1, 4), 3: (2, 49, 3072, 1, 4)}  # 4 x d_inner


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize(
    "stage, chip, fold, channel_tiles",
    [(3, None, 8, 3), (0, "TPU v5 lite", 3, 1), (2, "TPU v5 lite", 6, 2)],
    ids=["stage3", "stage0_v5e", "stage2_v5e"],
)
def test_tpu_kernel_lowers_the_folded_layout_at_vmamba_t_stage_shapes(stage, chip, fold, channel_tiles, backward):
    """With one state, rows of 128 channels fold onto the sublanes: VMamba-T's stage 3 as 8 rows
    under the default budget; with a v5e's VMEM, stage 0 as 3 rows and stage 2 as 6 rows in 2
    channel tiles (its default-budget plan stays unfolded: a 196-step folded tile does not fit)."""
    batch, length, channels, state, groups = VMAMBA_T_STAGES[stage]
    with abstract_tpu(chip) if chip else contextlib.nullcontext():
        tiling = scan_pallas_tpu.plan_tiling(length, channels, state, groups)
        text = lowered_text("pallas_tpu", abstract_args(*VMAMBA_T_STAGES[stage]), "tpu", backward)
    assert (tiling.fold, tiling.num_channel_tiles) == (fold, channel_tiles)
    assert text.count("tpu_custom_call") == (2 if backward else 1)


def test_tpu_kernels_ask_a_known_chip_for_more_vmem_and_plan_longer_tiles_for_it():
    """Under an abstract TPU v5e mesh (128 MiB of VMEM per core) both kernels ask for a 96 MiB
    scoped limit and tiles are planned for 4/5 of it; on this CPU host the default stands."""
    assert scan_pallas_tpu.vmem_limits() == (None, scan_pallas_tpu.VMEM_BUDGET_BYTES)
    batch, length, channels, state, groups = LAYER_SHAPES["vmamba_t"]
    default = scan_pallas_tpu.plan_tiling(length, channels, 16, 1)  # 16 states: VMEM-bound tiles
    with abstract_tpu("TPU v5 lite"):
        limit, budget = scan_pallas_tpu.vmem_limits()
        longer = scan_pallas_tpu.plan_tiling(length, channels, 16, 1)
        text = lowered_text("pallas_tpu", abstract_args(*LAYER_SHAPES["vmamba_t"]), "tpu", backward=True)
    assert (limit, budget) == (96 * 2**20, 96 * 2**20 * 4 // 5)
    assert longer.seq_tile > default.seq_tile
    configs = [json.loads(c.replace("\\22", '"')) for c in re.findall(r'backend_config = "(\{.*?\})"', text)]
    assert len(configs) == 2  # the forward that saves tile states, and the backward
    for config in configs:
        assert config["scoped_memory_configs"][0]["size"] == limit


def test_tpu_lowering_rejects_an_illegal_tile(monkeypatch):
    """The check above has teeth: a 64-lane channel tile (not a multiple of 128, not all channels)
    passes interpret mode but not the Mosaic lowering."""
    monkeypatch.setattr(
        scan_pallas_tpu,
        "plan_tiling",
        lambda length, channels, state, groups: scan_pallas_tpu.Tiling(8, 2, 64, 1, 4, 8),
    )
    with pytest.raises(Exception, match="divisible by 8 and 128"):
        lowered_text("pallas_tpu", abstract_args(1, 16, 256, 16, None), "tpu", backward=False)


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("layer", LAYER_SHAPES)
def test_gpu_kernel_lowers_for_cuda_at_layer_shapes(layer, backward):
    """Lowering for 'cuda' on a CPU-only host needs an abstract GPU device in scope."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", platform="gpu", num_cores=132)
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), (), abstract_device=device)):
        text = lowered_text("pallas_gpu", abstract_args(*LAYER_SHAPES[layer]), "cuda", backward)
    assert text.count("__gpu$xla.gpu.triton") == (2 if backward else 1)


# ------------------------------------------------------------------------------------------------
# Dispatch and fallback.


def test_pallas_resolves_to_the_kernel_of_the_platform_and_auto_to_the_measured_best():
    assert resolve_impl("pallas", "tpu") == "pallas_tpu"
    assert resolve_impl("pallas", "gpu") == "pallas_gpu"
    assert resolve_impl("pallas", "cpu") == "pallas_tpu"  # interpret mode
    assert resolve_impl("auto", "gpu") == "pallas_gpu"  # compiled and timed on an H100
    for platform in ("cpu", "tpu"):
        assert resolve_impl("auto", platform) == "chunked"  # the TPU kernel is not yet timed on a TPU
    assert resolve_impl("pallas_gpu", "tpu") == "pallas_gpu"


def test_interpret_must_be_none_a_bool_or_interpret_params():
    args = random_args(1, 4, 2, 2)
    with pytest.raises(ValueError, match="interpret must be None, True, False"):
        selective_scan(**args, impl="pallas", interpret="yes")


@pytest.mark.parametrize(
    "kernel, shape",
    [
        ("pallas_gpu", dict(batch=1, length=5, channels=4, state=3)),  # state not a power of two
        ("pallas_tpu", dict(batch=1, length=4, channels=8000, state=16)),  # tiles exceed VMEM
    ],
)
def test_shapes_a_kernel_cannot_take_fall_back_to_chunked_with_one_warning(kernel, shape):
    scan_pallas._warned.clear()
    args = random_args(**shape)
    with pytest.warns(RuntimeWarning, match=f"the {kernel} kernel cannot take .* using impl='chunked'"):
        y = selective_scan(**args, delta_softplus=True, impl=kernel, interpret=True)
    expected = selective_scan(**args, delta_softplus=True, impl="chunked")
    np.testing.assert_array_equal(y, expected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selective_scan(**args, delta_softplus=True, impl=kernel, interpret=True)  # warned once


def test_interpret_params_run_the_tpu_kernel_in_the_tpu_interpreter():
    from jax.experimental.pallas import tpu as pltpu

    args = random_args(batch=1, length=9, channels=4, state=2, groups=2, seed=4)
    y = selective_scan(**args, delta_softplus=True, impl="pallas_tpu", interpret=pltpu.InterpretParams())
    np.testing.assert_allclose(y, selective_scan(**args, delta_softplus=True, impl="reference"), atol=1e-5, rtol=1e-5)


SHARDED_SCRIPT = textwrap.dedent("""
    import warnings
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from sarf_jax.ops import selective_scan

    rng = np.random.default_rng(0)
    normal = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    args = dict(u=normal(4, 12, 8), delta=normal(4, 12, 8), A=-jnp.exp(normal(8, 4)),
                B=normal(4, 12, 2, 4), C=normal(4, 12, 2, 4), D=normal(8), z=normal(4, 12, 8),
                delta_bias=normal(8))
    run = lambda impl, **a: selective_scan(**a, delta_softplus=True, return_last_state=True, impl=impl)
    expected_y, expected_state = run("reference", **args)
    loss = lambda impl: lambda u, B: jnp.sum(run(impl, **{**args, "u": u, "B": B})[0] ** 2)
    expected_grads = jax.grad(loss("reference"), argnums=(0, 1))(args["u"], args["B"])
    mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Explicit,) * 2)

    def check(sequence_spec):
        with jax.set_mesh(mesh):
            put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))
            sharded = {**args, "u": put(args["u"], sequence_spec), "delta": put(args["delta"], sequence_spec),
                       "z": put(args["z"], sequence_spec), "B": put(args["B"], P("data"))}
            scan = jax.jit(lambda **a: run("pallas", **a))
            assert "shard_map" in str(scan.trace(**sharded).jaxpr)
            y, state = scan(**sharded)
            assert y.sharding.spec == sequence_spec
            np.testing.assert_allclose(y, expected_y, atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(state, expected_state, atol=1e-5, rtol=1e-5)
            grads = jax.jit(jax.grad(loss("pallas"), argnums=(0, 1)))(sharded["u"], sharded["B"])
            for g, e in zip(grads, expected_grads):
                np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-4)

    check(P("data", None, "model"))  # batch and channels (and the 2 groups) split
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check(P(None, "data", "model"))  # a split length is gathered first
    assert any("gathering the length axis" in str(w.message) for w in caught)
    print("OK")
""")


def test_sharded_inputs_run_per_shard_through_shard_map():
    result = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


# ------------------------------------------------------------------------------------------------
# On real hardware (skipped on CPU): the compiled kernel, not the interpreter.


@pytest.mark.skipif(jax.default_backend() not in ("tpu", "gpu"), reason="needs a TPU or GPU")
@pytest.mark.parametrize("layer", LAYER_SHAPES)
def test_compiled_kernel_on_this_accelerator_matches_reference(layer):
    batch, length, channels, state, groups = LAYER_SHAPES[layer]
    args = random_args(batch, length, channels, state, groups, seed=5)
    for kwargs in (dict(), dict(return_last_state=True)):
        ours = jax.jit(lambda **a: selective_scan(**a, delta_softplus=True, impl="pallas", **kwargs))(**args)
        expected = selective_scan(**args, delta_softplus=True, impl="reference", **kwargs)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(expected)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    loss = lambda impl: lambda *v: jnp.sum(selective_scan(*v, delta_softplus=True, impl=impl) ** 2)
    values = [args[k] for k in ARG_NAMES]
    grads = jax.jit(jax.grad(loss("pallas"), argnums=tuple(range(8))))(*values)
    expected = jax.jit(jax.grad(loss("reference"), argnums=tuple(range(8))))(*values)
    for name, g, e in zip(ARG_NAMES, grads, expected):
        np.testing.assert_allclose(g, e, atol=1e-3 * np.abs(e).max(), rtol=1e-3, err_msg=name)
