"""Operators: the selective scan and its implementations."""

from sarf_jax.ops.selective_scan import IMPLS, resolve_impl, selective_scan

__all__ = ["IMPLS", "resolve_impl", "selective_scan"]
