"""Several selective scans that read u in their own orders and everything else in sequence order,
summed back in sequence order: PlainMamba's zig-zag scans, with the official indexing.

Step t of scan k reads u at row orders[k, t], delta = softplus(dt[t] + delta_bias_k), B[t, k] and
C[t], and its output belongs to row orders[k, t]; the K outputs are summed per row. (The official
PlainMamba permutes only u into scan order; dt, B and C stay indexed by the step.)

`ordered_selective_scan` computes it in one of two ways, chosen from `impl`:
  * unfused (every XLA form, and `pallas_tpu`): u is gathered into a (batch, L, K, d_inner) copy,
    dt is tiled K times, C broadcast to B's K groups, one `selective_scan` runs over K * d_inner
    channels, and its output is gathered back to sequence order and summed. This is the oracle.
  * fused (`pallas_gpu`, fused_layouts.py): the GPU kernel reads u and writes y through the orders table
    (scan_pallas_gpu.py, `orders`), and reads the shared dt and C once per step; no copy of u, dt
    or C and no gather of y reaches memory, and the sum over K is contiguous.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange

from sarf_jax.ops.fused_layouts import fused_scan, use_fused_kernel
from sarf_jax.ops.selective_scan import check_shapes, selective_scan


def ordered_selective_scan(
    x,
    dt,
    A,
    B,
    C,
    D,
    delta_bias,
    orders,
    *,
    impl: str = "auto",
    chunk_size: int | None = None,
    interpret: bool | None = None,
    fused: bool | None = None,
) -> jax.Array:
    """K selective scans with softplus(delta) over u read in `orders`, summed in sequence order.

    Args:
      x: (batch, L, d_inner) u in sequence order.
      dt: (batch, L, d_inner) raw step, shared by the scans (step t of every scan reads dt[:, t]).
      A: (K * d_inner, N); D, delta_bias: (K * d_inner,); scan k owns slice k.
      B: (batch, L, K, N) scan k's B at step t; C: (batch, L, N), shared.
      orders: (K, L) ints, each row a permutation of range(L): step t of scan k reads u at
        orders[k, t] and its output goes there.
      impl, chunk_size, interpret: as in `selective_scan`.
      fused: None (default) fuses the orders into the kernel where `impl` is the GPU kernel; False
        never does (the unfused path, for comparisons); True requires it.

    Returns:
      (batch, L, d_inner) in x's dtype, the sum of the K scans' outputs.
    """
    orders = np.asarray(orders)
    _check_arguments(x, dt, A, B, C, D, delta_bias, orders)
    if use_fused_kernel("ordered_selective_scan", impl, fused):
        table = tuple(tuple(row) for row in orders.tolist())  # hashable: the kernel's static layout
        ys = fused_scan("ordered_selective_scan", x, A, dt, B, C[:, :, None, :], delta_bias, D, interpret, orders=table)
        if ys is not None:
            return ys.reshape(*x.shape[:2], orders.shape[0], x.shape[2]).sum(axis=2)
    scans = orders.shape[0]
    tile = lambda t: jnp.tile(t, scans)  # (..., d_inner) -> (..., K * d_inner), scan-major
    y = selective_scan(
        rearrange(x[:, orders.T], "b l k e -> b l (k e)"),
        tile(dt),
        A,
        B,
        jnp.broadcast_to(C[:, :, None, :], B.shape),
        D,
        delta_bias=delta_bias,
        delta_softplus=True,
        impl=impl,
        chunk_size=chunk_size,
        interpret=interpret,
    )
    y = rearrange(y, "b l (k e) -> b l k e", k=scans)
    inverses = np.argsort(orders, axis=1)  # inverses[k, p]: the step of scan k that visits row p
    return jnp.take_along_axis(y, inverses.T[None, :, :, None], axis=1).sum(axis=2)


def _check_arguments(x, dt, A, B, C, D, delta_bias, orders) -> None:
    """Raise ValueError naming the offending argument, before anything is traced."""
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"ordered_selective_scan: x must have shape (batch, L, d_inner), got {jnp.shape(x)}")
    batch, length, d_inner = x.shape
    if orders.ndim != 2 or orders.shape[1] != length or not (np.sort(orders, axis=1) == np.arange(length)).all():
        raise ValueError(
            f"ordered_selective_scan: orders must be (K, L={length}) rows that are permutations of range(L), "
            f"got shape {orders.shape}"
        )
    scans, state = orders.shape[0], jnp.shape(A)[-1]
    expected = {
        "dt": (batch, length, d_inner),
        "A": (scans * d_inner, state),
        "B": (batch, length, scans, state),
        "C": (batch, length, state),
        "D": (scans * d_inner,),
        "delta_bias": (scans * d_inner,),
    }
    given = dict(dt=dt, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    check_shapes("ordered_selective_scan", given, expected, f"x {tuple(x.shape)} and {scans} orders")
