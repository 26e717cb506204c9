"""The training loop's periodic actions: small objects that the loop calls after every step.

Each has `after_step(step, state, metrics)`, acting when its trigger (triggers.py) fires, and
`close()`. `step` is the number of steps done. The loop (loop.run_steps) stays a few lines: one
train step, then every action in order: MetricsLogger, Checkpointing, PeriodicEvaluation,
Profiler. Preemption is checked before each step instead, because it ends the loop.
"""

from __future__ import annotations

import jax
import numpy as np
from etils import epath

from sarf_jax.train.checkpoint import Checkpointer, PreemptionWatcher
from sarf_jax.train.metrics import MetricWriter, ProgressBar, Throughput
from sarf_jax.train.triggers import Every, StepRange

AVERAGED = ("loss", "accuracy", "grad_norm")


def log_on_first_process(message: str) -> None:
    """Print `message` once for the whole job (process 0), flushed at once."""
    if jax.process_index() == 0:
        print(message, flush=True)


class MetricsLogger:
    """Checks every step's metrics for finiteness, averages the train metrics since the last log and
    writes them (metrics.jsonl, TensorBoard) when `trigger` fires, and moves the progress bar.

    Reading a step's metrics waits for that step to finish, so they are read one step late: after
    the next step has been dispatched (`after_step`), or when asked (`flush`, before a checkpoint
    is saved or the loop ends).
    """

    def __init__(
        self,
        trigger: Every,
        writer: MetricWriter,
        progress: ProgressBar,
        throughput: Throughput,
        checkpointer: Checkpointer,
    ):
        self.trigger, self.writer, self.progress, self.throughput = trigger, writer, progress, throughput
        self.checkpointer = checkpointer  # named in the error on a non-finite step
        self.unread = None  # (step, metrics) of the last dispatched step, not read yet
        self.since_last_log: list[dict] = []

    def after_step(self, step: int, state, metrics) -> None:
        self.flush()
        self.unread = (step, metrics)

    def flush(self) -> None:
        """Read, check and log the metrics of the last dispatched step, if not done yet."""
        if self.unread is None:
            return
        step, metrics = self.unread
        self.unread = None
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self._raise_if_not_finite(step, values)
        self.since_last_log.append(values)
        self.progress.update(loss=values["loss"])
        if self.trigger(step):
            averaged = {k: float(np.mean([v[k] for v in self.since_last_log])) for k in AVERAGED}
            rate = self.throughput(step)
            self.writer.write(step, "train", {**averaged, "lr": values["lr"], "steps_per_sec": rate})
            self.since_last_log.clear()

    def _raise_if_not_finite(self, step: int, values: dict) -> None:
        if np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"]):
            return
        last = self.checkpointer.latest_step()
        raise FloatingPointError(
            f"non-finite loss {values['loss']} (grad norm {values['grad_norm']}) at step {step}: "
            f"training stopped; the update was not applied and nothing was saved. Last good checkpoint: "
            f"{'none' if last is None else f'step {last}'} in {self.checkpointer.directory}"
        )

    def close(self) -> None:
        self.progress.close()


class Checkpointing:
    """Saves the state and the data iterator (asynchronously) when `trigger` fires; the metrics of
    that step are checked first, so the state of a non-finite step is never saved."""

    def __init__(self, trigger: Every, checkpointer: Checkpointer, train_iterator, metrics_logger: MetricsLogger):
        self.trigger, self.checkpointer, self.train_iterator = trigger, checkpointer, train_iterator
        self.metrics_logger = metrics_logger

    def after_step(self, step: int, state, metrics) -> None:
        if self.trigger(step):
            self.save(step, state)

    def save(self, step: int, state) -> None:
        self.metrics_logger.flush()
        if self.checkpointer.latest_step() != step:
            self.checkpointer.save(step, state, self.train_iterator)

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()


class PeriodicEvaluation:
    """Evaluates the current params when `trigger` fires; `evaluate(params, model_state)` returns
    the metrics written under split "eval"."""

    def __init__(self, trigger: Every, evaluate, writer: MetricWriter):
        self.trigger, self.evaluate, self.writer = trigger, evaluate, writer

    def after_step(self, step: int, state, metrics) -> None:
        if self.trigger(step):
            self.writer.write(step, "eval", self.evaluate(state["params"], state["model_state"]))

    def close(self) -> None:
        pass


class Profiler:
    """Writes a jax.profiler trace of the steps in `steps` to `directory` (TensorBoard's profile
    plugin or Perfetto read it). Only process 0 traces. The trace stops after the last traced
    step has finished on the device, or when the loop ends first."""

    def __init__(self, steps: StepRange, directory: epath.Path):
        self.steps, self.directory = steps, directory
        self.enabled = jax.process_index() == 0
        self.tracing = False

    def after_step(self, step: int, state, metrics) -> None:
        if not self.enabled:
            return
        if self.steps.starts_at(step):
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(str(self.directory))
            self.tracing = True
        elif self.tracing and self.steps.stops_at(step):
            jax.block_until_ready(state)
            self.close()

    def close(self) -> None:
        if self.tracing:
            self.tracing = False
            jax.profiler.stop_trace()


class Preemption:
    """On SIGTERM (or the hosts' agreed preemption step): save a checkpoint at that step and stop."""

    def __init__(self, watcher: PreemptionWatcher, checkpointing: Checkpointing):
        self.watcher, self.checkpointing = watcher, checkpointing

    def should_stop(self, step: int) -> bool:
        return self.watcher.should_stop(step)

    def stop(self, step: int, state) -> dict:
        self.checkpointing.save(step, state)
        self.checkpointing.checkpointer.wait()
        log_on_first_process(
            f"preempted: saved a checkpoint at step {step} in {self.checkpointing.checkpointer.directory}; "
            "run the same command to resume"
        )
        return {"preempted_at_step": step}

    def close(self) -> None:
        self.watcher.close()
