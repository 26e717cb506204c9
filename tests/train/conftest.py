"""Training tests: quick XLA compiles and a shared persistent compilation cache for subprocesses."""

import jax
import pytest


@pytest.fixture(autouse=True, scope="package")
def quick_compiles():
    """Tiny models compile 2-3x faster with most XLA optimisations off; every run in these tests,
    in-process or in a subprocess (JAX_DISABLE_MOST_OPTIMIZATIONS=1), uses the same setting, so
    their results stay comparable bit for bit."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory):
    """A persistent XLA cache shared by the subprocesses of one test session."""
    return str(tmp_path_factory.mktemp("jax_cache"))
