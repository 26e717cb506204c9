"""The benchmark scripts keep running: a --quick pass must print the JSON lines they promise."""

import json
import pathlib
import subprocess
import sys

import jax

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_scan_benchmark_quick_run_prints_every_row():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scan.py"), "--quick", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    impls = {(row["bench"], row.get("impl")) for row in rows}
    for impl in ("auto", "reference", "associative", "chunked", "pallas", "mambapy.pscan (torch)"):
        assert ("scan", impl) in impls
    assert ("mixer", "sarf_jax.nn.Mamba") in impls and ("mixer", "transformers.MambaMixer (torch)") in impls
    interpreted = jax.default_backend() == "cpu"
    assert [row["interpret"] for row in rows if row.get("impl") == "pallas"] == [interpreted]
    summary = rows[-1]
    assert summary["bench"] == "summary"
    assert summary["auto_temp_forward_backward_per_state_tensor"] > 0


def test_accelerator_scan_benchmark_quick_run_prints_every_row():
    """On this CPU it times interpret mode (meaningless); the point is that the script a GPU
    session will run does not crash there."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scan_gpu.py"), "--quick", "--layers", "vim_s"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert rows[0]["bench"] == "device"
    assert [row["impl"] for row in rows if row["bench"] == "scan_accel"] == ["pallas", "chunked", "reference"]
    summary = rows[-1]
    assert summary["bench"] == "summary" and summary["pallas_agrees_with_reference"]


def models_bench_rows(*args):
    """JSON rows of benchmarks/models.py at batch 2, one repeat, depth-1 models."""
    command = [sys.executable, str(ROOT / "benchmarks" / "models.py"), *args]
    command += ["--batch", "2", "--repeats", "1", "--override", "depth=1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_models_benchmark_prints_a_row_per_model_with_its_overrides():
    rows = models_bench_rows("--models", "vit_mini")
    assert [row["bench"] for row in rows] == ["machine", "model"]
    row = rows[1]
    assert row["overrides"] == {"depth": "1"} and row["forward_images_per_s"] > 0
    assert row["params"] < 213706  # vit_mini's four blocks, less three


def test_models_benchmark_rate_row_compares_useful_compute_with_the_baseline():
    rows = models_bench_rows("--models", "vim_mini", "--rate-vs", "vit_mini")
    models_rows = {row["model"]: row for row in rows if row["bench"] == "model"}
    assert set(models_rows) == {"vim_mini", "vit_mini"}
    (rate,) = [row for row in rows if row["bench"] == "rate"]
    assert (rate["model"], rate["baseline"]) == ("vim_mini", "vit_mini") and rate["rounds"] >= 1
    assert rate["rate_ratio"] > 0
    expected = rate["forward_gflops_per_s"] / rate["baseline_forward_gflops_per_s"]
    assert abs(rate["rate_ratio"] - expected) < 1e-9 * expected
