"""Orbax checkpoints of the train state and the data iterator, and preemption (SIGTERM) handling.

Layout (named in sarf_jax.checkpoints): WORKDIR/checkpoints/<step>/{state, data}. `state` is the
whole train state (params, optimizer, EMA, step, model state) saved with its sharding, `data` is
the grain iterator state (one small JSON file per host). Saves are asynchronous (the arrays are copied off the devices
before `save` returns, then written in the background) and only the newest `keep` survive.

On start the newest readable checkpoint is restored. Orbax never lists a save that did not finish
(no commit marker) and removes its temporary directory; a finished checkpoint that cannot be read
(truncated or corrupt files) is moved to WORKDIR/unreadable_checkpoints/ with a warning and the
previous one is tried.
"""

from __future__ import annotations

import signal
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from sarf_jax import checkpoints
from sarf_jax.checkpoints import DATA_ITEM, TRAIN_STATE_ITEM


class Checkpointer:
    def __init__(self, workdir, *, keep: int):
        self.workdir = epath.Path(workdir)
        self.directory = self.workdir / checkpoints.TRAINING_CHECKPOINTS
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True
            ),
        )

    def save(self, step: int, state: dict, data_iterator) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                **{
                    TRAIN_STATE_ITEM: ocp.args.StandardSave(state),
                    DATA_ITEM: grain.checkpoint.CheckpointSave(data_iterator),
                }
            ),
            force=True,
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore_latest(self, abstract_state: dict, data_iterator):
        """(state, step) of the newest readable checkpoint (the iterator is restored in place),
        or (None, None) when there is none."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        **{
                            TRAIN_STATE_ITEM: ocp.args.StandardRestore(abstract_state),
                            DATA_ITEM: grain.checkpoint.CheckpointRestore(data_iterator),
                        }
                    ),
                )
            except Exception as error:  # noqa: BLE001 - any read failure means "skip this one"
                aside = self.workdir / checkpoints.UNREADABLE_CHECKPOINTS / f"{step}-{int(time.time())}"
                logging.warning(
                    "checkpoint at step %d in %s is unreadable (%s: %s); moved to %s, trying the previous one",
                    step,
                    self.directory,
                    type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "",
                    aside,
                )
                self._set_aside(step, aside)
                continue
            return getattr(restored, TRAIN_STATE_ITEM), step
        return None, None

    def _set_aside(self, step: int, aside: epath.Path) -> None:
        if jax.process_index() == 0:
            aside.parent.mkdir(parents=True, exist_ok=True)
            (self.directory / str(step)).rename(aside)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


class PreemptionWatcher:
    """Tells the loop when to save and stop because the job is being preempted (SIGTERM).

    One process: a SIGTERM handler sets a flag. Several: JAX's preemption service agrees on one
    step for all hosts (`multihost_utils.reached_preemption_sync_point`).
    """

    def __init__(self):
        self.requested = False
        self.multi_process = jax.process_count() > 1
        self._previous = None
        if not self.multi_process:
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if self.multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
