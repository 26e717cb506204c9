"""The public API: `Spec` (what a model is asked to do), `Reducer` (plans one grid), `reduce_grid`.

Inside a block (STORM's placement, docs/official_code.md#storm-placement):

    y = mixer(norm(x))                                        # full grid
    metric = x if reducer.metric_source == "block_input" else y
    plan = reducer.plan(metric, out_hw)                       # static out_hw from the schedule
    x = plan(x) + drop_path(plan(y))                          # same plan on residual and branch
"""

from __future__ import annotations

import dataclasses

import jax

from sarf_jax.reduction import baselines, sarf, schedules
from sarf_jax.reduction.methods import (
    METRIC_SOURCE,
    TOME_PRUNE_BY_FAMILY,
    as_grid,
    check_method,
    check_target,
)
from sarf_jax.reduction.plans import Plan, identity_plan

MERGES = ("sum", "mean")


def _check_window(window) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window: expected an int >= 1 (tokens for sarf_evit, pairs for sarf_tome), got {window!r}")


def _check_merge(merge) -> None:
    if merge not in MERGES:
        raise ValueError(f"merge: expected one of {', '.join(MERGES)}, got {merge!r}")


@dataclasses.dataclass(frozen=True)
class Reducer:
    """One reduction method with its settings; `plan(metric, out_hw)` decides for one grid.

    window: SARF window, in pairs for sarf_tome and in tokens for sarf_evit (official: 5; STORM's
      PlainMamba uses 20 for sarf_evit). merge: sarf_tome's merge rule, "sum" (official) or "mean".
    tome_prune: the ToMe baseline drops its matched tokens (True) or averages them in (False).
    """

    method: str
    window: int = 5
    merge: str = "sum"
    tome_prune: bool = False

    def __post_init__(self):
        check_method(self.method)
        _check_window(self.window)
        _check_merge(self.merge)
        if not isinstance(self.tome_prune, bool):
            raise ValueError(f"tome_prune: expected True or False, got {self.tome_prune!r}")

    @property
    def metric_source(self) -> str:
        """ "block_input" or "mixer_output": which tensor the block must pass as `metric`."""
        if self.method not in METRIC_SOURCE:
            raise ValueError(f"method {self.method!r} does not plan; it has no metric")
        return METRIC_SOURCE[self.method]

    def plan(self, metric, out_hw, *, key=None) -> Plan:
        """The plan that takes (B, H, W, ·) tensors on `metric`'s grid to (B, *out_hw, ·).

        metric: (B, H, W, C). out_hw: static (H', W'); equal to (H, W) gives the identity, as the
        official code skips the reducer then. key: the `random` method's PRNG key (default
        jax.random.key(0); fold in the site index to vary it across blocks).
        """
        if getattr(metric, "ndim", None) != 4:
            shape = getattr(metric, "shape", None)
            raise ValueError(f"metric: expected a (B, H, W, C) array, got shape {shape}")
        _, height, width, _ = metric.shape
        out_hw = as_grid(out_hw)
        check_target(self.method, (height, width), out_hw)
        if out_hw == (height, width):
            return identity_plan(metric)
        if self.method == "sarf_tome":
            return sarf.sarf_tome_plan(metric, out_hw, window=self.window, merge=self.merge)
        if self.method == "sarf_evit":
            return sarf.sarf_evit_plan(metric, out_hw, window=self.window)
        if self.method == "evit":
            return baselines.evit_plan(metric, out_hw)
        if self.method == "hsa":
            return baselines.hsa_plan(metric, out_hw)
        if self.method == "tome":
            return baselines.tome_plan(metric, out_hw, prune=self.tome_prune)
        assert self.method == "random", self.method
        key = jax.random.key(0) if key is None else key
        return baselines.random_plan(metric, out_hw, key)


def reduce_grid(
    x, *, method: str, out_hw, metric=None, window: int = 5, merge: str = "sum", tome_prune: bool = False, key=None
):
    """Reduce a (B, H, W, C) grid to (B, *out_hw, C) in one call, planning on `metric` (default x).

    The methods' official metrics differ (see `Reducer.metric_source`): pass the mixer output as
    `metric` to reproduce the ToMe and HSA baselines.
    """
    metric = x if metric is None else metric
    if getattr(x, "ndim", None) != 4 or getattr(metric, "ndim", None) != 4 or x.shape[:3] != metric.shape[:3]:
        raise ValueError(
            f"x, metric: expected (B, H, W, C) arrays on the same batch and grid, got "
            f"{getattr(x, 'shape', None)} and {getattr(metric, 'shape', None)}"
        )
    reducer = Reducer(method, window=window, merge=merge, tome_prune=tome_prune)
    return reducer.plan(metric, out_hw, key=key)(x)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A reduction setting for a whole model: `model(images, reduction=spec)`, a static argument.

    method: one of METHODS. schedule: a table name (`hybrid_2p1`, `hybrid_2p1_sb`, `schedual_2`),
      `keep=0.6[,sites=N]`, a VMamba table [[num_prune per block] per stage] or a PlainMamba table
      {layer: target tokens}; stored in a hashable form (see `schedules.parse`). Not needed for
      "none" and "quartermap" (STORM runs QuarterMap in every block).
    window, merge: as `Reducer`. tome_prune: None = the backbone's official setting (VMamba drops,
      PlainMamba merges), else as `Reducer`.
    """

    method: str
    schedule: object = None
    window: int = 5
    merge: str = "sum"
    tome_prune: bool | None = None

    def __post_init__(self):
        check_method(self.method)
        _check_window(self.window)
        _check_merge(self.merge)
        if self.tome_prune is not None and not isinstance(self.tome_prune, bool):
            raise ValueError(f"tome_prune: expected None, True or False, got {self.tome_prune!r}")
        if self.schedule is None:
            if self.method not in ("none", "quartermap"):
                raise ValueError(f"schedule: method {self.method!r} needs a schedule, got None")
        else:
            object.__setattr__(self, "schedule", schedules.parse(self.schedule))

    def reducer(self, family: str) -> Reducer:
        """The block-level reducer for a backbone family ("vmamba", "plainmamba" or "vim")."""
        if family not in TOME_PRUNE_BY_FAMILY:
            raise ValueError(f"family: expected one of {', '.join(TOME_PRUNE_BY_FAMILY)}, got {family!r}")
        prune = TOME_PRUNE_BY_FAMILY[family] if self.tome_prune is None else self.tome_prune
        return Reducer(self.method, window=self.window, merge=self.merge, tome_prune=prune)


def parse_spec(text) -> Spec | None:
    """'none' (or '' / None) -> None; 'METHOD:SCHEDULE[:window=W][:merge=M]' -> Spec (e.g.
    'sarf_tome:keep=0.6'); a Spec is returned as it is. The text form of eval.py and config.reduction."""
    if text is None or isinstance(text, Spec):
        return text
    if not isinstance(text, str):
        raise ValueError(f"reduction {text!r}: expected a Spec or a string like 'sarf_tome:keep=0.6'")
    text = text.strip()
    method, _, rest = text.partition(":")
    if method in ("none", ""):
        if rest:
            raise ValueError(f"reduction {text!r}: 'none' takes no schedule")
        return None
    options = {}
    schedule = None
    for part in rest.split(":") if rest else []:
        key, sep, value = part.partition("=")
        if key in ("window", "merge", "tome_prune") and sep:
            options[key] = {"window": int, "merge": str, "tome_prune": lambda v: v.lower() == "true"}[key](value)
        elif schedule is None:
            schedule = part
        else:
            raise ValueError(f"reduction {text!r}: expected METHOD:SCHEDULE[:window=W][:merge=M]")
    return Spec(method, schedule, **options)


def spec_label(spec) -> str:
    """A stable, readable key for a spec: 'none', 'sarf_tome:keep=0.6', 'tome:hybrid_2p1', ..."""
    if spec is None:
        return "none"
    schedule = spec.schedule
    name = getattr(schedule, "name", None) or (schedule if isinstance(schedule, str) else repr(schedule))
    extras = [f"window={spec.window}"] if spec.window != 5 else []
    extras += [f"merge={spec.merge}"] if spec.merge != "sum" else []
    extras += [f"tome_prune={spec.tome_prune}"] if spec.tome_prune is not None else []
    return ":".join([spec.method] + ([name] if schedule is not None else []) + extras)
