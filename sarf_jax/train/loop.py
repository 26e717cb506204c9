"""train_and_evaluate(config, workdir): the training program behind train.py.

Order of events:
1. every check that can fail (config values, mesh vs devices, batch divisibility, datasets,
   model construction) runs before anything is written, so a bad start leaves no workdir;
2. the workdir gets config.json (the resolved config) and model.json (how to rebuild the model,
   the format of models.pretrained), then checkpoints/, metrics.jsonl and tensorboard/;
3. the newest readable checkpoint is restored ("resumed from step N") or training starts
   ("starting from scratch");
4. the loop saves every checkpoint_every steps and at the last step, saves and stops early on
   SIGTERM (preemption), and stops with FloatingPointError on a non-finite loss without saving;
5. the final params (and EMA params) are evaluated on the eval split (evaluate.sharded, which
   eval.py uses too).
"""

from __future__ import annotations

import functools
import json

import jax
import numpy as np
from etils import epath
from flax import nnx

from sarf_jax import data as data_lib
from sarf_jax import parallel
from sarf_jax import reduction as reduction_lib
from sarf_jax.evaluate import sharded
from sarf_jax.models import pretrained
from sarf_jax.train import config as config_lib
from sarf_jax.train import optimizer as optimizer_lib
from sarf_jax.train.checkpoint import Checkpointer, PreemptionWatcher
from sarf_jax.train.metrics import MetricWriter, ProgressBar, Throughput
from sarf_jax.train.state import ModelSpec, init_train_state, load_initial_params
from sarf_jax.train.step import make_train_step


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def evaluate(evaluator: sharded.Evaluator, setup, weights, model_state, source, config) -> dict:
    """Top-1 / top-5 accuracy and mean loss of `weights` (params or EMA) on the whole of `source`."""
    batches = data_lib.eval_iterator(
        source,
        config.data,
        global_batch_size=config.eval_batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        channels=np.shape(source[0]["image"])[-1],
    )
    scores = evaluator((weights, setup.rng_state, model_state), batches, reduction_lib.parse_spec(config.reduction))
    return {"accuracy": scores["top1"], "top5": scores["top5"], "loss": scores["loss"]}


def prepare(config, devices=None):
    """All checks and constructions that need no writing: (mesh, sources, model spec)."""
    config_lib.validate(config)
    mesh = parallel.make_mesh(config.mesh, devices)
    config_lib.validate_parallelism(
        config, data_parallel=parallel.data_parallel_size(mesh), process_count=jax.process_count()
    )
    train_source = data_lib.make_source(config.data, config.data.train_split)
    eval_source = data_lib.make_source(config.data, config.data.eval_split)
    in_chans = int(np.shape(train_source[0]["image"])[-1])
    spec = ModelSpec(
        config.model.name,
        int(train_source.num_classes),
        config.data.image_size,
        in_chans,
        config.model.overrides.to_dict(),
    )
    try:
        model = nnx.eval_shape(lambda: spec.build(seed=config.seed, dtype=config.dtype))
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.model ({config.model.name!r} with overrides {spec.overrides}): {error}") from error
    try:
        model.reduction_sites(reduction_lib.parse_spec(config.reduction))
    except (TypeError, ValueError) as error:
        raise ValueError(f"config.reduction={config.reduction!r}: {error}") from error
    if config.init_from and not epath.Path(config.init_from, "model.json").exists():
        raise ValueError(
            f"config.init_from={config.init_from!r} has no model.json (expected a model "
            "directory from save_pretrained / sarf_jax.convert, or a training workdir)"
        )
    return mesh, train_source, eval_source, spec


def write_run_files(workdir: epath.Path, config, spec: ModelSpec) -> None:
    """config.json (resolved config) and model.json; process 0 only."""
    if jax.process_index() != 0:
        return
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    pretrained.write_model_info(
        workdir,
        name=spec.name,
        num_classes=spec.num_classes,
        img_size=spec.img_size,
        in_chans=spec.in_chans,
        overrides=spec.overrides,
        source={"trained_with": "train.py", "data": config.data.name},
    )


def train_and_evaluate(config, workdir, *, devices=None) -> dict:
    """Train `config` in `workdir` (resuming if it holds checkpoints); return final eval metrics."""
    mesh, train_source, eval_source, spec = prepare(config, devices)
    workdir = epath.Path(workdir).absolute()  # Orbax wants absolute paths
    write_run_files(workdir, config, spec)

    tx = optimizer_lib.make_optimizer(config.optimizer, config.total_steps)
    schedule = optimizer_lib.learning_rate_schedule(config.optimizer, config.total_steps)
    batch_sharding = parallel.batch_sharding(mesh)
    with jax.set_mesh(mesh):
        state, setup = init_train_state(spec, config, tx, mesh)
    train_iterator = data_lib.train_iterator(
        train_source,
        config.data,
        global_batch_size=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    restored, restored_step = checkpointer.restore_latest(setup.abstract_state, train_iterator)
    if restored is None:
        if config.init_from:
            state = load_initial_params(state, setup, config.init_from)
        _say("starting from scratch")
    else:
        state = restored
        _say(f"resumed from step {restored_step}")

    stats = dict(mean=train_source.mean, std=train_source.std)
    train_step = make_train_step(
        setup, config, tx, schedule, num_classes=spec.num_classes, batch_sharding=batch_sharding, **stats
    )
    evaluator = sharded.Evaluator(setup.graphdef, mesh, preprocess=functools.partial(data_lib.normalize, **stats))
    writer = MetricWriter(workdir, enabled=jax.process_index() == 0)
    step = int(jax.device_get(state["step"]))
    progress = ProgressBar(config.total_steps, step, enabled=config.progress_bar and jax.process_index() == 0)
    preemption = PreemptionWatcher()
    throughput = Throughput(step)
    pending, window = None, []  # metrics of the last dispatched step; train metrics since the last log

    def check(metrics_step: int, metrics) -> None:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not np.isfinite(values["loss"]) or not np.isfinite(values["grad_norm"]):
            last = checkpointer.latest_step()
            raise FloatingPointError(
                f"non-finite loss {values['loss']} (grad norm {values['grad_norm']}) at step {metrics_step}: "
                f"training stopped; the update was not applied and nothing was saved. Last good checkpoint: "
                f"{'none' if last is None else f'step {last}'} in {checkpointer.directory}"
            )
        window.append(values)
        progress.update(loss=values["loss"])
        if metrics_step % config.log_every == 0 or metrics_step == config.total_steps:
            averaged = {k: float(np.mean([w[k] for w in window])) for k in ("loss", "accuracy", "grad_norm")}
            writer.write(
                metrics_step, "train", {**averaged, "lr": values["lr"], "steps_per_sec": throughput(metrics_step)}
            )
            window.clear()

    try:
        while step < config.total_steps:
            if preemption.should_stop(step):
                if pending is not None:
                    check(*pending)
                    pending = None
                if checkpointer.latest_step() != step:
                    checkpointer.save(step, state, train_iterator)
                checkpointer.wait()
                _say(
                    f"preempted: saved a checkpoint at step {step} in {checkpointer.directory}; "
                    "run the same command to resume"
                )
                return {"preempted_at_step": step}
            batch = sharded.global_batch(next(train_iterator), batch_sharding)
            state, metrics = train_step(state, batch)
            if pending is not None:
                check(*pending)
            step += 1
            pending = (step, metrics)
            if step % config.checkpoint_every == 0 or step == config.total_steps:
                check(*pending)  # never save the state of a non-finite step
                pending = None
                checkpointer.save(step, state, train_iterator)
            if config.eval_every and step % config.eval_every == 0 and step < config.total_steps:
                writer.write(
                    step, "eval", evaluate(evaluator, setup, state["params"], state["model_state"], eval_source, config)
                )
        if pending is not None:
            check(*pending)
        progress.close()
        results = {}
        for prefix, weights in (("eval_", "params"), ("ema_eval_", "ema")):
            if weights in state:
                results.update(
                    {
                        prefix + k: v
                        for k, v in evaluate(
                            evaluator, setup, state[weights], state["model_state"], eval_source, config
                        ).items()
                    }
                )
        writer.write(step, "final", results)
        _say("final: " + json.dumps({k: round(float(v), 4) for k, v in results.items()}))
        return results
    finally:
        progress.close()
        preemption.close()
        checkpointer.wait()
        checkpointer.close()
        writer.close()
