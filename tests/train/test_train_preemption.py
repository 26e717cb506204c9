"""train.py as a process: kill -9 and SIGTERM mid-run, then restart; the result must be the
uninterrupted run's, bit for bit (same CPU, same XLA flags). Also the CLI's bad-override error."""

import re
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from flax import nnx
from train_helpers import ROOT, compilation_cache, quick_compiles, run, subprocess_env, train_command  # noqa: F401 - fixtures

from sarf_jax.models import pretrained

RUN = [
    "--config.total_steps=120",
    "--config.checkpoint_every=20",
    "--config.keep_checkpoints=2",
    "--config.log_every=20",
]


def final_params(workdir):
    model = pretrained.load_pretrained(workdir, step=120)
    ema = pretrained.load_pretrained(workdir, step=120, weights="ema")
    return [np.asarray(x) for x in jax.tree.leaves((nnx.state(model, nnx.Param), nnx.state(ema, nnx.Param)))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compilation_cache):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = run(train_command(workdir, *RUN), subprocess_env(compilation_cache))
    assert result.returncode == 0, result.stderr[-3000:]
    return final_params(workdir)


def start_and_interrupt(workdir, env, sig) -> subprocess.CompletedProcess:
    """Start a run, wait for its checkpoint at step 20, then send `sig`."""
    process = subprocess.Popen(
        train_command(workdir, *RUN), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "20").exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint at step 20 within 300 s"
        time.sleep(0.02)
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_kill_9_then_restart_ends_with_the_uninterrupted_parameters(reference, tmp_path, compilation_cache):
    env = subprocess_env(compilation_cache)
    killed = start_and_interrupt(tmp_path, env, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = run(train_command(tmp_path, *RUN), env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = int(re.search(r"resumed from step (\d+)", resumed.stdout).group(1))
    assert step >= 20 and step % 20 == 0
    for got, want in zip(final_params(tmp_path), reference):
        np.testing.assert_array_equal(got, want)


def test_sigterm_saves_at_that_step_then_resumes_exactly(reference, tmp_path, compilation_cache):
    env = subprocess_env(compilation_cache)
    stopped = start_and_interrupt(tmp_path, env, signal.SIGTERM)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    step = int(re.search(r"preempted: saved a checkpoint at step (\d+)", stopped.stdout).group(1))
    assert (tmp_path / "checkpoints" / str(step)).is_dir()
    resumed = run(train_command(tmp_path, *RUN), env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from step {step}" in resumed.stdout
    for got, want in zip(final_params(tmp_path), reference):
        np.testing.assert_array_equal(got, want)


def test_unknown_config_key_is_one_clear_error_and_writes_nothing(tmp_path, compilation_cache):
    result = run(
        train_command(tmp_path / "workdir", "--config.optimizer.learning_rate=0.1"), subprocess_env(compilation_cache)
    )
    assert result.returncode != 0
    assert "invalid config override in --config.optimizer.learning_rate=0.1" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "workdir").exists()
