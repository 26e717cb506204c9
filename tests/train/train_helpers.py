"""Helpers of the training tests: the tiny config, quick XLA compiles, and running train.py in
subprocesses. Test modules import the fixtures from here (a tests/train/conftest.py would shadow
tests/conftest.py, which other test folders import as `conftest`)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "tests" / "train" / "tiny_config.py"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # configs/ is not part of the installed package


def tiny_config(*args):
    """tests/train/tiny_config.py's get_config(*args), loaded by path as train.py would."""
    spec = importlib.util.spec_from_file_location("tiny_config", TINY_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


def tiny_train_step(config, num_classes: int = 4, total_steps: int = 6):
    """(initial state, the jitted training step) of `config`'s model on its one-host mesh, for
    16x16x1 images in [0, 255] normalised with mean 0.5 and std 0.25."""
    from sarf_jax import parallel
    from sarf_jax.train import optimizer
    from sarf_jax.train.state import ModelRecipe, init_train_state
    from sarf_jax.train.step import make_train_step

    mesh = parallel.make_mesh(config.mesh)
    recipe = ModelRecipe(config.model.name, num_classes, 16, 1, config.model.overrides.to_dict())
    tx = optimizer.make_optimizer(config.optimizer, total_steps)
    with jax.set_mesh(mesh):
        state, parts = init_train_state(recipe, config, tx, mesh)
    step = make_train_step(
        parts,
        config,
        tx,
        optimizer.learning_rate_schedule(config.optimizer, total_steps),
        num_classes=num_classes,
        mean=(0.5,),
        std=(0.25,),
        batch_sharding=parallel.batch_sharding(mesh),
    )
    return state, step


def subprocess_env(cache_dir: str, devices: int = 1) -> dict:
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_DISABLE_MOST_OPTIMIZATIONS="1",
        JAX_COMPILATION_CACHE_DIR=cache_dir,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.pop("XLA_FLAGS", None)
    return env


def train_command(workdir, *overrides, config: str = str(TINY_CONFIG)) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), f"--config={config}", f"--workdir={workdir}", *overrides]


def read_metrics(workdir, split: str = "train") -> list[dict]:
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row["split"] == split]


def run(command, env, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture(autouse=True, scope="module")
def quick_compiles():
    """Tiny models compile 2-3x faster with most XLA optimisations off; every run in these tests,
    in-process or in a subprocess (JAX_DISABLE_MOST_OPTIMIZATIONS=1), uses the same setting, so
    their results stay comparable bit for bit."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache shared by the subprocesses of one test session."""
    return str(tmp_path_factory.mktemp("jax_cache"))
