"""Operators: the selective scan and its implementations, and SS2D's four-direction scan."""

from sarf_jax.ops.cross_scan import cross_selective_scan
from sarf_jax.ops.selective_scan import IMPLS, resolve_impl, selective_scan

__all__ = ["IMPLS", "cross_selective_scan", "resolve_impl", "selective_scan"]
