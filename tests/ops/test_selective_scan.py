"""selective_scan: every impl against mamba_ssm's selective_scan_ref outputs, a NumPy oracle and
each other; gradients against `reference`; low-precision inputs; odd lengths; bad arguments."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sarf_jax.ops import selective_scan

IMPLS = ("reference", "associative", "chunked", "auto")
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def numpy_oracle(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """selective_scan_ref transliterated to NumPy float64, channels-last: the independent oracle."""
    u, delta, A, B, C = (np.asarray(x, np.float64) for x in (u, delta, A, B, C))
    batch, length, channels = u.shape
    if delta_bias is not None:
        delta = delta + np.asarray(delta_bias, np.float64)
    if delta_softplus:
        delta = np.logaddexp(0.0, delta)
    if B.ndim == 4:  # grouped: channel c reads group c // (channels // groups)
        repeat = channels // B.shape[2]
        B, C = (np.repeat(x, repeat, axis=2) for x in (B, C))  # (batch, length, channels, N)
    else:
        B, C = B[:, :, None, :], C[:, :, None, :]
    h = np.zeros((batch, channels, A.shape[1]))
    y = np.zeros((batch, length, channels))
    for t in range(length):
        h = np.exp(delta[:, t, :, None] * A) * h + delta[:, t, :, None] * B[:, t] * u[:, t, :, None]
        y[:, t] = np.sum(h * C[:, t], axis=-1)
    if D is not None:
        y = y + u * np.asarray(D, np.float64)
    if z is not None:
        z = np.asarray(z, np.float64)
        y = y * z / (1 + np.exp(-z))
    return y, h


def random_args(batch=2, length=13, channels=6, state=4, groups=None, seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    bc_shape = (batch, length, state) if groups is None else (batch, length, groups, state)
    return dict(
        u=normal(batch, length, channels),
        delta=normal(batch, length, channels) * 0.5,
        A=-np.exp(normal(channels, state) * 0.5),
        B=normal(*bc_shape),
        C=normal(*bc_shape),
        D=rng.uniform(0.5, 1.5, channels).astype(np.float32),
        z=normal(batch, length, channels),
        delta_bias=rng.uniform(-1, 0, channels).astype(np.float32),
    )


def channels_last_fixture(arrays):
    """The fixture stores (batch, D, L) and (batch, [G,] N, L); selective_scan takes channels last."""
    last = lambda x: np.moveaxis(x, -1, 1)
    args = {k: last(arrays[k]) for k in ("u", "delta", "z", "B", "C")}
    args.update(A=arrays["A"], D=arrays["D"], delta_bias=arrays["delta_bias"])
    return args


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("fixture", ["selective_scan_bnl", "selective_scan_grouped"])
def test_matches_mamba_ssm_reference_fixture(load_fixture, fixture, impl):
    arrays, _ = load_fixture(fixture)
    args = channels_last_fixture(arrays)
    y, last_state = selective_scan(**args, delta_softplus=True, return_last_state=True, impl=impl, chunk_size=5)
    np.testing.assert_allclose(np.moveaxis(np.asarray(y), 1, -1), arrays["out"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(last_state, arrays["last_state"], atol=1e-5, rtol=0)
    y_no_gate = selective_scan(**{**args, "z": None}, delta_softplus=True, impl=impl, chunk_size=5)
    np.testing.assert_allclose(np.moveaxis(np.asarray(y_no_gate), 1, -1), arrays["out_noz"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("groups", [None, 1, 3])
@pytest.mark.parametrize(
    "options",
    [
        dict(),  # bare recurrence + readout
        dict(D=True, delta_softplus=True),
        dict(z=True, delta_bias=True),
        dict(D=True, z=True, delta_bias=True, delta_softplus=True),
    ],
)
def test_matches_numpy_oracle_for_every_option(impl, groups, options):
    args = random_args(groups=groups)
    kwargs = {k: args[k] for k in ("D", "z", "delta_bias") if options.get(k)}
    softplus = options.get("delta_softplus", False)
    if not softplus:
        args["delta"] = np.abs(args["delta"])  # a raw step size must be >= 0 without softplus
    positional = [args[k] for k in ("u", "delta", "A", "B", "C")]
    y, last_state = selective_scan(
        *positional, **kwargs, delta_softplus=softplus, return_last_state=True, impl=impl, chunk_size=4
    )
    expected_y, expected_state = numpy_oracle(*positional, **kwargs, delta_softplus=softplus)
    np.testing.assert_allclose(y, expected_y, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(last_state, expected_state, atol=1e-5, rtol=1e-5)


@functools.cache
def scan_gradients(impl, grouped):
    """Gradients of a random projection of y and last_state w.r.t. all eight arguments."""
    args = random_args(length=11, groups=2 if grouped else None, seed=1)
    rng = np.random.default_rng(2)
    y_weights = rng.standard_normal(args["u"].shape).astype(np.float32)
    state_weights = rng.standard_normal((2, 6, 4)).astype(np.float32)

    def loss(*values):
        y, last_state = selective_scan(*values, delta_softplus=True, return_last_state=True, impl=impl, chunk_size=3)
        return jnp.sum(y * y_weights) + jnp.sum(last_state * state_weights)

    grads = jax.jit(jax.grad(loss, argnums=tuple(range(8))))(*(args[k] for k in ARG_NAMES))
    return dict(zip(ARG_NAMES, map(np.asarray, grads)))


@pytest.mark.parametrize("impl", ["associative", "chunked"])
@pytest.mark.parametrize("grouped", [False, True])
def test_gradients_match_reference_in_every_argument(impl, grouped):
    expected = scan_gradients("reference", grouped)
    actual = scan_gradients(impl, grouped)
    chex.assert_tree_all_finite(actual)
    chex.assert_trees_all_equal_shapes_and_dtypes(actual, expected)
    chex.assert_trees_all_close(actual, expected, atol=1e-4, rtol=1e-4)
    for name in ARG_NAMES:
        assert np.abs(expected[name]).max() > 0, f"gradient of {name} is identically zero"


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("impl", IMPLS)
def test_low_precision_inputs_scan_in_float32(impl, dtype):
    """Low-precision inputs: the result equals the float32 scan of the same (rounded) inputs,
    rounded once to the input dtype, i.e. within one unit in the last place of that dtype."""
    args = random_args(length=21, seed=3)
    low = {k: jnp.asarray(v, dtype) if k in ("u", "delta", "B", "C", "z") else v for k, v in args.items()}
    y, last_state = selective_scan(**low, delta_softplus=True, return_last_state=True, impl=impl)
    assert y.dtype == dtype and last_state.dtype == jnp.float32
    exact = {k: np.asarray(v, np.float32) for k, v in low.items()}
    expected_y, expected_state = numpy_oracle(**exact, delta_softplus=True)
    eps = float(jnp.finfo(dtype).eps)  # 2^-7 for bfloat16, 2^-10 for float16
    np.testing.assert_allclose(np.asarray(y, np.float32), expected_y, rtol=eps, atol=eps)
    np.testing.assert_allclose(last_state, expected_state, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [1, 7, 197, 1000])
def test_chunked_handles_any_length(length):
    args = random_args(batch=1, length=length, channels=3, state=2, seed=4)
    y, last_state = selective_scan(**args, delta_softplus=True, return_last_state=True, impl="chunked")
    expected_y, expected_state = numpy_oracle(**args, delta_softplus=True)
    np.testing.assert_allclose(y, expected_y, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(last_state, expected_state, atol=1e-5, rtol=1e-4)


class JitAndEagerTest(chex.TestCase):
    """The same call with and without jit (static options as static arguments) matches the oracle."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_numpy_oracle(self):
        args = random_args(seed=5)
        scan = self.variant(
            selective_scan, static_argnames=("delta_softplus", "return_last_state", "impl", "chunk_size")
        )
        y, last_state = scan(**args, delta_softplus=True, return_last_state=True, impl="chunked", chunk_size=4)
        chex.assert_shape(y, args["u"].shape)
        chex.assert_shape(last_state, (2, 6, 4))
        chex.assert_type([y, last_state], [jnp.float32, jnp.float32])
        expected_y, expected_state = numpy_oracle(**args, delta_softplus=True)
        chex.assert_trees_all_close((y, last_state), (expected_y, expected_state), atol=1e-5, rtol=1e-5)


def _with(**changes):
    args = random_args()  # batch 2, length 13, channels 6, state 4
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        (_with(u=np.zeros((2, 13))), {}, r"u must have shape \(batch, length, channels\)"),
        (_with(delta=np.zeros((2, 12, 6), np.float32)), {}, r"delta must have u's shape"),
        (_with(z=np.zeros((2, 13, 5), np.float32)), {}, r"z must have u's shape"),
        (_with(A=np.zeros((5, 4), np.float32)), {}, r"A must have shape \(channels, state\) = \(6, state\)"),
        (_with(B=np.zeros((2, 13, 3), np.float32)), {}, r"B must have shape \(2, 13, 4\)"),
        (_with(B=np.zeros((2, 13), np.float32)), {}, r"B must have shape \(batch, length, state\) or"),
        (
            _with(B=np.zeros((2, 13, 4, 4), np.float32), C=np.zeros((2, 13, 4, 4), np.float32)),
            {},
            r"groups of B \(4\) must divide channels \(6\)",
        ),
        (_with(C=np.zeros((2, 13, 5), np.float32)), {}, r"C must have B's shape"),
        (_with(D=np.zeros((5,), np.float32)), {}, r"D must have shape \(channels,\) = \(6,\)"),
        (_with(delta_bias=np.zeros((6, 1), np.float32)), {}, r"delta_bias must have shape \(channels,\)"),
        (_with(u=np.zeros((2, 13, 6), np.int32)), {}, r"u must have a real floating dtype, got int32"),
        (_with(A=np.zeros((6, 4), np.complex64)), {}, r"complex A is not supported"),
        (
            _with(),
            {"impl": "cuda"},
            r"impl must be one of \('auto', 'reference', 'associative', 'chunked', 'pallas', "
            r"'pallas_tpu', 'pallas_gpu'\)",
        ),
        (_with(), {"chunk_size": 0}, r"chunk_size must be a positive int, got 0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_argument(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        selective_scan(**args, **kwargs)
