"""eval.py on a tiny trained workdir: all four outputs, consistent numbers, resumable, clear errors."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def run(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A tiny vim_mini trained for a few steps on synthetic data (tests/train/tiny_config.py)."""
    workdir = tmp_path_factory.mktemp("run") / "tiny"
    result = run(
        "train.py",
        "--config=tests/train/tiny_config.py",
        f"--workdir={workdir}",
        "--config.model.overrides.depth=3",
        "--config.data.mixup_alpha=0",
        "--config.data.cutmix_alpha=0",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return workdir


def test_eval_writes_results_for_raw_and_ema_weights_and_resumes(trained_workdir):
    args = [
        "eval.py",
        f"--workdir={trained_workdir}",
        "--reduction=sarf_tome:keep=0.7,sites=1",
        "--reduction=evit:keep=0.7,sites=1",
        "--batch_size=8",
    ]
    first = run(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    for name in ("results.json", "results.csv", "results.md", "accuracy_vs_gflops.png"):
        assert (trained_workdir / name).stat().st_size > 0
    results = json.loads((trained_workdir / "results.json").read_text())
    assert results["complete"]
    entries = {(e["weights"], e["reduction"]): e for e in results["entries"]}
    assert set(entries) == {
        (w, r) for w in ("raw", "ema") for r in ("none", "sarf_tome:keep=0.7,sites=1", "evit:keep=0.7,sites=1")
    }
    for (weights, label), entry in entries.items():
        assert 0.0 <= entry["top1"] <= entry["top5"] <= 1.0 and entry["examples"] == 16
        if label != "none":
            assert entry["gflops"] < entries[weights, "none"]["gflops"]
            assert entry["top1_drop"] == pytest.approx(entries[weights, "none"]["top1"] - entry["top1"])

    # training's final evaluation and eval.py share evaluate.sharded: the same numbers
    final = [json.loads(line) for line in (trained_workdir / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["split"] == "final"
    for weights, prefix in (("raw", "eval_"), ("ema", "ema_eval_")):
        dense = entries[weights, "none"]
        assert (dense["top1"], dense["top5"]) == (final[prefix + "accuracy"], final[prefix + "top5"])
        assert dense["loss"] == pytest.approx(final[prefix + "loss"], rel=1e-5)

    again = run(*args)
    assert again.returncode == 0 and "6 finished entries kept, 0 to run" in again.stdout + again.stderr


def test_two_processes_read_a_training_workdir_and_match_its_final_evaluation(trained_workdir, tmp_path):
    """Every process restores the checkpoint onto its own device, then evaluates its share."""
    workdir = tmp_path / "copy"
    shutil.copytree(trained_workdir, workdir, ignore=shutil.ignore_patterns("results*", "*.png"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "eval.py",
                f"--workdir={workdir}",
                "--batch_size=8",
                "--weights=params",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    (entry,) = json.loads((workdir / "results.json").read_text())["entries"]
    final = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()][-1]
    assert entry["examples"] == 16 and (entry["top1"], entry["top5"]) == (final["eval_accuracy"], final["eval_top5"])


def test_eval_errors_are_clear_and_write_nothing(tmp_path, trained_workdir):
    empty = run("eval.py", f"--workdir={tmp_path}")
    assert empty.returncode == 2 and "has no model.json" in empty.stderr
    bad = run("eval.py", f"--workdir={trained_workdir}", "--reduction=sarf_tome:hybrid_9p9")
    assert bad.returncode == 2 and "schedule: unknown name 'hybrid_9p9'" in bad.stderr
    assert list(tmp_path.iterdir()) == []

    mismatch = tmp_path / "mismatch"  # model.json names a model the checkpoint's weights do not fit
    shutil.copytree(trained_workdir, mismatch, ignore=shutil.ignore_patterns("results*", "*.png"))
    info = json.loads((mismatch / "model.json").read_text())
    (mismatch / "model.json").write_text(json.dumps({**info, "overrides": {**info["overrides"], "depth": 2}}))
    wrong = run("eval.py", f"--workdir={mismatch}")
    assert wrong.returncode == 2 and "do not fit the model that its model.json describes" in wrong.stderr
    assert not (mismatch / "results.json").exists()


def test_a_model_directory_without_training_config_is_evaluated_at_its_own_image_size(tmp_path):
    """What `python -m sarf_jax.convert` writes (model.json + weights, no config.json)."""
    from flax import nnx

    from sarf_jax import models
    from sarf_jax.models.pretrained import save_pretrained

    kwargs = dict(num_classes=10, img_size=20, in_chans=1)
    model = models.create("vim_mini", rngs=nnx.Rngs(0), depth=2, **kwargs)
    save_pretrained(tmp_path / "converted", model, name="vim_mini", overrides={"depth": 2}, **kwargs)
    result = run(
        "eval.py",
        f"--workdir={tmp_path / 'converted'}",
        "--data=synthetic",
        "--batch_size=64",
        "--reduction=sarf_tome:keep=0.7,sites=1",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((tmp_path / "converted" / "results.json").read_text())
    assert results["complete"] and results["meta"]["img_size"] == 20
    assert {e["reduction"] for e in results["entries"]} == {"none", "sarf_tome:keep=0.7,sites=1"}
    assert all(e["examples"] == 256 for e in results["entries"])  # the whole synthetic test split
