"""XLA compiler options for sarf_jax's own jitted steps: 512-bit vectors on a CPU.

XLA's CPU backend prefers 256-bit vectors even where AVX-512 exists. Asking for 512 made the
16-state scans faster on the 2-core AVX-512 development VM (benchmarks/RESULTS.md: `vim_mini`
8-18%, `nn.Mamba`'s forward 10-20%; VMamba unchanged), and on a CPU without AVX-512 it is only a
preference. It changes float32 rounding (summation order), not results beyond that.

The option goes through `jax.jit(..., compiler_options=...)` per compilation, not through
`XLA_FLAGS`: an XLA that does not know it raises a catchable error (probed once here, and then
the option is left out) where an unknown flag in `XLA_FLAGS` aborts the process. Where
`XLA_FLAGS` already sets `--xla_cpu_prefer_vector_width`, that choice stands and nothing is added.
The training step, the evaluation steps and the model, mixer and reduction benchmarks use it; to
get it in your own jit:
`jax.jit(f, compiler_options=sarf_jax.ops.compiler_options())`.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

CPU_OPTIONS = {"xla_cpu_prefer_vector_width": 512}


def compiler_options(backend: str | None = None) -> dict:
    """Options for `jax.jit(..., compiler_options=...)` on `backend` (default: JAX's): the CPU ones
    where this XLA accepts them and XLA_FLAGS does not set them; {} elsewhere."""
    backend = backend or jax.default_backend()
    if backend != "cpu" or any(name in os.environ.get("XLA_FLAGS", "") for name in CPU_OPTIONS):
        return {}
    return dict(_accepted_cpu_options())


@functools.cache
def _accepted_cpu_options() -> tuple:
    try:
        jax.jit(lambda x: x + 1).lower(jnp.zeros(2)).compile(compiler_options=CPU_OPTIONS)
    except jax.errors.JaxRuntimeError:
        return ()
    return tuple(CPU_OPTIONS.items())
