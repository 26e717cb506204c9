"""Measuring traced programs: FLOPs read off the jaxpr, wall-clock timing, and what a reduction
spec does to a model.

It imports no other sarf_jax package: models and specs are arguments (duck-typed through
`model.reduction_sites(spec)`), so `reduction`, `evaluate`, training and the benchmarks can all
use it without an upward import.
"""

from sarf_jax.analysis.describe import describe
from sarf_jax.analysis.flops import count_flops, model_gflops, parameter_count
from sarf_jax.analysis.timing import allocator, machine_info, median_seconds

__all__ = [
    "allocator",
    "count_flops",
    "describe",
    "machine_info",
    "median_seconds",
    "model_gflops",
    "parameter_count",
]
