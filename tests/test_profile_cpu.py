"""benchmarks/profile_cpu.py reads a real jax.profiler trace and charges every op to one kind."""

import importlib.util
import json
import pathlib

import pytest

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "profile_cpu.py"


@pytest.fixture(scope="module")
def profile_cpu():
    spec = importlib.util.spec_from_file_location("profile_cpu", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_nested_events_are_charged_their_own_time_only(profile_cpu):
    # a while loop (0-10) holding two body ops, then a separate op on the same thread
    own = dict(profile_cpu._self_times([(0, 10, "while"), (2, 5, "a"), (6, 9, "b"), (12, 14, "c")]))
    assert own == {"while": 4, "a": 3, "b": 3, "c": 2}


def test_tiny_vmamba_profile_splits_its_time_into_kinds(profile_cpu, capsys):
    profile_cpu.main(
        [
            "--models",
            "vmamba_mini",
            "--batch",
            "2",
            "--steps",
            "1",
            "--override",
            "depths=(1, 1)",
            "--passes",
            "forward",
        ]
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [(row["model"], row["pass"]) for row in rows] == [("vmamba_mini", "forward")]
    row = rows[0]
    assert set(row["ms"]) == set(profile_cpu.KINDS)
    total = sum(row["ms"].values())
    assert total == pytest.approx(row["op_ms"]) and total == pytest.approx(row["outermost_op_ms"], rel=0.01)
    assert sum(row["percent"].values()) == pytest.approx(100)
    for kind in ("scan", "depthwise_conv", "matmul", "norm"):
        assert row["ms"][kind] > 0, kind
    assert row["percent"]["other"] < 20
    assert row["cpu"] and row["date"] and row["wall_ms"] > 0
