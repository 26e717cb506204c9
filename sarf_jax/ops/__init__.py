"""Operators: the selective scan and its implementations, the multi-order scans of VMamba and
PlainMamba, and the XLA compiler options sarf_jax's own jitted steps use."""

from sarf_jax.ops.compiler_options import compiler_options
from sarf_jax.ops.cross_scan import cross_selective_scan
from sarf_jax.ops.ordered_scan import ordered_selective_scan
from sarf_jax.ops.selective_scan import IMPLS, resolve_impl, selective_scan

__all__ = [
    "IMPLS",
    "compiler_options",
    "cross_selective_scan",
    "ordered_selective_scan",
    "resolve_impl",
    "selective_scan",
]
