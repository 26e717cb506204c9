"""The GPU kernel's second design, `scan_pallas_gpu.DESIGN = "registers"`, checked as the default
("blocks") design is, on a selection of the same cases: in interpret mode against `reference`
(plain, grouped, state 1, length 1, no options, bfloat16, the official fixture) and against the
unfused XLA paths when it reads VMamba's grid or PlainMamba's orders; lowered for an H100 at the
Vim-S and VMamba-T shapes; and compiled on a GPU when one is present. Which design `pallas_gpu`
keeps is for a GPU measurement to decide (benchmarks/scan_roofline.py times both).
"""

import jax
import jax.numpy as jnp
import pytest
import test_cross_scan as cross_tests
import test_ordered_scan as ordered_tests
import test_scan_pallas as scan_tests
from test_scan_pallas import small_tiles  # noqa: F401  (a fixture)
from test_selective_scan import random_args

from sarf_jax.ops import scan_pallas_gpu


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


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("layer", scan_tests.LAYER_SHAPES)
def test_registers_design_lowers_for_cuda_at_layer_shapes(layer, backward, registers):
    scan_tests.test_gpu_kernel_lowers_for_cuda_at_layer_shapes(layer, backward)


@pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated")
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_registers_design_lowers_for_cuda_reading_vmamba_t_s_stage_0_grid(backward, registers):
    cross_tests.test_fused_kernel_lowers_for_cuda_at_vmamba_t_stage_shapes_reading_the_grid("vmamba_t_stage0", backward)


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
