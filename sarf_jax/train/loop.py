"""train_and_evaluate(config, workdir): the training program behind train.py.

Order of events:
1. every check that can fail (config values, mesh vs devices, batch divisibility, datasets,
   model construction) runs before anything is written, so a bad start leaves no workdir;
2. the workdir gets config.json (the resolved config) and model.json (how to rebuild the model,
   the format of sarf_jax.checkpoints), then checkpoints/, metrics.jsonl and tensorboard/;
3. the newest readable checkpoint is restored ("resumed from step N") or training starts
   ("starting from scratch");
4. run_steps: one train step, then the periodic actions of actions.py, each with its trigger
   (triggers.py): MetricsLogger (every step's metrics checked one step late, FloatingPointError on
   a non-finite loss; averages written every log_every steps and at the last), Checkpointing
   (every checkpoint_every steps and at the last, never a non-finite step), PeriodicEvaluation
   (every eval_every steps), Profiler (config.profile_steps steps traced into WORKDIR/profile/);
   before each step, Preemption (SIGTERM: save at that step, return {"preempted_at_step": step});
5. the final params (and EMA params) are evaluated on the eval split (evaluate.sharded, which
   eval.py uses too).
"""

from __future__ import annotations

import contextlib
import functools
import json

import jax
import numpy as np
from etils import epath
from flax import nnx

from sarf_jax import checkpoints, parallel
from sarf_jax import data as data_lib
from sarf_jax import reduction as reduction_lib
from sarf_jax.evaluate import sharded
from sarf_jax.train import config as config_lib
from sarf_jax.train import optimizer as optimizer_lib
from sarf_jax.train.actions import (
    Checkpointing,
    MetricsLogger,
    PeriodicEvaluation,
    Preemption,
    Profiler,
    log_on_first_process,
)
from sarf_jax.train.checkpoint import Checkpointer, PreemptionWatcher
from sarf_jax.train.metrics import MetricWriter, ProgressBar, Throughput
from sarf_jax.train.state import ModelParts, ModelRecipe, init_train_state, load_initial_params
from sarf_jax.train.step import make_train_step
from sarf_jax.train.triggers import Every, profile_range


def evaluate(evaluator: sharded.Evaluator, parts: ModelParts, weights, model_state, source, config) -> dict:
    """Top-1 / top-5 accuracy and mean loss of `weights` (params or EMA) on the whole of `source`."""
    batches = data_lib.eval_iterator(
        source,
        config.data,
        global_batch_size=config.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        channels=np.shape(source[0]["image"])[-1],
    )
    scores = evaluator((weights, parts.rng_state, model_state), batches, reduction_lib.parse_spec(config.reduction))
    return {"accuracy": scores["top1"], "top5": scores["top5"], "loss": scores["loss"]}


def prepare(config, devices=None):
    """All checks and constructions that need no writing: (mesh, train source, eval source, model recipe)."""
    config_lib.validate(config)
    mesh = parallel.make_mesh(config.mesh, devices)
    config_lib.validate_parallelism(
        config, data_parallel=parallel.data_parallel_size(mesh), process_count=jax.process_count()
    )
    train_source = data_lib.make_source(config.data, config.data.train_split)
    eval_source = data_lib.make_source(config.data, config.data.eval_split)
    in_chans = int(np.shape(train_source[0]["image"])[-1])
    recipe = ModelRecipe(
        config.model.name,
        int(train_source.num_classes),
        config.data.image_size,
        in_chans,
        config.model.overrides.to_dict(),
    )
    try:
        model = nnx.eval_shape(lambda: recipe.build(seed=config.seed, dtype=config.dtype))
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.model ({config.model.name!r} with overrides {recipe.overrides}): {error}") from error
    try:
        model.reduction_sites(reduction_lib.parse_spec(config.reduction))
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.reduction={config.reduction!r}: {error}") from error
    if config.init_from and not epath.Path(config.init_from, checkpoints.MODEL_FILE).exists():
        raise ValueError(
            f"config.init_from={config.init_from!r} has no model.json (expected a model "
            "directory from save_pretrained / sarf_jax.convert, or a training workdir)"
        )
    if config.init_from and config.init_from_weights == "ema" and checkpoints.is_model_directory(config.init_from):
        raise ValueError(
            f"config.init_from_weights='ema' needs a training workdir, but config.init_from={config.init_from!r} "
            "is a model directory (one set of weights); use init_from_weights='params'"
        )
    return mesh, train_source, eval_source, recipe


def write_run_files(workdir: epath.Path, config, recipe: ModelRecipe) -> None:
    """config.json (resolved config) and model.json; process 0 only."""
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / checkpoints.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    checkpoints.write_model_info(
        workdir,
        name=recipe.name,
        num_classes=recipe.num_classes,
        img_size=recipe.img_size,
        in_chans=recipe.in_chans,
        overrides=recipe.overrides,
        source={"trained_with": "train.py", "data": config.data.name},
    )


def restore_or_initialize(checkpointer: Checkpointer, state: dict, parts: ModelParts, train_iterator, config) -> dict:
    """The newest readable checkpoint (state and iterator position), else init_from's weights or `state`."""
    restored, restored_step = checkpointer.restore_latest(parts.abstract_state, train_iterator)
    if restored is not None:
        log_on_first_process(f"resumed from step {restored_step}")
        return restored
    if config.init_from:
        state = load_initial_params(
            state, parts, config.init_from, weights=config.init_from_weights, img_size=config.data.image_size
        )
        log_on_first_process(f"starting from the {config.init_from_weights} weights of {config.init_from}")
    else:
        log_on_first_process("starting from scratch")
    return state


def make_train_iterator(train_source, config):
    """This process's share of every global training batch, in an order fixed by config.seed (its
    position is part of each checkpoint)."""
    return data_lib.train_iterator(
        train_source,
        config.data,
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def make_actions(config, workdir, first_step: int, writer, checkpointer, train_iterator, evaluate_weights):
    """(metrics_logger, preemption, [metrics_logger, checkpointing, evaluation, profiler]): the
    actions run after each step, each with its trigger, and Preemption, checked before each step,
    which saves through Checkpointing; the loop flushes metrics_logger before the final evaluation."""
    total = config.total_steps
    metrics_logger = MetricsLogger(
        Every(config.log_every, total),
        writer,
        ProgressBar(total, first_step, enabled=config.progress_bar and jax.process_index() == 0),
        Throughput(first_step),
        checkpointer,
    )
    checkpointing = Checkpointing(Every(config.checkpoint_every, total), checkpointer, train_iterator, metrics_logger)
    preemption = Preemption(PreemptionWatcher(), checkpointing)
    actions = [
        metrics_logger,
        checkpointing,
        PeriodicEvaluation(Every(config.eval_every, total, at_last=False), evaluate_weights, writer),
        Profiler(profile_range(first_step, config.profile_steps), workdir / "profile"),
    ]
    return metrics_logger, preemption, actions


def run_steps(state, step: int, total_steps: int, next_batch, train_step, actions, preemption: Preemption):
    """The training loop: one step, then every periodic action. Returns (state, None) when
    `total_steps` are done, or (state, {"preempted_at_step": step}) after a preemption."""
    while step < total_steps:
        if preemption.should_stop(step):
            return state, preemption.stop(step, state)
        state, metrics = train_step(state, next_batch())
        step += 1
        for action in actions:
            action.after_step(step, state, metrics)
    return state, None


def train_and_evaluate(config, workdir, *, devices=None) -> dict:
    """Train `config` in `workdir` (resuming if it holds checkpoints); return final eval metrics."""
    mesh, train_source, eval_source, recipe = prepare(config, devices)
    workdir = epath.Path(workdir).absolute()  # Orbax wants absolute paths
    write_run_files(workdir, config, recipe)

    tx = optimizer_lib.make_optimizer(config.optimizer, config.total_steps)
    schedule = optimizer_lib.learning_rate_schedule(config.optimizer, config.total_steps)
    batch_sharding = parallel.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        state, parts = init_train_state(recipe, config, tx, mesh)
    train_iterator = make_train_iterator(train_source, config)
    with contextlib.ExitStack() as closing:  # closed in reverse order, also on errors
        writer = closing.enter_context(contextlib.closing(MetricWriter(workdir, enabled=jax.process_index() == 0)))
        checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
        state = restore_or_initialize(checkpointer, state, parts, train_iterator, config)

        stats = dict(mean=train_source.mean, std=train_source.std)
        train_step = make_train_step(
            parts, config, tx, schedule, num_classes=recipe.num_classes, batch_sharding=batch_sharding, **stats
        )
        evaluator = sharded.Evaluator(parts.graphdef, mesh, preprocess=functools.partial(data_lib.normalize, **stats))

        def evaluate_weights(weights, model_state) -> dict:
            return evaluate(evaluator, parts, weights, model_state, eval_source, config)

        first_step = int(jax.device_get(state["step"]))
        total = config.total_steps
        metrics_logger, preemption, actions = make_actions(
            config, workdir, first_step, writer, checkpointer, train_iterator, evaluate_weights
        )
        for action in [preemption, *actions]:
            closing.callback(action.close)

        def next_batch():
            return sharded.global_batch(next(train_iterator), batch_sharding)

        state, preempted = run_steps(state, first_step, total, next_batch, train_step, actions, preemption)
        if preempted is not None:
            return preempted
        metrics_logger.flush()
        metrics_logger.close()
        results = final_evaluation(state, evaluate_weights)
        writer.write(total, "final", results)
        log_on_first_process("final: " + json.dumps({k: round(float(v), 4) for k, v in results.items()}))
        return results


def final_evaluation(state: dict, evaluate_weights) -> dict:
    """eval_* metrics of the params and, when the run keeps an EMA, ema_eval_* of the EMA params."""
    results = {}
    for prefix, weights in (("eval_", "params"), ("ema_eval_", "ema")):
        if weights in state:
            scores = evaluate_weights(state[weights], state["model_state"])
            results.update({prefix + k: v for k, v in scores.items()})
    return results
