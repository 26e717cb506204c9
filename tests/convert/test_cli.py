"""python -m sarf_jax.convert: official checkpoint file -> model directory -> same logits."""

import argparse
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import official_state_dict, read_fixture

from sarf_jax.convert.__main__ import convert, parse_override
from sarf_jax.convert.torch_checkpoint import read_checkpoint
from sarf_jax.models.pretrained import load_pretrained

ROOT = pathlib.Path(__file__).resolve().parents[2]
VIM_FIXTURE_SIZE = ["--img_size=32", "--override=patch_size=8", "--override=embed_dim=64", "--override=depth=4"]


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "sarf_jax.convert", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture(scope="module")
def vim_checkpoint(tmp_path_factory):
    """The vim fixture's weights saved as Vim's training script does (DeiT-style dict)."""
    arrays, _ = read_fixture("vim")
    weights = {k: torch.tensor(v) for k, v in official_state_dict(arrays).items()}
    path = tmp_path_factory.mktemp("official") / "vim_fixture.pth"
    torch.save(
        {
            "model": weights,
            "model_ema": {k: v + 1 for k, v in weights.items()},
            "epoch": 3,
            "args": argparse.Namespace(model="vim_tiny", lr=5e-4),
            "scaler": "none",
        },
        path,
    )
    return path, arrays


def test_cli_converts_an_official_vim_checkpoint_to_the_same_logits(vim_checkpoint, tmp_path):
    path, arrays = vim_checkpoint
    out = tmp_path / "converted"
    result = run_cli("--model=vim_tiny", f"--torch_checkpoint={path}", f"--out={out}", *VIM_FIXTURE_SIZE)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {out}: vim_tiny (10 classes, 32 px) from model of {path}" in result.stdout
    model, info = load_pretrained(out, with_info=True)
    assert info["num_classes"] == 10 and info["source"]["weights"] == "model"
    assert len(info["source"]["sha256"]) == 64
    images = jnp.asarray(arrays["input"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(model(images), arrays["logits"], atol=1e-4, rtol=0)


def test_ema_reads_the_ema_weights(vim_checkpoint, tmp_path):
    path, arrays = vim_checkpoint
    out = tmp_path / "ema"
    convert("vim_tiny", path, out, ema=True, img_size=32, overrides=dict(patch_size=8, embed_dim=64, depth=4))
    model, info = load_pretrained(out, with_info=True)
    assert info["source"]["weights"] == "model_ema"
    np.testing.assert_allclose(model.head.bias[...], arrays["sd/head.bias"] + 1, atol=1e-6)


def test_mismatched_checkpoints_and_unknown_models_are_refused_and_nothing_is_written(vim_checkpoint, tmp_path):
    path, _ = vim_checkpoint
    out = tmp_path / "wrong"
    with pytest.raises(ValueError, match=r"missing 340 keys \['layers.10.mixer.A_b_log'"):  # 20 layers x 17
        convert("vim_tiny", path, out, img_size=32, overrides=dict(patch_size=8, embed_dim=64))  # depth 24 vs 4
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="unknown model 'vim_giant'; valid names:"):
        convert("vim_giant", path, out)
    with pytest.raises(ValueError, match="--override must look like key=value, got 'depth'"):
        parse_override("depth")
    assert parse_override("depths=[2, 2]") == ("depths", [2, 2]) and parse_override("a=b") == ("a", "b")


def test_cli_errors_are_one_line_with_exit_status_2(tmp_path):
    result = run_cli("--model=vim_tiny", f"--torch_checkpoint={tmp_path / 'absent.pth'}", f"--out={tmp_path / 'out'}")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"sarf_jax.convert: error: --torch_checkpoint: no such file {tmp_path / 'absent.pth'}"
    ]
    result = run_cli("--model=vim_tiny")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "sarf_jax.convert: error: flag --torch_checkpoint=None: Flag --torch_checkpoint must have a value other "
        "than None.; flag --out=None: Flag --out must have a value other than None."
    ]
    assert list(tmp_path.iterdir()) == []


def test_loading_never_runs_code_from_the_checkpoint(tmp_path):
    class Payload:
        def __reduce__(self):
            return (pathlib_touch, (str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"model": {"head.weight": torch.zeros(2, 2)}, "payload": Payload()}, path)
    with pytest.raises(ValueError, match=r"refusing to load it"):
        read_checkpoint(str(path))
    assert not (tmp_path / "pwned").exists()


def pathlib_touch(path):  # what the malicious payload would call
    open(path, "w").close()
