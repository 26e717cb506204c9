"""The sequence in chunks of `chunk_size` steps, each chunk's steps unrolled, with a hand-written
backward pass that keeps only the state at each chunk boundary.

Forward: a loop over chunks reads each chunk straight out of the (batch, length, ...) inputs
(dynamic slices along the length) and writes its outputs back in place, so no input or output
is ever transposed to a time-major layout. On the 2-core CPU those transposes (and the softplus
fused into one of them) were ~2/3 of the previous form's time at VMamba-T's stage-0 shape
(benchmarks/RESULTS.md, CPU section).

Backward (`jax.custom_vjp`): a loop over the chunks in reverse recomputes each chunk's states
from its saved boundary state, then runs the adjoint recurrence back through the chunk
    g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}      (g_L = the last state's cotangent)
and writes the chunk's gradients of u, delta, B and C in place. So forward + backward never
holds a (batch, length, channels, state) tensor: saved are the inputs and one state per chunk.
Letting JAX differentiate a loop of dynamic slices instead would add every chunk's slice
cotangent into full-size zero buffers, once per chunk.

Measured on CPU before (benchmarks/scan.py, README): inside a chunk the steps run one after the
other, unrolled, because an associative scan over the chunk did several times the work and was
~3x slower; and the state is laid out (state, channels), channels minor, so the readout <h, C>
sums whole channel vectors instead of reducing state-wide rows (~2x faster than the reference's
layout). A two-level form that runs all chunks at once (chunk index as a batch axis, the
boundary states by a scan over chunks) was 2-3x slower still at VMamba-T's stage 0: its strided
per-step slices of (batch, chunks, ...) arrays cost more than the loop they remove.
Lengths that are not a multiple of the chunk end with one shorter chunk; nothing is padded.
The arithmetic of each step is the reference's, in the same order, in float32.

The output is written over u's buffer: each chunk reads its u from there and overwrites it with
its y, the D skip (y_t += D u_t) added as it is written. So the loop streams three full-size
arrays (u, delta, y) instead of four, and no separate pass makes D·u: XLA runs a loop body on
one core, where the bytes moved set the time (benchmarks/RESULTS.md, ninth session).

With one state per channel (VMamba's SS2D) a chunk's steps are computed in whole-chunk fused
loops: the decays exp(delta_t A) and increments of all its steps at once, then the state step by
step, then the readout of all its steps at once, and the backward pass reuses the decays. XLA's
CPU backend runs each fused loop of a loop body as a task of its own, one core, and at VMamba's
sizes the per-step tasks cost more than their arithmetic: 1.45-2.0x faster forward and 1.1-1.3x
forward + backward at VMamba-T's stage shapes, with chunks of 4 (benchmarks/RESULTS.md). Chunks
of 4 beat chunks of 8, and chunks of 16 lose the gain: XLA recomputes the state chain inside each
step's readout, which costs more the longer the chunk. With two or more states the whole-chunk
arrays are that many times larger and the per-step form is faster (1.8x at 2 states), so those
keep it, with chunks of 8.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

DEFAULT_CHUNK_SIZE = 8  # the per-step form's
WHOLE_CHUNK_SIZE = 4  # the whole-chunk form's
WHOLE_CHUNK_MAX_STATE = 1  # states per channel up to which a chunk is computed whole


def default_chunk_size(state: int) -> int:
    """The chunk length `recurrence` uses when given none, for a state of `state` entries."""
    return WHOLE_CHUNK_SIZE if state <= WHOLE_CHUNK_MAX_STATE else DEFAULT_CHUNK_SIZE


def recurrence(u, delta, A, B, C, *, chunk_size=None, D=None):
    """Same contract as scan_reference.recurrence; with `D` (groups, channels_per_group), y_t is
    <h_t, C_t> + D u_t, the skip added as each chunk is written (module docstring).
    `chunk_size` None: default_chunk_size of A's state."""
    chunk = min(chunk_size or default_chunk_size(A.shape[-1]), u.shape[1])
    y, last_state = _scan(chunk, u.astype(jnp.float32), delta, A, B, C, D)
    return y, jnp.swapaxes(last_state, -1, -2)


def _chunk_decays(delta, A_t):
    """exp(delta_t A) for every step of a chunk, (batch, T, G, N, H), where the state is small
    enough for the whole-chunk form (module docstring); otherwise None: each step computes its own."""
    if A_t.shape[-2] > WHOLE_CHUNK_MAX_STATE:
        return None
    return jnp.exp(delta[:, :, :, None, :] * A_t)


def _chunk_forward(h, u, delta, B, C, A_t, decays=None):
    """Steps of one chunk from state h (batch, G, N, H): (last state, y (batch, T, G, H), states).
    `decays` from _chunk_decays selects the whole-chunk form."""
    states = [h]
    if decays is None:
        ys = []
        for t in range(u.shape[1]):
            decay = jnp.exp(delta[:, t, :, None, :] * A_t)
            h = decay * h + (delta[:, t] * u[:, t])[:, :, None, :] * B[:, t, :, :, None]
            ys.append(jnp.sum(h * C[:, t, :, :, None], axis=-2))
            states.append(h)
        return h, jnp.stack(ys, axis=1), states
    increments = (delta * u)[:, :, :, None, :] * B[..., None]
    for t in range(u.shape[1]):
        h = decays[:, t] * h + increments[:, t]
        states.append(h)
    return h, jnp.sum(jnp.stack(states[1:], axis=1) * C[..., None], axis=-2), states


def _chunk_backward(g, states, u, delta, B, C, dy, A_t, decays=None):
    """Adjoint of one chunk: g (batch, G, N, H) enters as dL/dh_T and leaves as dL/dh_0.
    Returns (g, (du, ddelta, dB, dC) for the chunk's steps, dL/dA summed over the chunk, per batch).
    `decays` from _chunk_decays are reused (a whole-chunk adjoint measured slower than this)."""
    du, ddelta, dB, dC = [], [], [], []
    dA = jnp.zeros_like(g)
    for t in reversed(range(u.shape[1])):
        delta_t, u_t = delta[:, t], u[:, t]  # (batch, G, H)
        B_t, C_t = B[:, t, :, :, None], C[:, t, :, :, None]  # (batch, G, N, 1)
        g = g + C_t * dy[:, t, :, None, :]
        dC.append(jnp.sum(states[t + 1] * dy[:, t, :, None, :], axis=-1))
        decay = jnp.exp(delta_t[:, :, None, :] * A_t) if decays is None else decays[:, t]
        d_exponent = g * states[t] * decay  # dL/d(delta_t A), (batch, G, N, H)
        dA = dA + d_exponent * delta_t[:, :, None, :]
        g_B = jnp.sum(g * B_t, axis=-2)  # (batch, G, H)
        ddelta.append(jnp.sum(d_exponent * A_t, axis=-2) + g_B * u_t)
        du.append(g_B * delta_t)
        dB.append(jnp.sum(g * (delta_t * u_t)[:, :, None, :], axis=-1))
        g = g * decay
    stack = lambda xs: jnp.stack(xs[::-1], axis=1)
    return g, (stack(du), stack(ddelta), stack(dB), stack(dC)), dA


def _chunk_slices(length, chunk):
    """(number of whole chunks, length of the last partial chunk, 0 if none)."""
    return length // chunk, length % chunk


def _forward(chunk, u, delta, A, B, C, D, *, keep_states):
    """(y = readout + D u, last state (batch, G, N, H), boundary states (chunks, batch, G, N, H)
    or None). y is written over u's buffer: each chunk reads its u from there, then overwrites it."""
    batch, length, groups, per_group = u.shape
    whole, rest = _chunk_slices(length, chunk)
    A_t = jnp.swapaxes(A, -1, -2)  # (G, N, H)
    # zeros made from u keep its sharding: under an explicit mesh a split batch stays split
    h0 = jnp.broadcast_to(jnp.zeros_like(u[:, 0, :, None, :]), (batch, groups, A.shape[-1], per_group))
    starts0 = jnp.broadcast_to(h0, (whole + (rest > 0), *h0.shape)) if keep_states else None

    def write(y, h, start, piece, whole_chunk_form=True):
        # the chunk's u leaves y's buffer before anything is written there: XLA would otherwise
        # fuse this read into the in-place update and read steps already overwritten
        u_c, delta_c = lax.optimization_barrier(piece(y)), piece(delta)
        decays = _chunk_decays(delta_c, A_t) if whole_chunk_form else None
        h, y_c, _ = _chunk_forward(h, u_c, delta_c, piece(B), piece(C), A_t, decays)
        if D is not None:
            y_c = y_c + u_c * D
        return h, lax.dynamic_update_slice_in_dim(y, y_c, start, axis=1)

    def one_chunk(c, carry):
        h, y, starts = carry
        piece = lambda x: lax.dynamic_slice_in_dim(x, c * chunk, chunk, axis=1)
        if keep_states:
            starts = lax.dynamic_update_index_in_dim(starts, h, c, axis=0)
        h, y = write(y, h, c * chunk, piece)
        return h, y, starts

    h, y, starts = lax.fori_loop(0, whole, one_chunk, (h0, u, starts0))
    if rest:
        if keep_states:
            starts = starts.at[whole].set(h)
        # the last partial chunk runs step by step (the backward pass's recomputation of it uses
        # the whole-chunk form; both are exact, and changing this one moves make train's rounding)
        h, y = write(y, h, whole * chunk, lambda x: x[:, whole * chunk :], whole_chunk_form=False)
    return y, h, starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(chunk, u, delta, A, B, C, D):
    y, last_state, _ = _forward(chunk, u, delta, A, B, C, D, keep_states=False)
    return y, last_state


def _scan_forward(chunk, u, delta, A, B, C, D):
    y, last_state, starts = _forward(chunk, u, delta, A, B, C, D, keep_states=True)
    return (y, last_state), (u, delta, A, B, C, D, starts)


def _scan_backward(chunk, residuals, cotangents):
    u, delta, A, B, C, D, starts = residuals
    dy, g = cotangents
    whole, rest = _chunk_slices(u.shape[1], chunk)
    A_t = jnp.swapaxes(A, -1, -2)
    grads = tuple(jnp.zeros_like(x, dtype=jnp.float32) for x in (u, delta, B, C))
    dA = jnp.zeros_like(g)

    def one_chunk(start, h0, g, grads, dA, piece):
        u_c, delta_c, B_c, C_c = piece(u), piece(delta), piece(B), piece(C)
        decays = _chunk_decays(delta_c, A_t)
        _, _, states = _chunk_forward(h0, u_c, delta_c, B_c, C_c, A_t, decays)
        g, chunk_grads, chunk_dA = _chunk_backward(g, states, u_c, delta_c, B_c, C_c, piece(dy), A_t, decays)
        grads = tuple(lax.dynamic_update_slice_in_dim(x, d, start, axis=1) for x, d in zip(grads, chunk_grads))
        return g, grads, dA + chunk_dA

    if rest:
        tail = lambda x: x[:, whole * chunk :]
        g, grads, dA = one_chunk(whole * chunk, starts[whole], g, grads, dA, tail)

    def reverse_chunk(i, carry):
        c = whole - 1 - i
        piece = lambda x: lax.dynamic_slice_in_dim(x, c * chunk, chunk, axis=1)
        return one_chunk(c * chunk, starts[c], *carry, piece)

    g, (du, ddelta, dB, dC), dA = lax.fori_loop(0, whole, reverse_chunk, (g, grads, dA))
    dD = None
    if D is not None:
        du, dD = du + dy * D, jnp.sum(dy * u, axis=(0, 1))
    return du, ddelta, jnp.swapaxes(jnp.sum(dA, axis=0), -1, -2), dB, dC, dD


_scan.defvjp(_scan_forward, _scan_backward)
