"""benchmarks/profile_cpu.py reads a real jax.profiler trace and charges every op to one kind."""

import importlib.util
import json
import pathlib
import re

import jax
import jax.numpy as jnp
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
    assert row["gmac"]["matmul"] > 0 and 0 < row["dot_conv_ms"] <= total and row["dot_conv_gmac_per_s"] > 0
    assert row["cpu"] and row["date"] and row["wall_ms"] > 0


def test_macs_are_counted_from_the_hlo_shapes(profile_cpu):
    """The ops the profiler times (the entry computation's: fusions hold what they fuse) carry the
    multiply-accumulates their shapes say: a dot's contracting dims, a convolution's window x input
    features of its group; an elementwise op none."""

    def f(x, w, k):
        y = jnp.tanh(x @ w)  # (64, 96) @ (96, 96): 589,824 MACs, which XLA may fuse with the tanh
        image = y.reshape(1, 8, 8, 96)  # NHWC
        depthwise = jax.lax.conv_general_dilated(
            image, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=96
        )  # 3x3 window, 1 input feature per group, 6,144 outputs: 55,296 MACs
        return depthwise.sum() + jnp.exp(x).sum()

    args = (jnp.ones((64, 96)), jnp.ones((96, 96)), jnp.ones((3, 3, 1, 96)))
    text = jax.jit(f).lower(*args).compile().as_text()
    ops = profile_cpu.parse_hlo(text)
    entry = text[text.index("\nENTRY") :].split("\n}")[0]
    timed = re.findall(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = ", entry, flags=re.M)
    assert sum(ops[name]["macs"] for name in timed) == 589_824 + 55_296
    assert all(ops[name]["macs"] == 0 for name in timed if not ops[name]["opcodes"] & {"dot", "convolution"})
