"""The training loop's structure (loop.run_steps with the actions of actions.py) on fakes: a
"train step" that adds 1 to an int state, and a writer / checkpointer that record their calls."""

import math

import pytest

from sarf_jax.train.actions import Checkpointing, MetricsLogger, Preemption
from sarf_jax.train.loop import run_steps
from sarf_jax.train.metrics import Throughput
from sarf_jax.train.triggers import Every


class Recorder:
    def __init__(self):
        self.rows, self.saved, self.directory = [], [], "/ckpt"

    def write(self, step, split, metrics):  # MetricWriter
        self.rows.append((step, split, metrics))

    def update(self, **postfix):  # ProgressBar
        pass

    def save(self, step, state, iterator):  # Checkpointer
        assert state == step  # the state of that very step
        self.saved.append(step)

    def latest_step(self):
        return self.saved[-1] if self.saved else None

    def wait(self):
        pass

    def close(self):
        pass


class Watcher:
    def __init__(self, stop_at=None):
        self.stop_at = stop_at

    def should_stop(self, step):
        return step == self.stop_at

    def close(self):
        pass


def run(recorder, total, *, log_every=1, checkpoint_every=100, nan_at=None, stop_at=None):
    logger = MetricsLogger(Every(log_every, total), recorder, recorder, Throughput(0), recorder)
    checkpointing = Checkpointing(Every(checkpoint_every, total), recorder, None, logger)
    preemption = Preemption(Watcher(stop_at), checkpointing)

    def train_step(state, batch):
        loss = math.nan if state + 1 == nan_at else float(state + 1)
        return state + 1, {"loss": loss, "accuracy": 0.5, "grad_norm": 1.0, "lr": 0.1}

    state, preempted = run_steps(0, 0, total, lambda: None, train_step, [logger, checkpointing], preemption)
    logger.flush()
    return state, preempted


def test_train_metrics_are_averaged_since_the_last_log_and_checkpoints_follow_their_trigger():
    recorder = Recorder()
    state, preempted = run(recorder, 5, log_every=2, checkpoint_every=2)
    assert state == 5 and preempted is None
    assert [(step, row["loss"]) for step, _, row in recorder.rows] == [(2, 1.5), (4, 3.5), (5, 5.0)]
    assert recorder.saved == [2, 4, 5]


@pytest.mark.parametrize("checkpoint_every, saved, last_good", [(2, [2], "step 2"), (3, [], "none")])
def test_a_non_finite_step_stops_training_and_is_never_saved(checkpoint_every, saved, last_good):
    recorder = Recorder()
    with pytest.raises(
        FloatingPointError, match=f"non-finite loss nan .* at step 3.*Last good checkpoint: {last_good}"
    ):
        run(recorder, 6, checkpoint_every=checkpoint_every, nan_at=3)
    assert recorder.saved == saved
    assert [step for step, _, _ in recorder.rows] == [1, 2]


def test_preemption_saves_at_that_step_after_logging_it_and_stops():
    recorder = Recorder()
    state, preempted = run(recorder, 6, checkpoint_every=2, stop_at=3)
    assert preempted == {"preempted_at_step": 3} and state == 3
    assert recorder.saved == [2, 3]
    assert [step for step, _, _ in recorder.rows] == [1, 2, 3]
