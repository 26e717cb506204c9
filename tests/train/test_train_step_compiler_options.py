"""The training step and the evaluation steps compile with sarf_jax.ops.compiler_options (512-bit
vectors on a CPU). Checked by handing them an option no XLA knows: compiling must then fail."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_helpers import tiny_config, tiny_train_step

from sarf_jax import models, parallel
from sarf_jax.evaluate import sharded, sweep
from sarf_jax.train import step as step_module

UNKNOWN = {"xla_cpu_no_such_option": 1}


def test_the_training_step_compiles_with_sarf_jax_compiler_options(monkeypatch):
    monkeypatch.setattr(step_module, "compiler_options", lambda: UNKNOWN)
    state, step = tiny_train_step(tiny_config())
    batch = {"image": jnp.zeros((8, 16, 16, 1), jnp.uint8), "label": jnp.zeros(8, jnp.int32)}
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
        step(state, batch)


def test_the_throughput_step_compiles_with_sarf_jax_compiler_options(monkeypatch):
    model = models.create("vit_mini", num_classes=4, img_size=16, in_chans=1, rngs=nnx.Rngs(0), depth=1)
    monkeypatch.setattr(sweep, "compiler_options", lambda: UNKNOWN)
    with pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
        sweep.images_per_second(model, None, batch_size=2, img_size=16, in_chans=1, repeats=1)


def test_the_sharded_evaluation_step_compiles_with_sarf_jax_compiler_options(monkeypatch):
    model = models.create("vit_mini", num_classes=4, img_size=16, in_chans=1, rngs=nnx.Rngs(0), depth=1)
    graphdef, state = nnx.split(model)
    mesh = parallel.make_mesh(tiny_config().mesh)
    monkeypatch.setattr(sharded, "compiler_options", lambda: UNKNOWN)
    batch = {"image": np.zeros((4, 16, 16, 1), np.float32), "label": np.zeros(4, np.int32)}
    with jax.set_mesh(mesh), pytest.raises(jax.errors.JaxRuntimeError, match="No such compile option"):
        sharded.Evaluator(graphdef, mesh)((sharded.place(state, mesh),), [batch])
