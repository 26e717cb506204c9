"""sarf_jax.ops.compiler_options: 512-bit vectors for sarf_jax's own jitted steps on a CPU, only
where this XLA accepts the option and XLA_FLAGS leaves it alone; and the steps compile with it."""

import jax
import jax.numpy as jnp
import numpy as np

from sarf_jax.ops import compiler_options
from sarf_jax.ops.compiler_options import CPU_OPTIONS, _accepted_cpu_options


def test_cpu_gets_512_bit_vectors_and_other_backends_nothing(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert compiler_options("cpu") == {"xla_cpu_prefer_vector_width": 512}  # this jaxlib knows it
    assert compiler_options("gpu") == {} and compiler_options("tpu") == {}


def test_xla_flags_that_set_the_vector_width_win(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256")
    assert compiler_options("cpu") == {}


def test_an_option_this_xla_does_not_know_is_left_out(monkeypatch):
    """The probe compiles with the option; an XLA that rejects it leaves it out instead of failing
    (here: an option name no XLA has, through the same probe)."""
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setitem(CPU_OPTIONS, "xla_cpu_no_such_option", 1)
    _accepted_cpu_options.cache_clear()
    try:
        assert compiler_options("cpu") == {}
    finally:
        monkeypatch.undo()
        _accepted_cpu_options.cache_clear()
    assert compiler_options("cpu") == {"xla_cpu_prefer_vector_width": 512}


def test_a_jit_with_the_options_computes_what_the_default_does():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 300)), jnp.float32)
    f = lambda x: jnp.sum(jnp.exp(-x * x) * x, axis=1)
    np.testing.assert_allclose(jax.jit(f, compiler_options=compiler_options())(x), jax.jit(f)(x), rtol=1e-6)
