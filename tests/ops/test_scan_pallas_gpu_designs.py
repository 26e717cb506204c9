"""The GPU kernel's second design, `scan_pallas_gpu.DESIGN = "registers"`, checked as the default
("blocks") design is, on a selection of the same cases: in interpret mode against `reference`
(plain, grouped, state 1, length 1, no options, bfloat16, the official fixture) and against the
unfused XLA paths when it reads VMamba's grid or PlainMamba's orders, including its two-pass
segmented forward; lowered for an H100 at the Vim-S and VMamba-T shapes; and compiled on a GPU
when one is present. Which design `pallas_gpu`
keeps is for a GPU measurement to decide (benchmarks/scan_roofline.py times both).
"""

import re

import jax
import jax.numpy as jnp
import pytest
import test_cross_scan as cross_tests
import test_ordered_scan as ordered_tests
import test_scan_pallas as scan_tests
from test_scan_pallas import small_tiles  # noqa: F401  (a fixture)
from test_selective_scan import random_args

from sarf_jax.ops import scan_pallas_gpu, selective_scan


@pytest.fixture
def registers(monkeypatch):
    monkeypatch.setattr(scan_pallas_gpu, "DESIGN", "registers")
    monkeypatch.setattr(scan_pallas_gpu, "CHUNK", 4)  # the backward unrolls one chunk: compiles faster


def test_the_design_reaches_the_kernel_configuration(registers):
    args = random_args(batch=1, length=5, channels=8, state=2)
    static = scan_pallas_gpu.static_for(
        args["u"], args["B"], args["A"], None, delta_softplus=True, return_last_state=False, interpret=True
    )
    assert static.design == "registers"
    assert scan_pallas_gpu._compiler_params(static).num_warps == 1  # 8 channels: one warp


@pytest.mark.parametrize("case", ["many_tiles_partial_last", "groups_straddle_tiles_state_1", "grouped_no_options"])
def test_registers_design_matches_reference_forward_and_gradients(case, registers, small_tiles):
    scan_tests.test_kernel_in_interpret_mode_matches_reference_forward_and_gradients("pallas_gpu", case, small_tiles)


def test_registers_design_at_length_1(registers, small_tiles):
    scan_tests.test_kernel_in_interpret_mode_matches_reference_forward_and_gradients(
        "pallas_gpu", "length_1_folded", small_tiles
    )


def test_registers_design_in_bfloat16(registers, small_tiles):
    scan_tests.test_bfloat16_inputs_match_reference_within_one_bfloat16_step("pallas_gpu", "one_tile", small_tiles)


def test_registers_design_matches_the_mamba_ssm_reference_fixture(registers, load_fixture):
    scan_tests.test_kernel_in_interpret_mode_matches_mamba_ssm_reference_fixture(
        load_fixture, "pallas_gpu", "selective_scan_grouped"
    )


def test_registers_design_reading_vmamba_s_grid(registers):
    cross_tests.test_fused_kernel_matches_the_unfused_xla_path_forward_and_gradients((13, 11), 8, 2, None)


def test_registers_design_reading_plainmamba_s_orders(registers):
    ordered_tests.test_fused_kernel_matches_the_unfused_xla_path_forward_and_gradients((5, 3), 8, 4, None)


SEGMENTED = ["selective_scan_forward_ends", "selective_scan_forward_outputs"]
WITH_BACKWARD = ["selective_scan_forward", "selective_scan_backward"]


def kernel_names(calls):
    return [re.search(r"selective_scan_\w+", call).group(0) for call in calls]


def segments(u, B, A, z):
    options = dict(delta_softplus=True, return_last_state=False, interpret=False)
    return scan_pallas_gpu.static_for(u, B, A, z, **options).segments


def test_the_forward_alone_runs_in_segments_at_small_batches_only(registers):
    """Vim-S at batch 2 (24 programs) runs its inference forward in 11 segments of 18 steps; at
    batch 32 (384 programs) the GPU is full and the scan runs in one pass. The interpreted cases
    above include segmented forwards (state 1, and VMamba's grid)."""
    for batch, expected in ((2, 11), (32, 1)):
        u, _, A, B, _, _, z, _ = scan_tests.abstract_args(batch, *scan_tests.LAYER_SHAPES["vim_s"][1:])
        assert segments(u, B, A, z) == expected
    args = random_args(**scan_tests.CASES["groups_straddle_tiles_state_1"][0])
    assert segments(args["u"], args["B"], args["A"], args["z"]) == 9
    grid = cross_tests.random_args(2, 13, 11, 8, 2)
    u = grid["x"].reshape(2, 13 * 11, 8)
    static = scan_pallas_gpu.static_for(
        u,
        grid["B"].reshape(2, 13 * 11, 4, 2),
        grid["A"],
        None,
        delta_softplus=True,
        return_last_state=False,
        interpret=True,
        grid=(13, 11),
    )
    assert static.segments == 8


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("layer", scan_tests.LAYER_SHAPES)
def test_registers_design_lowers_for_cuda_at_layer_shapes(layer, backward, registers):
    """At batch 2 a forward pass alone is the two segmented passes; with a backward pass it is the
    forward that saves chunk states, then the backward."""
    forward = lambda *v: selective_scan(*v, delta_softplus=True, impl="pallas_gpu", interpret=False)
    calls = cross_tests.triton_calls(forward, scan_tests.abstract_args(*scan_tests.LAYER_SHAPES[layer]), backward)
    assert kernel_names(calls) == (WITH_BACKWARD if backward else SEGMENTED)


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
def test_registers_design_lowers_for_cuda_reading_vmamba_t_s_stage_0_grid(registers):
    height, width, d_inner = cross_tests.STAGES["vmamba_t_stage0"]
    batch, rank, state = 2, 6, 1
    bf16 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.bfloat16)
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    grid = (batch, height, width)
    args = (bf16(*grid, d_inner), bf16(*grid, 4, rank), bf16(4, d_inner, rank), f32(4 * d_inner, state))
    args += (bf16(*grid, 4, state), bf16(*grid, 4, state), f32(4 * d_inner), f32(4 * d_inner))
    forward = lambda *a: cross_tests.cross_selective_scan(*a, impl="pallas_gpu", interpret=False)
    for backward, names in ((False, SEGMENTED), (True, WITH_BACKWARD)):
        calls = cross_tests.triton_calls(forward, args, backward)
        assert kernel_names(calls) == names
        for call in calls:  # every kernel reads the grid itself (batch, H*W, d_inner), not a 4x copy
            assert re.search(rf": \(tensor<{batch}x{height * width}x{d_inner}xbf16>", call), call[:300]


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU")
@pytest.mark.parametrize("layer", scan_tests.LAYER_SHAPES)
def test_registers_design_compiled_on_this_gpu_matches_reference(layer, monkeypatch):
    monkeypatch.setattr(scan_pallas_gpu, "DESIGN", "registers")
    scan_tests.test_compiled_kernel_on_this_accelerator_matches_reference(layer)
    args = {k: jnp.asarray(v) for k, v in cross_tests.random_args(2, 56, 56, 96, 1, rank=6, seed=5).items()}
    run = lambda impl: lambda *v: cross_tests.cross_selective_scan(*v, impl=impl)
    cross_tests.assert_compiled_kernel_matches_reference(
        run, [args[k] for k in cross_tests.ARG_NAMES], cross_tests.ARG_NAMES
    )


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
def test_a_new_trace_after_switching_the_design_gets_the_new_design(monkeypatch):
    """The design is read when tracing and keys the kernel's jitted region, so a benchmark that
    switches it between traces times both designs, not one design twice."""
    args = scan_tests.abstract_args(*scan_tests.LAYER_SHAPES["vim_s"])

    def names():
        forward = lambda *v: selective_scan(*v, delta_softplus=True, impl="pallas_gpu", interpret=False)
        return kernel_names(cross_tests.triton_calls(forward, args, backward=False))

    assert names() == ["selective_scan_forward"]
    monkeypatch.setattr(scan_pallas_gpu, "DESIGN", "registers")
    assert names() == SEGMENTED
