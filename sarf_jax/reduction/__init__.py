"""Token reduction on (B, H, W, C) grids: SARF (STORM), the baselines it beats, and schedules.

from sarf_jax import reduction
y = reduction.reduce_grid(x, method="sarf_tome", out_hw=(12, 12))        # one-shot
plan = reduction.Reducer("sarf_tome").plan(x, (12, 12))                  # plan once ...
x, branch = plan(x), plan(branch)                                        # ... apply to both
spec = reduction.Spec("sarf_tome", "hybrid_2p1")                          # a model setting
spec = reduction.parse_spec("sarf_tome:hybrid_2p1")                       # the same, as text
reduction.schedules.trace(spec.schedule, (2, 2, 15, 2), (56, 56))        # grids per block
dense = reduction.PositionMap.identity(x, (H, W)).then(plan).restore(x)  # reduced x on H×W again
"""

from sarf_jax.analysis.describe import describe
from sarf_jax.reduction import baselines, placement, plans, restore, sarf, schedules
from sarf_jax.reduction.baselines import quartermap_downsample, quartermap_upsample
from sarf_jax.reduction.methods import METHODS, METRIC_SOURCE, TOME_PRUNE_BY_FAMILY, check_target
from sarf_jax.reduction.plans import GatherPlan, MergePlan, Plan, ScatterPlan
from sarf_jax.reduction.restore import PositionMap
from sarf_jax.reduction.spec import MERGES, Reducer, Spec, parse_spec, reduce_grid, spec_label

__all__ = [
    "METHODS",
    "MERGES",
    "METRIC_SOURCE",
    "TOME_PRUNE_BY_FAMILY",
    "GatherPlan",
    "MergePlan",
    "Plan",
    "PositionMap",
    "Reducer",
    "ScatterPlan",
    "Spec",
    "baselines",
    "check_target",
    "describe",
    "placement",
    "plans",
    "quartermap_downsample",
    "quartermap_upsample",
    "parse_spec",
    "reduce_grid",
    "restore",
    "sarf",
    "schedules",
    "spec_label",
]
