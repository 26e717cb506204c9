"""Sweeps: specs parsed from the command line, every entry evaluated once, resumable, reported."""

import json

import numpy as np
import pytest
from flax import nnx

from sarf_jax import models, reduction
from sarf_jax.analysis import flops
from sarf_jax.evaluate import report, sharded, sweep


def test_parse_spec_reads_method_schedule_and_options():
    assert reduction.parse_spec("none") is None
    spec = reduction.parse_spec("sarf_tome:keep=0.6:window=3:merge=mean")
    assert spec == reduction.Spec("sarf_tome", "keep=0.6", window=3, merge="mean")
    assert reduction.spec_label(spec) == "sarf_tome:keep=0.6:window=3:merge=mean"
    assert reduction.spec_label(reduction.parse_spec("tome:hybrid_2p1")) == "tome:hybrid_2p1"
    with pytest.raises(ValueError, match=r"method: unknown 'magic'"):
        reduction.parse_spec("magic:keep=0.5")
    with pytest.raises(ValueError, match=r"schedule: unknown name 'hybrid_9p9'"):
        reduction.parse_spec("sarf_tome:hybrid_9p9")


def test_sweep_evaluates_each_entry_once_resumes_and_reports(tmp_path, monkeypatch):
    model = models.create("vim_mini", num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0), depth=3)
    rng = np.random.default_rng(0)
    data = [
        {"image": rng.standard_normal((8, 28, 28, 1)).astype(np.float32), "label": rng.integers(0, 10, 8)}
        for _ in range(2)
    ]
    specs = [
        None,
        reduction.parse_spec("sarf_tome:keep=0.8,sites=1"),
        reduction.parse_spec("sarf_tome:keep=0.5,sites=1"),
    ]
    kwargs = dict(workdir=tmp_path, img_size=28, in_chans=1, batch_size=8, log=lambda *a: None)

    results = sweep.run_sweep({"raw": model}, specs[:2], lambda: iter(data), **kwargs)
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["complete"] and len(stored["entries"]) == 2
    dense = results.find("raw", "none")
    assert dense["gflops"] == pytest.approx(flops.model_gflops(model, 28, in_chans=1))
    assert all(0 <= e["top1"] <= e["top5"] <= 1 and e["examples"] == 16 for e in results.entries)

    evaluated = []
    original = sharded.Evaluator.__call__
    monkeypatch.setattr(
        sharded.Evaluator, "__call__", lambda self, *a, **k: evaluated.append(a[2]) or original(self, *a, **k)
    )
    results = sweep.run_sweep({"raw": model}, specs, lambda: iter(data), **kwargs)
    assert evaluated == [specs[2]]  # the two finished entries were not recomputed
    gflops = [results.find("raw", reduction.spec_label(s))["gflops"] for s in specs]
    assert gflops[0] > gflops[1] > gflops[2]

    paths = report.write_reports(tmp_path)
    assert [p.name for p in paths] == ["results.csv", "results.md", "accuracy_vs_gflops.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert "sarf_tome:keep=0.5,sites=1" in (tmp_path / "results.md").read_text()


def test_a_bad_spec_fails_before_anything_is_written(tmp_path):
    model = models.create("vim_mini", num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0), depth=3)
    with pytest.raises(ValueError, match=r"layer indices \[5\] do not exist"):
        sweep.run_sweep(
            {"raw": model},
            [None, reduction.Spec("sarf_evit", {5: 100})],
            lambda: iter([]),
            workdir=tmp_path,
            img_size=28,
            in_chans=1,
            batch_size=8,
        )
    assert not (tmp_path / "results.json").exists()


def test_a_sweep_is_over_weights_of_one_model(tmp_path):
    create = lambda depth: models.create(
        "vim_mini", num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0), depth=depth
    )
    with pytest.raises(ValueError, match=r"models_by_weights\['ema'\] is not the same model"):
        sweep.run_sweep(
            {"raw": create(3), "ema": create(2)},
            [None],
            lambda: iter([]),
            workdir=tmp_path,
            img_size=28,
            in_chans=1,
            batch_size=8,
        )
    assert not (tmp_path / "results.json").exists()
