"""Scale-out: mesh construction, parameter sharding rules, a data x fsdp x tensor = 2 x 2 x 2 mesh
on 8 fake CPU devices, and two processes x 2 devices joined by jax.distributed.

Multi-device runs happen in subprocesses (JAX_NUM_CPU_DEVICES), since this process has one device.
"""

import json
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from train_helpers import (  # noqa: F401 - fixtures
    ROOT,
    compilation_cache,
    quick_compiles,
    read_metrics,
    run,
    subprocess_env,
    tiny_config,
    train_command,
)

from sarf_jax import models, parallel
from sarf_jax.train import loop

SHARDED_RUN = """
import json, sys
sys.path.insert(0, {tests!r})
import jax
from train_helpers import tiny_config
from sarf_jax import parallel
from sarf_jax.train import loop, optimizer
from sarf_jax.train.state import ModelRecipe, init_train_state

config = tiny_config()
config.total_steps, config.checkpoint_every = 3, 3
config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
out = {{}}
bad = tiny_config()
bad.mesh.data, bad.mesh.fsdp, bad.mesh.tensor = 2, 2, 2
bad.batch_size = 6
try:
    loop.train_and_evaluate(bad, {workdir!r} + "/bad")
except ValueError as error:
    out["bad_batch_error"] = str(error)
loop.train_and_evaluate(config, {workdir!r} + "/mesh")
mesh = parallel.make_mesh(config.mesh)
recipe = ModelRecipe(config.model.name, 4, 16, 1, config.model.overrides.to_dict())
with jax.set_mesh(mesh):
    state, _ = init_train_state(recipe, config, optimizer.make_optimizer(config.optimizer, 3), mesh)
specs = {{}}
for prefix, tree in (("", state["params"]), ("mu/", state["opt_state"][1][0].mu)):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        shard_shape = list(leaf.addressable_shards[0].data.shape)
        specs[prefix + parallel.path_string(path)] = (str(leaf.sharding.spec), shard_shape)
out["specs"] = specs
print("RESULT " + json.dumps(out))
"""


def test_mesh_shape_resolves_the_rest_and_rejects_what_does_not_fit():
    assert parallel.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert parallel.mesh_shape({"data": 1, "fsdp": -1, "tensor": 1}, 4) == (1, 4, 1)
    with pytest.raises(ValueError, match=r"needs a multiple of 16 devices, but 8 are available"):
        parallel.mesh_shape({"data": 4, "fsdp": 2, "tensor": 2}, 8)
    with pytest.raises(ValueError, match=r"at most one axis may be -1"):
        parallel.mesh_shape({"data": -1, "fsdp": -1, "tensor": 1}, 8)
    with pytest.raises(ValueError, match=r"config.mesh.tensor must be a positive int or -1"):
        parallel.mesh_shape({"data": 1, "fsdp": 1, "tensor": 0}, 8)


@pytest.mark.parametrize("name", ["vim_mini", "vit_mini"])
def test_every_parameter_has_an_explicit_rule(name):
    """No parameter of the registered backbones falls through to the generic FSDP fallback."""
    model = nnx.eval_shape(lambda: models.create(name, num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0)))
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]:
        text = parallel.path_string(path)
        assert any(re.search(p, text) and len(a) == leaf.ndim for p, a in parallel.PARAM_AXES), text


def test_partition_spec_maps_logical_axes_and_replicates_what_does_not_divide():
    mesh = jax.sharding.AbstractMesh((2, 2, 2), parallel.MESH_AXES)
    assert parallel.partition_spec(("embed", "inner"), (64, 256), mesh) == P("fsdp", "tensor")
    assert parallel.partition_spec(("inner", "state"), (256, 16), mesh) == P("tensor", None)
    assert parallel.partition_spec(("embed", "classes"), (63, 10), mesh) == P(None, None)
    assert parallel.logical_axes("layers/0/mixer/A_b_log", (256, 16)) == ("inner", "state")
    assert parallel.logical_axes("something/new", (3, 96)) == (None, "embed")


def test_mesh_2x2x2_on_8_devices_matches_one_device(tmp_path, compilation_cache):
    script = SHARDED_RUN.format(tests=str(ROOT / "tests" / "train"), workdir=str(tmp_path))
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        env=subprocess_env(compilation_cache, devices=8),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    config = tiny_config()
    config.total_steps, config.checkpoint_every = 3, 3
    loop.train_and_evaluate(config, tmp_path / "single")
    stdout, stderr = child.communicate(timeout=600)
    assert child.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.split("RESULT ")[-1])

    single = [row["loss"] for row in read_metrics(tmp_path / "single")]
    sharded = [row["loss"] for row in read_metrics(tmp_path / "mesh")]
    np.testing.assert_allclose(sharded, single, rtol=1e-4)
    specs = out["specs"]
    mixer = "layers/0/mixer/"
    assert specs[mixer + "in_proj/kernel"] == [str(P("fsdp", "tensor")), [8, 32]]  # (16, 64) over 2 x 2
    assert specs["mu/" + mixer + "in_proj/kernel"] == [str(P("fsdp", "tensor")), [8, 32]]  # optimizer state too
    assert specs[mixer + "out_proj/kernel"] == [str(P("tensor", "fsdp")), [16, 8]]
    assert specs[mixer + "A_log"] == [str(P("tensor", None)), [16, 16]]
    assert specs[mixer + "x_proj_b/kernel"] == [str(P("tensor", None)), [16, 33]]
    assert specs["pos_embed"] == [str(P(None, None, "fsdp")), [1, 17, 8]]
    assert "config.batch_size = 6 is invalid: must be divisible by the data-parallel size" in out["bad_batch_error"]
    assert not (tmp_path / "bad").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_with_four_devices(tmp_path, compilation_cache):
    address = f"127.0.0.1:{_free_port()}"
    distributed = [
        subprocess.Popen(
            train_command(
                tmp_path / "two",
                "--config.total_steps=3",
                "--config.checkpoint_every=3",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ),
            env=subprocess_env(compilation_cache, devices=2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]
    single = run(
        train_command(tmp_path / "one", "--config.total_steps=3", "--config.checkpoint_every=3"),
        subprocess_env(compilation_cache, devices=4),
        timeout=600,
    )
    outputs = [p.communicate(timeout=600) for p in distributed]
    for process, (_, stderr) in zip(distributed, outputs):
        assert process.returncode == 0, stderr[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    assert "starting from scratch" in outputs[0][0]
    two = [row["loss"] for row in read_metrics(tmp_path / "two")]
    one = [row["loss"] for row in read_metrics(tmp_path / "one")]
    assert len(two) == 3
    np.testing.assert_allclose(two, one, rtol=1e-4)
    assert sorted(
        p.name for p in (tmp_path / "two" / "checkpoints" / "3" / "data").iterdir() if p.suffix == ".json"
    ) == ["process_0-of-2.json", "process_1-of-2.json"]


@pytest.mark.parametrize("name, devices", [("mesh/tpu_v5e_256", 256), ("mesh/gpu_8", 8), ("imagenet_vim_tiny", 8)])
def test_hardware_configs_are_valid_for_their_machines(name, devices):
    import importlib

    from sarf_jax.train import config as config_lib

    config = importlib.import_module("configs." + name.replace("/", ".")).get_config()
    config_lib.validate(config)
    shape = parallel.mesh_shape(config.mesh, devices)
    config_lib.validate_parallelism(config, data_parallel=shape[0] * shape[1], process_count=devices // 4 or 1)
    assert config.model.name in models.list_models()
