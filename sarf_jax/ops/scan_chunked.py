"""`lax.scan` over chunks of the sequence, the steps of each chunk unrolled, rematerialised.

Only the state at each chunk boundary is kept for the backward pass; everything inside a chunk
is recomputed from the inputs (`jax.checkpoint`), so forward + backward never holds a
(batch, length, channels, state) tensor: its temp memory is a fraction of one such tensor,
against ~12 for the full associative scan (benchmarks/scan.py).

Two choices were measured on CPU (benchmarks/scan.py, README): inside a chunk the steps run one
after the other, unrolled, because an associative scan over the chunk did several times the work
and was ~3x slower; and the state is laid out (state, channels) with channels minor, so that the
readout <h, C> sums whole channel vectors instead of reducing 16-wide rows (~2x faster than the
(channels, state) layout of the reference).

Lengths that are not a multiple of the chunk are padded with steps of delta = 0, which leave the
state unchanged (exp(0 A) = 1, 0 B u = 0).
"""

import jax
import jax.numpy as jnp
from jax import lax

DEFAULT_CHUNK_SIZE = 8


def recurrence(u, delta, A, B, C, *, chunk_size=DEFAULT_CHUNK_SIZE):
    """Same contract as scan_reference.recurrence."""
    batch, length, groups, per_group = u.shape
    chunk = min(chunk_size, length)
    num_chunks = -(-length // chunk)
    padding = num_chunks * chunk - length
    A_state_major = jnp.swapaxes(A, -1, -2)  # (G, N, H)

    def chunks(x):  # (batch, length, ...) -> (num_chunks, chunk, batch, ...)
        x = jnp.pad(x, [(0, 0), (0, padding)] + [(0, 0)] * (x.ndim - 2))
        x = x.reshape(batch, num_chunks, chunk, *x.shape[2:])
        return jnp.moveaxis(x, (1, 2), (0, 1))

    def step(h, inputs):  # h: (batch, G, N, H)
        u_t, delta_t, B_t, C_t = inputs  # (batch, G, H), (batch, G, H), (batch, G, N), (batch, G, N)
        decay = jnp.exp(delta_t[:, :, None, :] * A_state_major)
        h = decay * h + (delta_t * u_t)[:, :, None, :] * B_t[..., None]
        return h, jnp.sum(h * C_t[..., None], axis=-2)

    @jax.checkpoint
    def one_chunk(h, inputs):
        return lax.scan(step, h, inputs, unroll=True)

    h0 = jnp.zeros((batch, groups, A.shape[-1], per_group), jnp.float32)
    last_state, y = lax.scan(one_chunk, h0, tuple(map(chunks, (u, delta, B, C))))
    y = jnp.moveaxis(y.reshape(num_chunks * chunk, batch, groups, per_group), 0, 1)
    return y[:, :length], jnp.swapaxes(last_state, -1, -2)
