"""The benchmark scripts keep running: a --quick pass must print the JSON lines they promise."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_scan_benchmark_quick_run_prints_every_row():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scan.py"), "--quick", "--repeats", "1"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    impls = {(row["bench"], row.get("impl")) for row in rows}
    for impl in ("auto", "reference", "associative", "chunked", "mambapy.pscan (torch)"):
        assert ("scan", impl) in impls
    assert ("mixer", "sarf_jax.nn.Mamba") in impls and ("mixer", "transformers.MambaMixer (torch)") in impls
    summary = rows[-1]
    assert summary["bench"] == "summary"
    assert summary["auto_temp_forward_backward_per_state_tensor"] > 0
