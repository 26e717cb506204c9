"""Evaluation: FLOPs (and, later, accuracy, throughput, sweeps and reports)."""

from sarf_jax.evaluate.flops import count_flops, model_gflops

__all__ = ["count_flops", "model_gflops"]
