"""sarf_jax.export: artifacts that give the model's logits for any batch, normalise pixels as the
training run did, carry their metadata, and a CLI that writes nothing on bad input."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import default as default_config
from sarf_jax import models
from sarf_jax.data.pipeline import normalize
from sarf_jax.export import export_directory, load
from sarf_jax.export.stats import input_stats
from sarf_jax.models.pretrained import load_pretrained, save_pretrained
from sarf_jax.reduction import parse_spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMG, CHANS, CLASSES = 16, 1, 4
SARF = "sarf_tome:keep=0.6,sites=1"  # one site on the 8x8 grid: 8x8 -> 6x6
TINY = {
    "vmamba": ("vmamba_mini", dict(depths=(2,), dims=16, patch_size=2)),
    "vit": ("vit_mini", dict(depth=2, embed_dim=16, num_heads=2, patch_size=2)),
}
SYNTHETIC_STATS = ([0.5], [0.25])  # sarf_jax.data.sources.synthetic's mean and std


def images(batch, seed=0):
    return np.random.default_rng(seed).uniform(-2, 2, (batch, IMG, IMG, CHANS)).astype(np.float32)


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "sarf_jax.export", *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """{"vmamba", "vit"}: tiny model directories written by save_pretrained."""
    root = tmp_path_factory.mktemp("models")
    for key, (name, overrides) in TINY.items():
        model = models.create(name, num_classes=CLASSES, img_size=IMG, in_chans=CHANS, rngs=nnx.Rngs(1), **overrides)
        save_pretrained(
            root / key, model, name=name, num_classes=CLASSES, img_size=IMG, in_chans=CHANS, overrides=overrides
        )
    return {key: root / key for key in TINY}


@pytest.fixture(scope="module")
def trained_dir(model_dirs, tmp_path_factory):
    """The vit directory plus the config.json train.py writes, naming synthetic data (its own mean/std)."""
    directory = tmp_path_factory.mktemp("trained") / "vit"
    shutil.copytree(model_dirs["vit"], directory)
    config = default_config.get_config()
    config.data.name, config.data.image_size = "synthetic", IMG
    config.data.synthetic.update(dict(size=8, channels=CHANS, num_classes=CLASSES))
    (directory / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    return directory


@pytest.fixture(scope="module")
def cli_artifact(model_dirs, tmp_path_factory):
    """python -m sarf_jax.export on the vit directory, batch 2, under SARF: (result, path)."""
    out = tmp_path_factory.mktemp("cli") / "served" / "vit.jax"
    return run_cli(f"--workdir={model_dirs['vit']}", f"--out={out}", f"--reduction={SARF}", "--batch=2"), out


def reference_logits(model, x, reduction=None):
    """The model itself, compiled (faster than eager on CPU)."""
    return nnx.jit(lambda model, x: model(x, reduction=parse_spec(reduction)))(model, jnp.asarray(x))


def max_difference(a, b) -> float:
    return float(jnp.max(jnp.abs(jnp.asarray(a) - jnp.asarray(b))))


def test_sarf_round_trip_gives_the_models_logits_for_any_batch(model_dirs, tmp_path, monkeypatch):
    with monkeypatch.context() as host:
        # as on a GPU host, where scan_impl="auto" picks the Pallas GPU kernel, which lowers for CUDA
        # only (and not with a symbolic batch): the export must use the portable `chunked` scan
        host.setattr(jax, "default_backend", lambda: "gpu")
        metadata = export_directory(model_dirs["vmamba"], tmp_path / "vmamba.jax", reduction=SARF)
    served, model = load(tmp_path / "vmamba.jax"), load_pretrained(model_dirs["vmamba"])
    assert served.exported.platforms == ("cpu", "cuda", "tpu") and metadata["platforms"] == ["cpu", "cuda", "tpu"]
    assert str(served.exported.in_avals[0].shape[0]) == "b" and metadata["batch"] is None
    assert metadata["scan_impl"] == "chunked" and metadata["reduction"] == SARF and metadata["input"] == "normalized"
    x = images(3)
    expected = reference_logits(model, x, SARF)  # inference is per image: rows of a batch of 3 serve batch 1
    for batch in (1, 3):
        logits = served(x[:batch])
        assert logits.shape == (batch, CLASSES) and logits.dtype == jnp.float32
        assert max_difference(logits, expected[:batch]) <= 1e-6


def test_dense_round_trip_normalises_pixels_with_the_training_runs_mean_and_std(trained_dir, tmp_path):
    metadata = export_directory(trained_dir, tmp_path / "vit.jax")
    assert metadata["input"] == "pixels" and (metadata["mean"], metadata["std"]) == SYNTHETIC_STATS
    served, model = load(tmp_path / "vit.jax"), load_pretrained(trained_dir)
    pixels = np.random.default_rng(0).integers(0, 256, (3, IMG, IMG, CHANS), dtype=np.uint8)
    expected = reference_logits(model, normalize(jnp.asarray(pixels), *SYNTHETIC_STATS))
    for given in (pixels, pixels.astype(np.float32)):  # uint8 or float in [0, 255]
        assert max_difference(served(given), expected) <= 1e-6


def test_input_stats_given_raw_from_the_run_or_none(trained_dir, model_dirs):
    assert input_stats(trained_dir, in_chans=1) == ((0.5,), (0.25,))
    assert input_stats(trained_dir, mean=[0.3], std=[0.2], in_chans=1) == ((0.3,), (0.2,))
    assert input_stats(trained_dir, raw_input=True, in_chans=1) is None
    assert input_stats(model_dirs["vit"], in_chans=1) is None  # a converted model: no config.json
    for kwargs, message in (
        (dict(mean=[0.3]), "mean and std go together"),
        (dict(mean=[0.3, 0.3], std=[1, 1]), "mean: expected 1 finite values"),
        (dict(mean=[0.3], std=[0.0]), "std: every value must be > 0"),
        (dict(mean=[0.3], std=[1], raw_input=True), "give no mean/std"),
    ):
        with pytest.raises(ValueError, match=message):
            input_stats(trained_dir, in_chans=1, **kwargs)


def test_out_must_name_a_file(model_dirs, tmp_path):
    with pytest.raises(ValueError, match="out: .* is a directory; give a file name"):
        export_directory(model_dirs["vit"], tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="out: cannot create .*: .*file is not a directory"):
        export_directory(model_dirs["vit"], tmp_path / "file" / "model.jax")


def test_cli_writes_the_artifact_and_its_metadata(cli_artifact, model_dirs):
    result, out = cli_artifact
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {out} and {out}.json: vit_mini under {SARF}" in result.stdout
    metadata = json.loads(pathlib.Path(f"{out}.json").read_text())
    assert {
        k: metadata[k]
        for k in (
            "model",
            "img_size",
            "in_chans",
            "num_classes",
            "reduction",
            "batch",
            "input",
            "mean",
            "std",
            "weights",
        )
    } == {
        "model": "vit_mini",
        "img_size": IMG,
        "in_chans": CHANS,
        "num_classes": CLASSES,
        "reduction": SARF,
        "batch": 2,
        "input": "normalized",
        "mean": None,
        "std": None,
        "weights": "params",
    }
    served, model = load(out), load_pretrained(model_dirs["vit"])
    assert max_difference(served(images(2)), reference_logits(model, images(2), SARF)) <= 1e-6
    with pytest.raises(ValueError, match=r"images must have shape \(2, 16, 16, 1\) \(NHWC\), got \(3, 16, 16, 1\)"):
        served(images(3))
    with pytest.raises(ValueError, match="takes normalised float images, got uint8"):
        served(np.zeros((2, IMG, IMG, CHANS), np.uint8))


def test_load_refuses_an_artifact_that_its_metadata_does_not_describe(cli_artifact, tmp_path):
    _, out = cli_artifact
    copy = tmp_path / "copy.jax"
    shutil.copy(out, copy)
    with pytest.raises(ValueError, match="no such file .*copy.jax.json"):
        load(copy)
    shutil.copy(f"{out}.json", f"{copy}.json")
    load(copy)  # the pair belongs together
    data = copy.read_bytes()
    copy.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="does not describe .* \\(sha256 differs\\)"):
        load(copy)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workdir={missing}"], "missing has no model.json: not a training workdir"),
        (["--workdir={vit}", "--reduction=sarf_tome:keep=0.35,sites=2"], "sites=2 but a backbone with depths (2,)"),
        (["--workdir={vit}", "--batch=abc"], "--batch must be a positive integer or 'dynamic', got 'abc'"),
    ],
    ids=["unknown workdir", "spec the model cannot take", "bad batch"],
)
def test_cli_rejects_bad_input_with_one_line_and_writes_nothing(model_dirs, tmp_path, args, message):
    out = tmp_path / "out" / "model.jax"
    args = [a.format(missing=tmp_path / "missing", vit=model_dirs["vit"]) for a in args]
    result = run_cli(*args, f"--out={out}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("sarf_jax.export: error: ") and message in lines[0]
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
