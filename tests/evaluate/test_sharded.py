"""The sharded evaluation pass (evaluate.sharded): exact counts on an odd-sized split, the same
numbers on 8 fake CPU devices as on one, and eval.py in two processes as in one.

Multi-device and multi-process runs happen in subprocesses (JAX_NUM_CPU_DEVICES, jax.distributed
on 127.0.0.1), since this process has one CPU device.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from sarf_jax import data as data_lib
from sarf_jax import models, parallel, reduction
from sarf_jax.data.sources import ArraySource
from sarf_jax.evaluate import sharded

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
MODEL = dict(num_classes=10, img_size=16, in_chans=1, depth=2, embed_dim=16, patch_size=4, num_heads=2)
SPLIT_SIZE, GLOBAL_BATCH = 37, 16  # 2 full global batches and one with 5 real rows
SPEC = "evit:keep=0.7,sites=1"


def tiny_model(seed: int = 0):
    return models.create("vit_mini", rngs=nnx.Rngs(seed), **MODEL)


def odd_split() -> ArraySource:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (SPLIT_SIZE, 16, 16, 1), dtype=np.uint8)
    return ArraySource(images, rng.integers(0, 10, SPLIT_SIZE).astype(np.int32), 10, (0.5,), (0.25,))


def data_config():
    import ml_collections

    return ml_collections.ConfigDict(dict(image_size=16, eval_crop_pct=1.0, num_threads=1, prefetch=2))


def batches(source, process_index: int = 0, process_count: int = 1):
    return data_lib.eval_iterator(
        source,
        data_config(),
        global_batch_size=GLOBAL_BATCH,
        channels=1,
        process_index=process_index,
        process_count=process_count,
    )


def evaluate_on(mesh_sizes: dict) -> dict:
    """{spec label: scores} of the tiny model on the odd split over a mesh of this process's devices."""
    mesh = parallel.make_mesh(mesh_sizes)
    source = odd_split()
    graphdef, states = sharded.on_mesh(tiny_model(), mesh)
    evaluator = sharded.Evaluator(graphdef, mesh, preprocess=lambda x: data_lib.normalize(x, source.mean, source.std))
    return {label: evaluator(states, batches(source), reduction.parse_spec(label)) for label in ("none", SPEC)}


def subprocess_env(devices: int) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
    )
    env.pop("XLA_FLAGS", None)
    return env


@pytest.fixture(autouse=True, scope="module")
def quick_compiles():
    """Tiny models compile 2-3x faster with most XLA optimisations off; the subprocesses use the
    same setting (subprocess_env), so their numbers stay comparable with this process's."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="module")
def one_device(quick_compiles) -> dict:
    return evaluate_on({"data": -1})


def test_the_eval_pipeline_pads_and_masks_each_example_exactly_once():
    source = odd_split()
    for count in (1, 2, 4):
        seen = []
        for index in range(count):
            for batch in batches(source, index, count):
                assert batch["image"].shape[0] == GLOBAL_BATCH // count
                seen += list(batch["label"][batch["mask"] > 0])
        assert sorted(seen) == sorted(source.labels.tolist())


def test_an_odd_sized_split_is_counted_exactly(one_device):
    source = odd_split()
    images = data_lib.normalize(source.images, source.mean, source.std)
    for label, scores in one_device.items():
        logits = np.asarray(tiny_model()(images, reduction=reduction.parse_spec(label)))
        top5 = np.argsort(-logits, axis=-1, kind="stable")[:, :5]
        assert scores["examples"] == SPLIT_SIZE
        assert scores["top1"] == np.sum(logits.argmax(-1) == source.labels) / SPLIT_SIZE
        assert scores["top5"] == np.sum((top5 == source.labels[:, None]).any(-1)) / SPLIT_SIZE
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        np.testing.assert_allclose(scores["loss"], -log_probs[np.arange(SPLIT_SIZE), source.labels].mean(), rtol=1e-5)
    assert 0 < one_device["none"]["top1"] < one_device["none"]["top5"] < 1  # a test that can fail


def test_eight_devices_give_the_counts_of_one(one_device):
    """A 2 x 2 x 2 (data, fsdp, tensor) mesh: 4 batch shards, weights split as training splits them."""
    script = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import test_sharded as t; "
        "print('RESULT ' + json.dumps(t.evaluate_on({'data': 2, 'fsdp': 2, 'tensor': 2})))"
    )
    child = subprocess.run(
        [sys.executable, "-c", script], env=subprocess_env(8), capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert child.returncode == 0, child.stderr[-3000:]
    eight_devices = json.loads(child.stdout.split("RESULT ")[-1])
    for label, scores in one_device.items():
        other = eight_devices[label]
        assert (other["examples"], other["top1"], other["top5"]) == (scores["examples"], scores["top1"], scores["top5"])
        np.testing.assert_allclose(other["loss"], scores["loss"], rtol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eval_command(workdir, *args) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "eval.py"),
        f"--workdir={workdir}",
        "--data=synthetic",
        "--batch_size=48",
        "--weights=params",
        *args,
    ]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A converted-style model directory (model.json + weights, no training config)."""
    from sarf_jax.models.pretrained import save_pretrained

    directory = tmp_path_factory.mktemp("model") / "vit"
    overrides = {k: v for k, v in MODEL.items() if k not in ("num_classes", "img_size", "in_chans")}
    save_pretrained(
        directory, tiny_model(), name="vit_mini", num_classes=10, img_size=16, in_chans=1, overrides=overrides
    )
    return directory


def test_eval_py_in_two_processes_matches_one_process(model_dir, tmp_path):
    """The synthetic test split has 256 images: 5 global batches of 48 and one with 16 real rows."""
    one, two = tmp_path / "one", tmp_path / "two"
    shutil.copytree(model_dir, one)
    shutil.copytree(model_dir, two)
    address = f"127.0.0.1:{_free_port()}"
    distributed = [
        subprocess.Popen(
            eval_command(two, f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"),
            env=subprocess_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    single = subprocess.run(
        eval_command(one), env=subprocess_env(1), capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    outputs = [p.communicate(timeout=600) for p in distributed]
    for process, (_, stderr) in zip(distributed, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    assert "wrote " in outputs[0][0] and "wrote " not in outputs[1][0]  # only process 0 writes

    results = {name: json.loads((path / "results.json").read_text()) for name, path in (("one", one), ("two", two))}
    assert results["two"]["meta"]["processes"] == 2 and results["two"]["meta"]["devices"] == 2
    assert results["one"]["meta"]["processes"] == 1 and results["two"]["meta"]["images_per_s_devices"] == 1
    fields = lambda r: {(e["weights"], e["reduction"]): (e["examples"], e["top1"], e["top5"]) for e in r["entries"]}
    assert fields(results["two"]) == fields(results["one"])
    assert {key: value[0] for key, value in fields(results["one"]).items()} == {("raw", "none"): 256}
    for a, b in zip(results["one"]["entries"], results["two"]["entries"]):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)


def test_a_mesh_the_devices_cannot_form_is_one_error_before_anything_is_written(model_dir, tmp_path):
    workdir = tmp_path / "vit"
    shutil.copytree(model_dir, workdir)
    run = lambda *args: subprocess.run(
        eval_command(workdir, *args), env=subprocess_env(1), capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    too_big = run("--mesh=data:3")
    assert too_big.returncode == 2 and "--mesh=data:3 does not fit this machine" in too_big.stderr
    assert "needs a multiple of 3 devices, but 1 are available" in too_big.stderr
    (workdir / "config.json").write_text(json.dumps({"mesh": {"data": 2, "fsdp": 1, "tensor": 1}}))
    from_training = run()
    assert from_training.returncode == 2 and "the training config's mesh" in from_training.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["config.json", "model.json", "state"]


def test_mesh_flag_syntax():
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_cli", ROOT / "eval.py")
    eval_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(eval_cli)
    assert eval_cli.parse_mesh("data:-1") == {"data": -1, "fsdp": 1, "tensor": 1}
    assert eval_cli.parse_mesh("data:2, fsdp:4") == {"data": 2, "fsdp": 4, "tensor": 1}
    for bad in ("model:2", "data", "data:two", "data:2;fsdp:2"):
        with pytest.raises(ValueError, match=r"AXIS one of data, fsdp, tensor"):
            eval_cli.parse_mesh(bad)
