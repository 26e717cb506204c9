"""benchmarks/scan_roofline.py runs on a CPU with tiny shapes and its numbers hold together: positive
ceilings and times, the minimal bytes and exps of each shape, percentages that are the ratios of
the measured rates, and x_floor = time / max(memory floor, exp floor), not far below 1."""

import functools
import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scan_roofline.py"
SHAPES = ("vim_s", "vmamba_t_stage0")
IMPLS = ("chunked", "reference")


@functools.cache
def roofline_module():
    spec = importlib.util.spec_from_file_location("scan_roofline", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def printed():
    """(machine, ceilings, rows) of one small run."""
    command = [sys.executable, str(SCRIPT), "--small", "--shapes", *SHAPES, "--impls", *IMPLS]
    command += ["--calls", "50", "--repeats", "3", "--copy-mib", "8", "--exp-elements", str(2**16)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["bench"] for line in lines[:2]] == ["machine", "ceilings"]
    return lines[0], lines[1], lines[2:]


def test_machine_and_ceilings(printed):
    machine, ceilings, _ = printed
    assert machine["platform"] == "cpu" and machine["device"] and machine["jax"] and machine["date"]
    assert ceilings["copy_gbps"] > 0 and ceilings["gexp_per_s"] > 0
    assert math.isclose(ceilings["copy_gbps"], ceilings["copy_bytes"] / ceilings["copy_seconds"] / 1e9)
    assert math.isclose(ceilings["gexp_per_s"], ceilings["exp_count"] / ceilings["exp_seconds"] / 1e9)
    assert ceilings["exp_count"] == 2**16 * ceilings["exp_depth"] and ceilings["copy_bytes"] == 2 * 8 * 2**20


def test_one_row_per_shape_and_impl_with_its_minimal_traffic(printed):
    _, _, rows = printed
    assert [(row["shape"], row["impl"]) for row in rows] == [(s, i) for s in SHAPES for i in IMPLS]
    small = roofline_module().SMALL_SHAPES
    for row in rows:
        length, channels, state, groups, gated = small[row["shape"]]
        batch = row["batch"]
        sequence = batch * length * channels * 2  # one bf16 (batch, length, channels) array
        bc = batch * length * (groups or 1) * state * 2
        assert row["bytes"] == (4 if gated else 3) * sequence + 2 * bc  # u, delta, [z,] y; B, C
        assert row["exps"] == batch * length * channels * state
        assert row["calls"] >= 50 and row["sets"] >= 4 and row["calls"] % row["sets"] == 0
        assert row["resolved_impl"] == row["impl"] and not row["fell_back_to_chunked"]


def test_rates_percentages_and_x_floor_are_consistent(printed):
    _, ceilings, rows = printed
    for row in rows:
        us = row["us_per_call"]
        assert 0 < us < row["loop_us_per_call"] and row["empty_loop_us_per_call"] > 0
        assert math.isclose(row["gbps"], row["bytes"] / us / 1e3)
        assert math.isclose(row["gexp_per_s"], row["exps"] / us / 1e3)
        assert math.isclose(row["pct_of_copy_ceiling"], 100 * row["gbps"] / ceilings["copy_gbps"])
        assert math.isclose(row["pct_of_exp_ceiling"], 100 * row["gexp_per_s"] / ceilings["gexp_per_s"])
        memory_us = row["bytes"] / ceilings["copy_gbps"] / 1e3
        exp_us = row["exps"] / ceilings["gexp_per_s"] / 1e3
        assert math.isclose(row["floor_us"], max(memory_us, exp_us))
        assert row["bound_by"] == ("memory" if memory_us >= exp_us else "exp")
        assert math.isclose(row["x_floor"], us / row["floor_us"])
        assert math.isclose(row["x_floor"], 100 / max(row["pct_of_copy_ceiling"], row["pct_of_exp_ceiling"]))
        # XLA's scans on a CPU are far from the floor; below 0.5 the ceilings would be wrong
        assert row["x_floor"] > 0.5, row


def test_input_sets_outgrow_the_working_set():
    module = roofline_module()
    assert module.number_of_sets(2**20, 0) == 4
    assert module.number_of_sets(2**20, 10) == 10  # 10 sets of 1 MiB exceed 10 MiB
    assert module.number_of_sets(2**20, 1e6) == module.MAX_SETS


def test_ss2d_rows_time_each_mode_and_variant_against_the_minimal_traffic():
    """--ss2d: one row per (mode, variant) of SS2D's four-direction scan; on a GPU the variants are
    the fused kernel, the unfused one and `chunked` (tests/ops/test_cross_scan.py checks that the
    fused kernel is right; interpret mode here would time the interpreter)."""
    command = [sys.executable, str(SCRIPT), "--ss2d", "--small", "--shapes", "vmamba_t_stage2"]
    command += ["--variants", "chunked", "--calls", "50", "--repeats", "3", "--copy-mib", "8"]
    result = subprocess.run(command + ["--exp-elements", str(2**16)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if '"ss2d_roofline"' in line]
    assert [(row["mode"], row["variant"]) for row in rows] == [("forward", "chunked"), ("forward_backward", "chunked")]
    height, width, d_inner, state, dt_rank = roofline_module().SMALL_SS2D_SHAPES["vmamba_t_stage2"]
    grid = 2 * height * width  # batch 2
    reads = 2 * grid * (d_inner + 4 * dt_rank + 2 * 4 * state)  # bf16 x, dt, B, C
    forward_bytes = reads + 4 * grid * d_inner  # + the merged fp32 y
    assert rows[0]["bytes"] == forward_bytes and rows[1]["bytes"] == 2 * forward_bytes + reads
    assert rows[0]["exps"] == grid * 4 * d_inner * state and rows[1]["exps"] == 2 * rows[0]["exps"]
    for row in rows:
        assert row["us_per_call"] > 0 and row["x_floor"] > 0.5 and not row["warnings"], row


def test_every_gpu_kernel_design_gets_its_own_row_where_the_gpu_kernel_runs():
    module = roofline_module()
    designs = ["blocks", "registers"]
    pairs = module.with_gpu_designs(["pallas_gpu", "chunked", "fused", "unfused", "reference"], designs)
    assert pairs == [
        ("pallas_gpu", "blocks"),
        ("pallas_gpu", "registers"),
        ("chunked", None),
        ("fused", "blocks"),
        ("fused", "registers"),
        ("unfused", "blocks"),
        ("unfused", "registers"),
        ("reference", None),
    ]
    default = module.scan_pallas_gpu.DESIGN
    with module.gpu_design("registers"):
        assert module.scan_pallas_gpu.DESIGN == "registers"
    with module.gpu_design(None):
        assert module.scan_pallas_gpu.DESIGN == default
    assert module.scan_pallas_gpu.DESIGN == default
