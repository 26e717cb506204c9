"""`make train`, the README's first command, end to end on a small Fashion-MNIST-format dataset:
the default config trains (20 steps) and the sweep that follows writes the table and the plot."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from sarf_jax.data.idx import write_idx

ROOT = pathlib.Path(__file__).resolve().parents[1]
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 256),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 100),
}


def write_small_fashion_mnist(directory: pathlib.Path) -> None:
    rng = np.random.default_rng(0)
    for images_name, labels_name, count in FILES.values():
        write_idx(directory / images_name, rng.integers(0, 256, (count, 28, 28)))
        write_idx(directory / labels_name, rng.integers(0, 10, count))


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_train_trains_the_default_model_and_writes_the_reduction_table(tmp_path):
    data, workdir = tmp_path / "fmnist", tmp_path / "run"
    data.mkdir()
    write_small_fashion_mnist(data)
    stamp = pathlib.Path(sys.prefix) / ".installed"
    command = [
        "make",
        "-o",
        str(stamp),  # the venv this test runs in is set up already: never reinstall it
        "train",
        f"VENV={sys.prefix}",
        f"PY={sys.executable}",
        f"WORKDIR={workdir}",
        f"FMNIST_DIR={data}",
        "TRAIN_ARGS=--config.total_steps=20 --config.progress_bar=False --config.checkpoint_every=20",
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["name"].startswith(("vmamba", "plainmamba")) and config["total_steps"] == 20
    results = json.loads((workdir / "results.json").read_text())
    assert results["complete"]
    labels = [entry["reduction"] for entry in results["entries"]]
    assert labels[0] == "none" and {label.split(":")[0] for label in labels[1:]} == {
        "sarf_tome",
        "sarf_evit",
        "evit",
        "tome",
    }
    assert {entry["weights"] for entry in results["entries"]} == {"ema"}
    dense = results["entries"][0]
    for entry in results["entries"][1:]:
        assert entry["gflops"] < dense["gflops"] and entry["images_per_s"] > 0
    table = (workdir / "results.md").read_text()
    assert "| ema | sarf_tome:paper_like=hybrid_2p1 |" in table and table in result.stdout
    assert (workdir / "accuracy_vs_gflops.png").stat().st_size > 0
