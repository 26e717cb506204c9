"""VMamba's four-direction selective scan of a 2-D grid (the scan inside SS2D), merged.

The four directions (the official csm_triton.py `cross_scan_fwd` / `cross_merge_fwd`, scans=0):
k=0 row-major, k=1 column-major, k=2 reversed row-major, k=3 reversed column-major. They are
plain transposes and flips of the grid, so any H, W (odd included) works.

`cross_selective_scan` computes it in one of two ways, chosen from `impl`:
  * unfused (every XLA form, and `pallas_tpu`): the grid is read into a (batch, H*W, 4, d_inner)
    cross-scanned copy (`cross_scan`), the per-direction dt, B, C are reordered the same way
    while they are small (before dt's projection to d_inner channels), one `selective_scan`
    runs over the 4 * d_inner channels with B/C grouped by direction, and `cross_merge` puts
    the four outputs back in grid order and sums them. This is the oracle.
  * fused (`pallas_gpu`, fused_layouts.py): the GPU kernel reads the grid itself through index
    maps (scan_pallas_gpu.py, `grid`): u, delta, B, C stay in grid order, the kernel writes each
    direction's output in grid order, and the merge is a contiguous sum over the four. No
    cross-scanned copy of u or delta and no reordering of y reaches memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange

from sarf_jax.ops.fused_layouts import fused_scan, use_fused_kernel
from sarf_jax.ops.selective_scan import check_shapes, selective_scan

DIRECTIONS = 4  # K


def cross_scan(x: jax.Array) -> jax.Array:
    """(batch, H, W, C) grid -> (batch, H·W, 4, C): the grid read in the four scan orders."""
    rows = rearrange(x, "b h w c -> b (h w) c")
    columns = rearrange(x, "b h w c -> b (w h) c")
    forward = jnp.stack([rows, columns], axis=2)
    return jnp.concatenate([forward, jnp.flip(forward, axis=1)], axis=2)


def cross_scan_per_direction(x: jax.Array) -> jax.Array:
    """(batch, H, W, 4, C) per-position values of each direction -> (batch, H·W, 4, C): direction k's
    slice read in scan order k (what `cross_scan` does to a value every direction shares)."""
    rows = rearrange(x, "b h w k c -> b (h w) k c")
    columns = rearrange(x, "b h w k c -> b (w h) k c")
    return jnp.stack(
        [rows[:, :, 0], columns[:, :, 1], jnp.flip(rows[:, :, 2], axis=1), jnp.flip(columns[:, :, 3], axis=1)], axis=2
    )


def cross_merge(ys: jax.Array, height: int, width: int) -> jax.Array:
    """(batch, H·W, 4, C) outputs in scan order -> (batch, H, W, C), their sum in grid order."""
    y = ys[:, :, :2] + jnp.flip(ys[:, :, 2:], axis=1)
    rows = rearrange(y[:, :, 0], "b (h w) c -> b h w c", h=height, w=width)
    columns = rearrange(y[:, :, 1], "b (w h) c -> b h w c", h=height, w=width)
    return rows + columns


def project_dt(dt: jax.Array, weight: jax.Array) -> jax.Array:
    """delta[..., k, :] = weight[k] @ dt[..., k, :]: (..., K, R), (K, d_inner, R) -> (..., K, d_inner).

    One matmul per direction, stacked, rather than one batched einsum "...kr,kdr->...kd": XLA
    computes that one direction-major and transposes its full-size result, which on the CPU cost
    ~30% of SS2D's forward at VMamba-T's stage 0 (the softplus fused into that transpose).
    """
    return jnp.stack([dt[..., k, :] @ weight[k].T for k in range(weight.shape[0])], axis=-2)


def cross_selective_scan(
    x,
    dt,
    dt_weight,
    A,
    B,
    C,
    D,
    delta_bias,
    *,
    impl: str = "auto",
    chunk_size: int | None = None,
    interpret: bool | None = None,
    fused: bool | None = None,
) -> jax.Array:
    """The four-direction selective scan of a grid with softplus(delta), merged in grid order.

    Args:
      x: (batch, H, W, d_inner) grid, the scan's u (any float dtype; not up-cast here).
      dt: (batch, H, W, 4, R) each direction's low-rank step at each grid position.
      dt_weight: (4, d_inner, R): direction k's delta = softplus(dt_weight[k] @ dt + delta_bias).
      B, C: (batch, H, W, 4, N) each direction's B and C at each grid position.
      A: (4 * d_inner, N); D, delta_bias: (4 * d_inner,); direction k owns slice k.
      impl, chunk_size, interpret: as in `selective_scan`.
      fused: None (default) fuses the cross-scan into the kernel where `impl` is the GPU kernel
        (the only one that reads a grid through index maps); False never does (the unfused path,
        for comparisons); True requires it.

    Returns:
      (batch, H, W, d_inner) float32, the sum of the four directions' outputs.
    """
    _check_arguments(x, dt, dt_weight, A, B, C, D, delta_bias)
    if use_fused_kernel("cross_selective_scan", impl, fused):
        y = _fused(x, dt, dt_weight, A, B, C, D, delta_bias, interpret)
        if y is not None:
            return y
    height, width = x.shape[1:3]
    delta = project_dt(cross_scan_per_direction(dt), dt_weight)
    flat = lambda t: rearrange(t, "b l k d -> b l (k d)")
    ys = selective_scan(
        flat(cross_scan(x)),
        flat(delta),
        A,
        cross_scan_per_direction(B),
        cross_scan_per_direction(C),
        D,
        delta_bias=delta_bias,
        delta_softplus=True,
        impl=impl,
        chunk_size=chunk_size,
        interpret=interpret,
    )
    ys = rearrange(ys.astype(jnp.float32), "b l (k d) -> b l k d", k=DIRECTIONS)
    return cross_merge(ys, height, width)


def _fused(x, dt, dt_weight, A, B, C, D, delta_bias, interpret):
    """The merged scan from the GPU kernel reading the grid itself, or None where it cannot run."""
    batch, height, width, d_inner = x.shape
    grid_order = lambda t: t.reshape(batch, height * width, DIRECTIONS, t.shape[-1])
    u = x.reshape(batch, height * width, d_inner)
    delta = project_dt(grid_order(dt), dt_weight).reshape(batch, height * width, -1)
    B, C = grid_order(B), grid_order(C)
    ys = fused_scan("cross_selective_scan", u, A, delta, B, C, delta_bias, D, interpret, grid=(height, width))
    return None if ys is None else ys.reshape(*x.shape[:3], DIRECTIONS, d_inner).sum(axis=3, dtype=jnp.float32)


def _check_arguments(x, dt, dt_weight, A, B, C, D, delta_bias) -> None:
    """Raise ValueError naming the offending argument, before anything is traced."""
    if getattr(x, "ndim", None) != 4:
        raise ValueError(f"cross_selective_scan: x must have shape (batch, H, W, d_inner), got {jnp.shape(x)}")
    batch, height, width, d_inner = x.shape
    rank, state = jnp.shape(dt)[-1], jnp.shape(A)[-1]
    expected = {
        "dt": (batch, height, width, DIRECTIONS, rank),
        "dt_weight": (DIRECTIONS, d_inner, rank),
        "A": (DIRECTIONS * d_inner, state),
        "B": (batch, height, width, DIRECTIONS, state),
        "C": (batch, height, width, DIRECTIONS, state),
        "D": (DIRECTIONS * d_inner,),
        "delta_bias": (DIRECTIONS * d_inner,),
    }
    given = dict(dt=dt, dt_weight=dt_weight, A=A, B=B, C=C, D=D, delta_bias=delta_bias)
    check_shapes("cross_selective_scan", given, expected, f"x {tuple(x.shape)}")
