"""The FLOP counter charges what the papers charge: MACs of products and convolutions, 9·B·L·D·N
(+ D skip, + z gating) per selective scan, nothing for elementwise work."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sarf_jax.analysis import count_flops
from sarf_jax.nn import Mamba
from sarf_jax.ops import selective_scan


def spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_matmul_and_convolution_count_one_per_multiply_accumulate():
    assert count_flops(lambda a, b: jnp.tanh(a @ b), spec(2, 5, 7), spec(7, 3)) == 2 * 5 * 7 * 3
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2
    )
    # output 1 x 4 x 4 x 6, each output reads a 3 x 3 window of 8 / 2 input channels
    assert count_flops(conv, spec(1, 8, 8, 8), spec(3, 3, 4, 6)) == 4 * 4 * 6 * 3 * 3 * 4


@pytest.mark.parametrize("impl", ["reference", "chunked", "associative", "pallas_tpu", "pallas_gpu"])
def test_selective_scan_counts_nine_bldn_plus_d_and_z(impl):
    b, length, d, n = 2, 10, 6, 4
    bare = lambda u, delta, A, B, C: selective_scan(u, delta, A, B, C, impl=impl)
    full = lambda u, delta, A, B, C, D, z: selective_scan(u, delta, A, B, C, D, z, impl=impl)
    args = (spec(b, length, d), spec(b, length, d), spec(d, n), spec(b, length, n), spec(b, length, n))
    assert count_flops(bare, *args) == 9 * b * length * d * n
    assert count_flops(full, *args, spec(d), spec(b, length, d)) == 9 * b * length * d * n + 2 * b * length * d


def test_counts_inside_lax_scan_are_multiplied_by_its_length():
    def body(carry, x):
        return carry @ x, None

    assert count_flops(lambda c, xs: jax.lax.scan(body, c, xs)[0], spec(3, 3), spec(5, 3, 3)) == 5 * 27


def test_vim_mixer_layer_matches_its_analytic_count():
    mixer = Mamba(192, bidirectional="v2", rngs=nnx.Rngs(0))  # Vim-Tiny's layer: E 384, R 12, N 16
    L, E = 197, 384
    per_direction = L * E * (12 + 32) + L * 12 * E + L * E * 4 + 9 * L * E * 16 + 2 * L * E
    expected = L * 192 * 2 * E + 2 * per_direction + L * E * 192
    assert count_flops(mixer, spec(1, L, 192)) == expected
