"""Argument checks shared by the layers and the models: a ValueError that names the owner, the
argument and the value, raised in the constructor (before anything is traced)."""

from __future__ import annotations


def check_positive_ints(owner: str, **values) -> None:
    """ValueError naming the first argument that is not a positive int (bools are not ints here)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
