"""The oracle: a `lax.scan` over time, one state update per step, all in float32.

It mirrors selective_scan_ref's loop literally; slow to differentiate (it saves every step's
state) but simple enough to trust.
"""

import jax.numpy as jnp
from jax import lax


def recurrence(u, delta, A, B, C):
    """h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t ; y_t = <h_t, C_t>. Shapes: see selective_scan."""
    batch, _, groups, per_group = u.shape
    h0 = jnp.zeros((batch, groups, per_group, A.shape[-1]), jnp.float32)

    def step(h, inputs):
        u_t, delta_t, B_t, C_t = inputs  # (batch, G, H), (batch, G, H), (batch, G, N), (batch, G, N)
        h = jnp.exp(delta_t[..., None] * A) * h + (delta_t * u_t)[..., None] * B_t[:, :, None, :]
        y_t = jnp.sum(h * C_t[:, :, None, :], axis=-1)
        return h, y_t

    time_major = lambda x: jnp.moveaxis(x, 1, 0)
    last_state, y = lax.scan(step, h0, tuple(map(time_major, (u, delta, B, C))))
    return jnp.moveaxis(y, 0, 1), last_state
