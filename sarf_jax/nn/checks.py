"""Argument checks shared by the layers and the models: a ValueError that names the owner, the
argument and the value, raised in the constructor (before anything is traced)."""

from __future__ import annotations


def is_int(value) -> bool:
    """An int that is not a bool (True is not a size)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_ints_at_least(owner: str, minimum: int, **values) -> None:
    """ValueError naming the first argument that is not an int >= minimum."""
    for name, value in values.items():
        if not is_int(value) or value < minimum:
            kind = "a positive int" if minimum == 1 else f"an int >= {minimum}"
            raise ValueError(f"{owner}: {name} must be {kind}, got {value!r}")


def check_positive_ints(owner: str, **values) -> None:
    """ValueError naming the first argument that is not a positive int."""
    check_ints_at_least(owner, 1, **values)


def check_bools(owner: str, **values) -> None:
    """ValueError naming the first argument that is not True or False."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
