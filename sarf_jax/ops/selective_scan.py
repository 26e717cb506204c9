"""The public selective scan: argument checks, shared pre/post-processing, and dispatch.

Semantics are those of mamba_ssm's ``selective_scan_ref`` (mamba_ssm/ops/selective_scan_interface.py),
laid out channels-last:

    delta <- softplus(delta + delta_bias)          (each step optional)
    h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t    = <h_t, C_t> + D * u_t
    y_t   *= silu(z_t)                              (when z is given)

The XLA implementations compute only the linear recurrence and the readout <h_t, C_t>; this
module does the rest once, in float32, so they all share exactly the same arithmetic around the
scan. The Pallas kernels fuse everything (delta_bias, softplus, D, z) into the kernel, with the
same float32 arithmetic, so that nothing of size (batch, length, channels) is written twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu

from sarf_jax.ops import scan_associative, scan_chunked, scan_pallas, scan_reference

# Each XLA implementation maps (u, delta, A, B, C) -> (y, last_state) with
#   u, delta: (batch, length, groups, channels_per_group) float32, delta already discretised,
#   A:        (groups, channels_per_group, state) float32,
#   B, C:     (batch, length, groups, state) float32,
#   y:        (batch, length, groups, channels_per_group) float32, y_t = <h_t, C_t>,
#   last_state: (batch, groups, channels_per_group, state) float32.
Recurrence = Callable[..., tuple[jax.Array, jax.Array]]

IMPLEMENTATIONS: dict[str, Recurrence] = {
    "reference": scan_reference.recurrence,
    "associative": scan_associative.recurrence,
    "chunked": scan_chunked.recurrence,
}
PALLAS_IMPLS = ("pallas", *scan_pallas.KERNELS)
IMPLS = ("auto", *IMPLEMENTATIONS, *PALLAS_IMPLS)


def resolve_impl(impl: str, platform: str | None = None) -> str:
    """Name of the implementation `impl` stands for on `platform` (default: JAX's backend).

    `auto` is `pallas_gpu` on GPU: compiled on an H100 it matched `reference` and ran the Vim-S and
    VMamba-T layers 3.5-6.9x faster (forward + backward) than `chunked` (benchmarks/RESULTS.md).
    Elsewhere it is `chunked`: exact, it keeps only chunk-boundary states for the backward pass
    and is the fastest XLA form measured on CPU; the TPU kernel lowers for TPU but has not been
    compiled or timed on one yet. `pallas` is `pallas_gpu` on GPU and `pallas_tpu` elsewhere
    (interpret mode on CPU).
    """
    if impl not in IMPLS:
        raise ValueError(f"selective_scan: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "pallas_gpu" if (platform or jax.default_backend()) == "gpu" else "chunked"
    if impl == "pallas":
        return scan_pallas.kernel_for_platform(platform or jax.default_backend())
    return impl


def selective_scan(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    *,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    impl: str = "auto",
    chunk_size: int | None = None,
    interpret: bool | None = None,
):
    """Mamba's selective scan over (batch, length, channels) inputs.

    Args:
      u, delta: (batch, length, channels) float arrays; `delta` is the raw step size.
      A: (channels, state) real, normally negative.
      B, C: (batch, length, state), or grouped (batch, length, groups, state) where channel c
        reads group c // (channels // groups).
      D: optional (channels,) skip connection.
      z: optional (batch, length, channels) gate: the output is multiplied by silu(z).
      delta_bias: optional (channels,) added to `delta` before the (optional) softplus.
      delta_softplus: apply softplus to delta + delta_bias.
      return_last_state: also return the final state h_L, (batch, channels, state) float32.
      impl: "auto", "reference" (lax.scan over steps, the oracle), "associative" (one
        lax.associative_scan over the whole sequence), "chunked" (a loop over chunks of the
        sequence in its own layout, with a hand-written backward pass that keeps only the
        chunk-boundary states),
        "pallas" (the fused kernel for the platform), "pallas_tpu" or "pallas_gpu" (that
        kernel). A shape a kernel cannot take runs "chunked" instead, with a one-time warning.
      chunk_size: chunk length for "chunked" (steps unrolled per loop iteration; a length that
        is not a multiple ends with one shorter chunk); default 4 with one state per channel,
        8 otherwise (`scan_chunked.default_chunk_size`); ignored by the others.
      interpret: Pallas only: run the kernel in interpret mode. None (default) interprets
        exactly when JAX's default backend is the CPU; False on a CPU host lowers the kernel for
        its platform (for `.lower(lowering_platforms=...)`); for "pallas_tpu" a
        `pltpu.InterpretParams()` selects the TPU interpreter.

    Returns:
      y (batch, length, channels) in u's dtype; with `return_last_state`, (y, last_state).
      Discretisation, the state and its accumulation are always float32.
    """
    u, delta, A, B, C = (jnp.asarray(x) for x in (u, delta, A, B, C))
    D, z, delta_bias = (None if x is None else jnp.asarray(x) for x in (D, z, delta_bias))
    arrays = (u, delta, A, B, C, D, z, delta_bias)
    _check_arguments(*arrays, chunk_size, interpret)
    name = resolve_impl(impl)
    if name in scan_pallas.KERNELS:
        result = scan_pallas.run(
            name, *arrays, delta_softplus=delta_softplus, return_last_state=return_last_state, interpret=interpret
        )
        if result is not None:
            y, last_state = result
            return (y, last_state) if return_last_state else y
        name = "chunked"
    y, last_state = _xla_scan(
        *arrays, delta_softplus=delta_softplus, return_last_state=return_last_state, impl=name, chunk_size=chunk_size
    )
    return (y, last_state) if return_last_state else y


def _xla_scan(u, delta, A, B, C, D, z, delta_bias, *, delta_softplus, return_last_state, impl, chunk_size):
    """(y, last_state or None) from an XLA recurrence, with selective_scan's layouts: the float32
    discretisation and the grouped layouts around selective_scan_core, shared by every XLA form."""
    batch, length, channels = u.shape
    grouped = B.ndim == 4
    groups = B.shape[2] if grouped else 1
    per_group = channels // groups
    state = A.shape[1]

    f32 = lambda x: x.astype(jnp.float32)
    u32 = f32(u)
    step = _discretised_step(delta, delta_bias, delta_softplus)
    as_groups = lambda x: None if x is None else x.reshape(batch, length, groups, per_group)
    y, last_state = selective_scan_core(
        as_groups(u32),
        as_groups(step),
        f32(A).reshape(groups, per_group, state),
        f32(B) if grouped else f32(B)[:, :, None, :],
        f32(C) if grouped else f32(C)[:, :, None, :],
        None if D is None else f32(D).reshape(groups, per_group),
        None if z is None else as_groups(f32(z)),
        impl=impl,
        chunk_size=chunk_size,  # None: scan_chunked.default_chunk_size of the state
    )
    y = y.reshape(batch, length, channels).astype(u.dtype)
    return y, (last_state.reshape(batch, channels, state) if return_last_state else None)


def _discretised_step(delta, delta_bias, delta_softplus: bool):
    """float32 softplus(delta + delta_bias), each step optional."""
    step = delta.astype(jnp.float32)
    if delta_bias is not None:
        step = step + delta_bias.astype(jnp.float32)
    if delta_softplus:
        step = jax.nn.softplus(step)
    return step


@functools.partial(jax.jit, static_argnames=("impl", "chunk_size"))
def selective_scan_core(u, delta, A, B, C, D, z, *, impl, chunk_size):
    """Recurrence, readout, D skip and z gating, all float32, on grouped layouts.

    A named region of its own so that FLOP counters (sarf_jax.analysis.flops) find every scan
    and charge it the papers' 9·B·L·D·N (+ B·L·D for the D skip, + B·L·D for z gating).
    """
    if impl == "chunked":  # it adds the D skip as it writes y, over u's buffer: no pass of its own
        y, last_state = IMPLEMENTATIONS[impl](u, delta, A, B, C, chunk_size=chunk_size, D=D)
    else:
        y, last_state = IMPLEMENTATIONS[impl](u, delta, A, B, C)
        if D is not None:
            y = y + u * D
    if z is not None:
        y = y * jax.nn.silu(z)
    return y, last_state


def _check_arguments(u, delta, A, B, C, D, z, delta_bias, chunk_size, interpret):
    """Raise ValueError naming the offending argument, before anything is traced or compiled."""
    _check_real_floating(dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias))
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"selective_scan: chunk_size must be a positive int, got {chunk_size!r}")
    if not (interpret is None or isinstance(interpret, bool) or isinstance(interpret, pltpu.InterpretParams)):
        raise ValueError(
            f"selective_scan: interpret must be None, True, False or a pltpu.InterpretParams, got {interpret!r}"
        )


def check_shapes(owner: str, given: dict, expected: dict, context: str) -> None:
    """Raise ValueError naming the first of `given` (name -> array) whose shape is not `expected[name]`."""
    for name, shape in expected.items():
        if jnp.shape(given[name]) != shape:
            raise ValueError(f"{owner}: {name} must have shape {shape} for {context}, got {jnp.shape(given[name])}")


def _check_real_floating(arrays: dict) -> None:
    """Every given array (None: not given) has a real floating dtype: the scan has no complex form."""
    for name, x in arrays.items():
        if x is not None and not jnp.issubdtype(x.dtype, jnp.floating):
            kind = "complex A is not supported" if jnp.issubdtype(x.dtype, jnp.complexfloating) else ""
            raise ValueError(
                f"selective_scan: {name} must have a real floating dtype, got {x.dtype}"
                + (f" ({kind})" if kind else "")
            )


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Every shape agrees with u's (batch, length, channels) and A's (channels, state)."""
    if u.ndim != 3:
        raise ValueError(f"selective_scan: u must have shape (batch, length, channels), got shape {u.shape}")
    batch, length, channels = u.shape
    if delta.shape != u.shape:
        raise ValueError(
            f"selective_scan: delta must have u's shape (batch, length, channels) = {u.shape}, got {delta.shape}"
        )
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must have u's shape (batch, length, channels) = {u.shape}, got {z.shape}")
    if A.ndim != 2 or A.shape[0] != channels:
        raise ValueError(f"selective_scan: A must have shape (channels, state) = ({channels}, state), got {A.shape}")
    state = A.shape[1]
    if B.ndim not in (3, 4):
        raise ValueError(
            f"selective_scan: B must have shape (batch, length, state) or (batch, length, groups, state), got {B.shape}"
        )
    if B.shape[:2] != (batch, length) or B.shape[-1] != state:
        expected = f"({batch}, {length}, {state})" if B.ndim == 3 else f"({batch}, {length}, groups, {state})"
        raise ValueError(
            f"selective_scan: B must have shape {expected} to match u {u.shape} and A {A.shape}, got {B.shape}"
        )
    if B.ndim == 4 and (B.shape[2] < 1 or channels % B.shape[2]):
        raise ValueError(f"selective_scan: the number of groups of B ({B.shape[2]}) must divide channels ({channels})")
    if C.shape != B.shape:
        raise ValueError(f"selective_scan: C must have B's shape {B.shape}, got {C.shape}")
    for name, x in (("D", D), ("delta_bias", delta_bias)):
        if x is not None and x.shape != (channels,):
            raise ValueError(f"selective_scan: {name} must have shape (channels,) = ({channels},), got {x.shape}")
