"""The training loop in-process on one CPU device: workdir contents, exact resume after a
preemption, fallback from an unreadable checkpoint, NaN handling, bad configs, init_from."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from train_helpers import compilation_cache, quick_compiles, tiny_config, tiny_train_step  # noqa: F401 - fixtures

from sarf_jax import parallel
from sarf_jax.models import pretrained
from sarf_jax.train import checkpoint as checkpoint_lib
from sarf_jax.train import loop, optimizer
from sarf_jax.train.state import ModelRecipe, init_train_state, load_initial_params


def params_of(workdir, step=None, weights="params"):
    model = pretrained.load_pretrained(workdir, step=step, weights=weights)
    return jax.tree.map(np.asarray, nnx.state(model, nnx.Param))


def assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at 2, 4, 6)."""
    workdir = tmp_path_factory.mktemp("reference")
    results = loop.train_and_evaluate(tiny_config(), workdir)
    return workdir, results


def test_run_writes_config_model_metrics_tensorboard_and_checkpoints(reference):
    workdir, results = reference
    config = json.loads((workdir / "config.json").read_text())
    assert config["model"]["name"] == "vim_mini" and config["total_steps"] == 6
    model_info = json.loads((workdir / "model.json").read_text())
    assert model_info["num_classes"] == 4 and model_info["in_chans"] == 1 and model_info["img_size"] == 16
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows if r["split"] == "train")
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6]
    assert 0 <= results["eval_accuracy"] <= 1 and 0 <= results["ema_eval_accuracy"] <= 1
    # the workdir is a model directory: eval can load its params or EMA params
    params, ema = params_of(workdir), params_of(workdir, weights="ema")
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ema)))


def test_preemption_saves_at_that_step_and_resume_is_exact(reference, tmp_path, monkeypatch, capsys):
    def stop_at_3(self, step):
        return step == 3

    monkeypatch.setattr(checkpoint_lib.PreemptionWatcher, "should_stop", stop_at_3)
    assert loop.train_and_evaluate(tiny_config(), tmp_path) == {"preempted_at_step": 3}
    assert "preempted: saved a checkpoint at step 3" in capsys.readouterr().out
    monkeypatch.undo()
    loop.train_and_evaluate(tiny_config(), tmp_path)
    assert "resumed from step 3" in capsys.readouterr().out
    assert_trees_equal(params_of(tmp_path), params_of(reference[0]))
    assert_trees_equal(params_of(tmp_path, weights="ema"), params_of(reference[0], weights="ema"))
    train = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"]
    expected = [
        r for r in map(json.loads, (reference[0] / "metrics.jsonl").read_text().splitlines()) if r["split"] == "train"
    ]
    assert [r["loss"] for r in train] == [r["loss"] for r in expected]


def test_truncated_latest_checkpoint_falls_back_to_previous(reference, tmp_path, capsys):
    workdir = tmp_path / "run"
    shutil.copytree(reference[0], workdir)
    latest = workdir / "checkpoints" / "6"
    for file in (latest / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 64 and "ocdbt" in str(file.relative_to(latest)) + file.name:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    loop.train_and_evaluate(tiny_config(), workdir)
    assert "resumed from step 4" in capsys.readouterr().out
    assert [p.name.split("-")[0] for p in (workdir / "unreadable_checkpoints").iterdir()] == ["6"]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6]
    assert_trees_equal(params_of(workdir), params_of(reference[0]))


class NaNAtBatch:
    """Wraps the training iterator; batch number `bad` (1-based) has NaN images."""

    def __init__(self, iterator, bad):
        self.iterator, self.bad, self.count = iterator, bad, 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.iterator)
        self.count += 1
        if self.count == self.bad:
            batch = dict(batch, image=np.full(batch["image"].shape, np.nan, np.float32))
        return batch

    def get_state(self):  # grain's checkpoint handler stores bytes for non-grain iterators
        return json.dumps(self.iterator.get_state()).encode()

    def set_state(self, state):
        self.iterator.set_state(json.loads(state))

    def start_prefetch(self):
        pass


def test_nan_loss_stops_and_keeps_last_good_checkpoint(reference, tmp_path, monkeypatch):
    original = loop.data_lib.train_iterator
    monkeypatch.setattr(loop.data_lib, "train_iterator", lambda *a, **k: NaNAtBatch(original(*a, **k), 3))
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan .* at step 3.*Last good checkpoint: step 2"):
        loop.train_and_evaluate(tiny_config(), tmp_path)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2]
    assert_trees_equal(params_of(tmp_path, step=2), params_of(reference[0], step=2))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("optimizer.lr", -1e-3, r"config.optimizer.lr = -0.001 is invalid: must be > 0"),
        ("mesh.data", 2, r"config.mesh .* needs a multiple of 2 devices, but 1 are available"),
        ("data.dir", "/nonexistent/fmnist", r"config.data.dir='/nonexistent/fmnist' has no train-images-idx3-ubyte"),
        ("model.name", "vim_nope", r"unknown model 'vim_nope'"),
        ("reduction", "sarf_tome:hybrid_2p1", r"config.reduction='sarf_tome:hybrid_2p1': schedule 'hybrid_2p1' exists"),
        ("reduction", "sarf_tome:keep=0.5", r"config.reduction='sarf_tome:keep=0.5': schedule: sites=0 but"),
        ("profile_steps", -1, r"config.profile_steps = -1 is invalid: must be a non-negative int"),
        ("data.crop_min_scale", 0.0, r"config.data.crop_min_scale = 0.0 is invalid: must be in \(0, 1\]"),
        ("init_from_weights", "best", r"config.init_from_weights = 'best' is invalid: must be one of \('params'"),
    ],
)
def test_bad_config_raises_one_clear_error_and_writes_nothing(tmp_path, field, value, message):
    config = tiny_config()
    if field == "data.dir":
        config.data.name = "fashion_mnist"
    *section, key = field.split(".")
    (config[section[0]] if section else config)[key] = value
    workdir = tmp_path / "workdir"
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(config, workdir)
    assert not workdir.exists()


def test_init_from_loads_the_given_weights(reference):
    config = tiny_config()
    mesh = parallel.make_mesh(config.mesh)
    recipe = ModelRecipe(config.model.name, 4, 16, 1, config.model.overrides.to_dict())
    with jax.set_mesh(mesh):
        state, parts = init_train_state(recipe, config, optimizer.make_optimizer(config.optimizer, 6), mesh)
    state = load_initial_params(state, parts, str(reference[0]))
    assert_trees_equal(jax.tree.map(np.asarray, state["params"]), params_of(reference[0]))
    assert_trees_equal(jax.tree.map(np.asarray, state["ema"]), params_of(reference[0]))


def test_init_from_ema_weights_at_another_image_size(reference):
    """A run at 24 px continues from the EMA weights of the 16 px reference, position embeddings
    resized as load_pretrained resizes them."""
    config = tiny_config()
    mesh = parallel.make_mesh(config.mesh)
    recipe = ModelRecipe(config.model.name, 4, 24, 1, config.model.overrides.to_dict())
    with jax.set_mesh(mesh):
        state, parts = init_train_state(recipe, config, optimizer.make_optimizer(config.optimizer, 6), mesh)
    state = load_initial_params(state, parts, str(reference[0]), weights="ema", img_size=24)
    expected = pretrained.load_pretrained(reference[0], weights="ema", img_size=24)
    expected = jax.tree.map(np.asarray, nnx.state(expected, nnx.Param))
    assert_trees_equal(jax.tree.map(np.asarray, state["params"]), expected)
    assert jax.tree.map(np.shape, expected) != jax.tree.map(np.shape, params_of(reference[0], weights="ema"))


def test_init_from_ema_of_a_model_directory_is_a_config_error(reference, tmp_path):
    model_dir = tmp_path / "model"
    config = tiny_config()
    overrides = config.model.overrides.to_dict()
    model = pretrained.load_pretrained(reference[0])
    pretrained.save_pretrained(
        model_dir, model, name=config.model.name, num_classes=4, img_size=16, in_chans=1, overrides=overrides
    )
    config.init_from, config.init_from_weights = str(model_dir), "ema"
    with pytest.raises(ValueError, match=r"config.init_from_weights='ema' needs a training workdir"):
        loop.train_and_evaluate(config, tmp_path / "workdir")
    assert not (tmp_path / "workdir").exists()


def test_config_reduction_is_active_in_the_training_forward_pass():
    """Same init, same batch: the training step's loss changes when config.reduction is on."""
    losses = {}
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (8, 16, 16, 1)), jnp.uint8),
        "label": jnp.asarray(rng.integers(0, 4, 8), jnp.int32),
    }
    for reduction in ("none", "sarf_tome:keep=0.5,sites=1"):
        config = tiny_config()
        config.model.overrides.depth = 3  # block 1 reduces, block 2 (and the class token) sees it
        config.reduction = reduction
        state, step = tiny_train_step(config)
        losses[reduction] = float(step(state, batch)[1]["loss"])
    assert np.isfinite(list(losses.values())).all()
    assert losses["none"] != losses["sarf_tome:keep=0.5,sites=1"]


def test_batch_norm_statistics_train_under_jit_and_grad(tmp_path):
    """PlainMamba's stem has BatchNorm: its running statistics are mutated inside the train step."""
    config = tiny_config("plainmamba_mini")
    config.model.overrides = ml_collections.ConfigDict(dict(depth=1, embed_dim=16, patch_size=4, stem_channels=8))
    config.total_steps, config.checkpoint_every = 2, 2
    loop.train_and_evaluate(config, tmp_path)
    model = pretrained.load_pretrained(tmp_path)
    means = [np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model, nnx.BatchStat)) if path[-1] == "mean"]
    assert means and all(np.isfinite(m).all() for m in means)
    assert any(np.abs(m).max() > 0 for m in means)  # initialised at zero, updated by the two steps


def test_profile_steps_writes_a_trace_of_those_steps_under_workdir_profile(tmp_path):
    config = tiny_config("vit_mini")
    config.total_steps, config.checkpoint_every, config.profile_steps = 3, 3, 1  # traces step 3
    loop.train_and_evaluate(config, tmp_path)
    traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert list((tmp_path / "profile").rglob("*.trace.json.gz"))  # Perfetto / chrome://tracing
