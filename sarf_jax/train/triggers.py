"""When the training loop's periodic actions fire: plain step arithmetic, no JAX.

`step` is always the number of steps done so far (1 after the first update), the number that
metrics.jsonl and the checkpoints carry.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Every:
    """Fires at the multiples of `period` (0: never) and, if `at_last`, at `total_steps`.

    With at_last=False it never fires at `total_steps`, even on a multiple of `period`: periodic
    evaluation leaves the last step to the final evaluation.
    """

    period: int
    total_steps: int
    at_last: bool = True

    def __call__(self, step: int) -> bool:
        if step == self.total_steps:
            return self.at_last
        return self.period > 0 and step % self.period == 0


@dataclasses.dataclass(frozen=True)
class StepRange:
    """The steps [start, start + count): an action starts once `start` steps are done and stops
    once `start + count` are. count=0: never."""

    start: int
    count: int

    def starts_at(self, step: int) -> bool:
        return self.count > 0 and step == self.start

    def stops_at(self, step: int) -> bool:
        return self.count > 0 and step == self.start + self.count


def profile_range(first_step: int, profile_steps: int) -> StepRange:
    """config.profile_steps = N traces N steps of this run after its first two (which compile and
    warm up): tracing starts once first_step + 2 steps are done and stops once N more are."""
    return StepRange(first_step + 2, profile_steps)
