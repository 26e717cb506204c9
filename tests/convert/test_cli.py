"""python -m sarf_jax.convert: official checkpoint file -> model directory -> same logits."""

import argparse
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import official_state_dict, read_fixture

from sarf_jax.convert.__main__ import main
from sarf_jax.convert.torch_checkpoint import read_checkpoint
from sarf_jax.models.pretrained import load_pretrained

VIM_FIXTURE_SIZE = ["--img-size", "32", "--override", "patch_size=8", "--override", "embed_dim=64",
                    "--override", "depth=4"]


@pytest.fixture(scope="module")
def vim_checkpoint(tmp_path_factory):
    """The vim fixture's weights saved as Vim's training script does (DeiT-style dict)."""
    arrays, _ = read_fixture("vim")
    weights = {k: torch.tensor(v) for k, v in official_state_dict(arrays).items()}
    path = tmp_path_factory.mktemp("official") / "vim_fixture.pth"
    torch.save({"model": weights, "model_ema": {k: v + 1 for k, v in weights.items()}, "epoch": 3,
                "args": argparse.Namespace(model="vim_tiny", lr=5e-4), "scaler": "none"}, path)
    return path, arrays


def test_cli_converts_an_official_vim_checkpoint_to_the_same_logits(vim_checkpoint, tmp_path):
    path, arrays = vim_checkpoint
    out = tmp_path / "converted"
    assert main(["--model", "vim_tiny", "--torch-checkpoint", str(path), "--out", str(out), *VIM_FIXTURE_SIZE]) == 0
    model, info = load_pretrained(out, with_info=True)
    assert info["num_classes"] == 10 and info["source"]["weights"] == "model"
    assert len(info["source"]["sha256"]) == 64
    images = jnp.asarray(arrays["input"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(model(images), arrays["logits"], atol=1e-4, rtol=0)


def test_cli_ema_flag_reads_the_ema_weights(vim_checkpoint, tmp_path):
    path, arrays = vim_checkpoint
    out = tmp_path / "ema"
    assert main(["--model", "vim_tiny", "--torch-checkpoint", str(path), "--out", str(out), "--ema", *VIM_FIXTURE_SIZE]) == 0
    model, info = load_pretrained(out, with_info=True)
    assert info["source"]["weights"] == "model_ema"
    np.testing.assert_allclose(model.head.bias[...], arrays["sd/head.bias"] + 1, atol=1e-6)


def test_cli_refuses_mismatched_checkpoints_and_writes_nothing(vim_checkpoint, tmp_path, capsys):
    path, _ = vim_checkpoint
    out = tmp_path / "wrong"
    assert main(["--model", "vim_tiny", "--torch-checkpoint", str(path), "--out", str(out), "--img-size", "32",
                 "--override", "patch_size=8", "--override", "embed_dim=64"]) == 2  # depth 24 vs 4
    assert "missing 340 keys ['layers.10.mixer.A_b_log'" in capsys.readouterr().err  # 20 layers x 17
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert main(["--model", "vim_giant", "--torch-checkpoint", str(path), "--out", str(out)]) == 2
    assert "unknown model 'vim_giant'; valid names:" in capsys.readouterr().err


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


def test_module_entry_point_prints_usage():
    result = subprocess.run([sys.executable, "-m", "sarf_jax.convert", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--torch-checkpoint" in result.stdout
