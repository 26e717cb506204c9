"""Evaluation: FLOPs (and, later, accuracy, throughput, sweeps and reports)."""

from sarf_jax.evaluate.flops import count_flops, model_gflops, parameter_count

__all__ = ["count_flops", "model_gflops", "parameter_count"]
