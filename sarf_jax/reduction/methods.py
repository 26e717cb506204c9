"""The reduction methods by name: which tensor each plans from, and which targets each can reach.

Checked in Python on static sizes, so a bad budget fails with a ValueError before any tracing.
"""

from __future__ import annotations

import operator

METHODS = ("none", "sarf_tome", "sarf_evit", "evit", "tome", "random", "hsa", "quartermap")

# What the block hands the reducer as `metric` (docs/official_code.md#storm-placement,
# tests/fixtures/README.md#reduction-operators):
# the block input (residual) for SARF, EViT and random; the mixer output for the ToMe baseline
# (STORM's reduction.py passes op(norm(x)) first) and for HSA (ToP-ViM scores the SSM output).
METRIC_SOURCE = {
    "none": "block_input",
    "sarf_tome": "block_input",
    "sarf_evit": "block_input",
    "evit": "block_input",
    "random": "block_input",
    "tome": "mixer_output",
    "hsa": "mixer_output",
}

# tome_prune=None in a Spec means the official setting of the backbone's STORM code: VMamba (and
# LocalMamba) instantiate TokenMerge2Dv4 with if_prune=True, PlainMamba with if_prune=False. Vim is
# not in STORM; R-MeeTo, whose merge STORM wraps, merges by default, and so does ToMe on ViT.
TOME_PRUNE_BY_FAMILY = {"vmamba": True, "plainmamba": False, "vim": False, "vit": False}


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method: unknown {method!r}; valid: {', '.join(METHODS)}")


def as_grid(value, name: str = "out_hw") -> tuple[int, int]:
    """(height, width) as two Python ints >= 1, or a ValueError naming `name`."""
    try:
        height, width = (operator.index(n) for n in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected (height, width), two ints >= 1; got {value!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{name}: expected (height, width), two ints >= 1; got {value!r}")
    return height, width


def check_target(method: str, in_hw, out_hw) -> None:
    """Raise ValueError unless `method` can turn an `in_hw` grid into an `out_hw` grid."""
    check_method(method)
    height, width = as_grid(in_hw, "in_hw")
    out_h, out_w = as_grid(out_hw)
    if method == "quartermap":
        raise ValueError(
            "method 'quartermap' is not a plan: the residual keeps its grid and only the mixer runs "
            "on quartermap_downsample(x); use quartermap_downsample / quartermap_upsample in the block"
        )
    if method == "none":
        if (out_h, out_w) != (height, width):
            raise ValueError(f"out_hw: method 'none' keeps the grid {tuple(in_hw)}, got {tuple(out_hw)}")
        return
    if method in ("sarf_tome", "sarf_evit"):
        for axis, size, out in (("H", height, out_h), ("W", width, out_w)):
            smallest = size - size // 2 if method == "sarf_tome" else 1
            if not smallest <= out <= size:
                why = " (it merges at most one token per adjacent pair)" if method == "sarf_tome" else ""
                raise ValueError(
                    f"out_hw: {method} can reduce {axis}={size} to {smallest} .. {size}{why}; got {axis}'={out}"
                )
        return
    tokens, kept = height * width, out_h * out_w
    smallest = tokens - tokens // 2 if method == "tome" else 1
    if not smallest <= kept <= tokens:
        why = " (bipartite matching removes at most L//2)" if method == "tome" else ""
        raise ValueError(
            f"out_hw: {method} keeps {smallest} .. {tokens} of the {height}×{width} tokens{why}; "
            f"got {out_h}×{out_w} = {kept}"
        )
