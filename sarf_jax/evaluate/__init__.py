"""Evaluation: accuracy over the mesh (sharded), sweeps (sweep), reports (report); the FLOP
counter lives in sarf_jax.analysis and is re-exported here."""

from sarf_jax.analysis.flops import count_flops, model_gflops, parameter_count

__all__ = ["count_flops", "model_gflops", "parameter_count"]
