"""Every entry point takes absl flags with underscores and `--help` lists them (run as a user would)."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# command -> flags its --help must list. --help exits 0 everywhere (absl's own app.run would exit 1).
ENTRY_POINTS = {
    "train.py": (["train.py"], ["--config", "--workdir", "--coordinator_address", "--num_processes"]),
    "eval.py": (
        ["eval.py"],
        ["--workdir", "--reduction", "--sweep", "--data_dir", "--batch_size", "--weights", "--mesh"],
    ),
    "sarf_jax.convert": (
        ["-m", "sarf_jax.convert"],
        ["--model", "--torch_checkpoint", "--out", "--ema", "--img_size", "--in_chans", "--override"],
    ),
    "sarf_jax.export": (
        ["-m", "sarf_jax.export"],
        ["--workdir", "--out", "--reduction", "--batch", "--weights", "--mean", "--std", "--raw_input"],
    ),
    "tools/reproduce.py": (
        ["tools/reproduce.py"],
        [
            "--workdir",
            "--out",
            "--data_dir",
            "--models",
            "--steps",
            "--sweep",
            "--finetune_model",
            "--finetune_steps",
            "--finetune_reduction",
            "--report_only",
        ],
    ),
}


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_lists_the_flags(name):
    command, expected_flags = ENTRY_POINTS[name]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    flags_section = result.stdout.split("\nflags:\n", 1)[1]  # after the module docstring
    listed = set(re.findall(r"^  --(?:\[no\])?([^:\s]+):", flags_section, flags=re.MULTILINE))
    assert {flag.removeprefix("--") for flag in expected_flags} <= listed, result.stdout
    assert not any("-" in flag for flag in listed), f"flags are spelled with underscores: {sorted(listed)}"
