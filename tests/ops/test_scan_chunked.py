"""`chunked` (loop over chunks on the natural layout, hand-written backward) against `reference`:
forward, the last state and every gradient, over the shapes its bookkeeping can get wrong."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sarf_jax.ops import selective_scan

ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def random_args(batch, length, channels, state, groups, seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    bc_shape = (batch, length, state) if groups is None else (batch, length, groups, state)
    return dict(
        u=normal(batch, length, channels),
        delta=normal(batch, length, channels) * 0.5,
        A=-jnp.exp(normal(channels, state) * 0.5),
        B=normal(*bc_shape),
        C=normal(*bc_shape),
        D=normal(channels),
        z=normal(batch, length, channels),
        delta_bias=normal(channels) * 0.3 - 1.0,
    )


def value_and_grads(impl, args, *, chunk_size=None, delta_softplus=True):
    """(loss, y, last_state, grads of every given argument) for a loss that uses y and the last state."""
    names = [k for k, v in args.items() if v is not None]
    weights = jnp.sin(jnp.arange(np.prod(args["u"].shape), dtype=jnp.float32)).reshape(args["u"].shape)

    def loss(*values):
        y, last = selective_scan(
            **{**args, **dict(zip(names, values))},
            delta_softplus=delta_softplus,
            return_last_state=True,
            impl=impl,
            chunk_size=chunk_size,
        )
        return jnp.sum(y.astype(jnp.float32) * weights) + jnp.sum(jnp.cos(last)), (y, last)

    (value, (y, last)), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(names))), has_aux=True))(
        *(args[k] for k in names)
    )
    return value, y, last, dict(zip(names, grads))


def assert_matches_reference(args, chunk_size, *, rtol=2e-5, **kwargs):
    expected = value_and_grads("reference", args, **kwargs)
    got = value_and_grads("chunked", args, chunk_size=chunk_size, **kwargs)
    for name, want, have in zip(("loss", "y", "last_state"), expected[:3], got[:3]):
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32)))) + 1e-30
        err = float(jnp.max(jnp.abs(want.astype(jnp.float32) - have.astype(jnp.float32))))
        assert err <= rtol * scale, f"{name}: {err} > {rtol} x {scale}"
    assert got[1].dtype == args["u"].dtype
    assert expected[3].keys() == got[3].keys()
    for name in expected[3]:
        want, have = expected[3][name], got[3][name]
        assert have.shape == want.shape and have.dtype == want.dtype, name
        scale = float(jnp.max(jnp.abs(want.astype(jnp.float32)))) + 1e-30
        err = float(jnp.max(jnp.abs(want.astype(jnp.float32) - have.astype(jnp.float32))))
        assert err <= rtol * scale, f"d{name}: {err} > {rtol} x {scale}"


@pytest.mark.parametrize(
    "length, chunk_size, state, groups",
    [
        (1, 8, 1, 4),
        (13, 5, 16, None),
        (16, 8, 1, 4),
        (7, 16, 8, 2),
        (9, 1, 16, None),
        (20, None, 1, 4),
        (13, 4, 8, 2),
        (11, 4, 1, None),
        (10, 3, 2, 2),
    ],
    ids=[
        "L1",
        "partial_chunk_N16",
        "whole_chunks_N1",
        "chunk_longer_than_L",
        "chunk1",
        "default_chunk",
        "grouped_N8",
        "partial_chunk_N1_ungrouped",
        "partial_chunk_N2",
    ],
)
def test_forward_last_state_and_gradients_match_reference(length, chunk_size, state, groups):
    args = random_args(2, length, 8, state, groups, seed=length + state)
    assert_matches_reference(args, chunk_size)


@pytest.mark.parametrize("drop", [("z",), ("z", "D", "delta_bias")])
def test_optional_arguments_absent(drop):
    args = random_args(2, 11, 6, 4, None, seed=3)
    assert_matches_reference({**args, **dict.fromkeys(drop)}, 4)


def test_without_softplus():
    args = random_args(2, 10, 6, 3, None, seed=4)
    args["delta"] = jnp.abs(args["delta"])
    assert_matches_reference({**args, "delta_bias": None}, 3, delta_softplus=False)


def test_bfloat16_inputs_give_bfloat16_output_computed_in_float32():
    """Both impls compute in float32 from the same bf16 inputs: they differ only by float32
    rounding, below one bf16 step of y (2^-8 relative)."""
    args = {k: v.astype(jnp.bfloat16) for k, v in random_args(2, 19, 8, 4, 2, seed=5).items()}
    assert_matches_reference(args, 8, rtol=2**-8)


def test_forward_backward_keeps_only_chunk_boundary_states():
    """XLA temp memory of forward + backward stays well below one (batch, length, channels,
    state) float32 tensor (the reference saves every step's state: many such tensors)."""
    batch, length, channels, state = 2, 512, 16, 16
    args = random_args(batch, length, channels, state, None)
    names = tuple(args)

    def loss(*values):
        return jnp.sum(selective_scan(*values, delta_softplus=True, impl="chunked", chunk_size=8))

    grad = jax.jit(jax.grad(loss, argnums=tuple(range(len(names)))))
    temp = grad.lower(*args.values()).compile().memory_analysis().temp_size_in_bytes
    state_tensor = 4 * batch * length * channels * state
    assert temp < 0.5 * state_tensor, (temp, state_tensor)


EXPLICIT_MESH_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from sarf_jax.ops import selective_scan

    rng = np.random.default_rng(0)
    n = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
    args = dict(u=n(4, 13, 8), delta=n(4, 13, 8), A=-jnp.exp(n(8, 4)), B=n(4, 13, 2, 4), C=n(4, 13, 2, 4),
                D=n(8), z=n(4, 13, 8), delta_bias=n(8))
    run = lambda **a: selective_scan(**a, delta_softplus=True, return_last_state=True, impl="chunked")
    loss = lambda a: sum(jnp.sum(x ** 2) for x in run(**a))
    expected, expected_grads = run(**args), jax.grad(loss)(args)
    mesh = jax.make_mesh((2,), ("data",))  # explicit axes, jax.make_mesh's default
    with jax.set_mesh(mesh):
        sharded = {k: jax.device_put(v, NamedSharding(mesh, P("data"))) if v.shape[0] == 4 else v
                   for k, v in args.items()}
        outputs, grads = jax.jit(run)(**sharded), jax.jit(jax.grad(loss))(sharded)
        assert outputs[0].sharding.spec[0] == "data" and grads["u"].sharding.spec[0] == "data"
    for a, b in zip(jax.tree.leaves((outputs, grads)), jax.tree.leaves((expected, expected_grads))):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    print("OK")
""")


def test_batch_split_over_an_explicit_mesh_runs_per_device():
    """Under `jax.set_mesh` with explicit axes the chunk loop's zero states take the batch's
    sharding (zeros of an unsharded type made the training step fail to trace)."""
    result = subprocess.run([sys.executable, "-c", EXPLICIT_MESH_SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
