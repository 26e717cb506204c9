"""When the periodic actions of the training loop fire: step arithmetic only, nothing compiled."""

import pytest

from sarf_jax.train.triggers import Every, StepRange, profile_range


def fired(trigger, total):
    return [step for step in range(1, total + 1) if trigger(step)]


def test_every_fires_at_multiples_and_at_the_last_step():
    assert fired(Every(3, total_steps=10), 10) == [3, 6, 9, 10]
    assert fired(Every(5, total_steps=10), 10) == [5, 10]
    assert fired(Every(1, total_steps=4), 4) == [1, 2, 3, 4]


def test_every_without_the_last_step_leaves_it_to_the_final_evaluation():
    assert fired(Every(5, total_steps=10, at_last=False), 10) == [5]
    assert fired(Every(3, total_steps=10, at_last=False), 10) == [3, 6, 9]


def test_period_zero_fires_only_at_the_last_step_or_never():
    assert fired(Every(0, total_steps=6), 6) == [6]
    assert fired(Every(0, total_steps=6, at_last=False), 6) == []


def test_a_resumed_run_keeps_the_global_step_numbers():
    assert [s for s in range(5, 11) if Every(4, total_steps=10)(s)] == [8, 10]


@pytest.mark.parametrize("first_step, count, start, stop", [(0, 3, 2, 5), (40, 1, 42, 43)])
def test_profile_range_skips_the_first_two_steps_of_the_run(first_step, count, start, stop):
    steps = profile_range(first_step, count)
    assert [s for s in range(first_step, first_step + 10) if steps.starts_at(s)] == [start]
    assert [s for s in range(first_step, first_step + 10) if steps.stops_at(s)] == [stop]


def test_a_step_range_of_zero_steps_never_starts_or_stops():
    steps = StepRange(2, 0)
    assert not any(steps.starts_at(s) or steps.stops_at(s) for s in range(10))
