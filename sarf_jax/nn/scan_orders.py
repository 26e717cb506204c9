"""Scan orders over an (H, W) grid of tokens stored in row-major (raster) order.

An order is an integer array `order` of length L = H * W: scan step t visits the token whose
raster index is `order[t]`. Its inverse gives, for every raster index p, the step that visits
it: `inverse[order[t]] = t`. So `x[:, order]` puts a raster sequence into scan order and
`y[:, inverse]` puts a scan-order sequence back into raster order.

Everything is computed with NumPy from the static grid shape at trace time and cached per
(H, W), so a grid shrunk by token reduction gets its own correct orders with no extra work.
The returned arrays are read-only (they are shared by every caller).

Two families:
- `cross_scan(h, w)`: VMamba's four directions, row-major, column-major and their reverses.
- `zigzag(h, w)`: PlainMamba's four continuous ("snake") scans and, for every step, the id of
  the move that reached it (START, RIGHT, LEFT, UP, DOWN), which indexes `direction_Bs`.
  The orders follow `PlainMamba2D.get_permute_order` (ChenhongyiYang/PlainMamba,
  mmcls/plain_mamba_dev/models/plain_mamba/plain_mamba_layer.py):
    0: rows top to bottom, row i left-to-right when i is even, right-to-left when odd;
    1: the reverse of 0 (starts bottom-left when H is even, bottom-right when H is odd);
    2: columns left to right, column j top-to-bottom when j is even, bottom-to-top when odd;
    3: the reverse of 2 (starts top-right when W is even, bottom-right when W is odd).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

# PlainMamba's direction ids: the move that reached a scan step (rows of `direction_Bs`).
START, RIGHT, LEFT, UP, DOWN = 0, 1, 2, 3, 4
_MOVE_IDS = {(0, 1): RIGHT, (0, -1): LEFT, (-1, 0): UP, (1, 0): DOWN}


@dataclasses.dataclass(frozen=True, eq=False)
class ScanOrders:
    """K scan orders over one grid.

    orders:     (K, L) int32, orders[k, t] = raster index visited at step t of scan k.
    inverses:   (K, L) int32, inverses[k, p] = step of scan k that visits raster index p.
    directions: (K, L) int32 move ids (START, RIGHT, LEFT, UP, DOWN) for scans that move between
                grid neighbours (`zigzag`); None otherwise.
    """

    orders: np.ndarray
    inverses: np.ndarray
    directions: np.ndarray | None = None


def _check_grid(h, w) -> None:
    for name, value in (("h", h), ("w", w)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"scan_orders: grid {name} must be a positive int, got {value!r}")


def _frozen(array) -> np.ndarray:
    array = np.ascontiguousarray(array, dtype=np.int32)
    array.flags.writeable = False
    return array


def inverse(order: np.ndarray) -> np.ndarray:
    """The inverse permutation(s) of `order` along its last axis."""
    order = np.asarray(order)
    result = np.empty_like(order)
    np.put_along_axis(result, order, np.broadcast_to(np.arange(order.shape[-1]), order.shape), axis=-1)
    return result


def move_directions(order: np.ndarray, w: int) -> np.ndarray:
    """Id of the move from step t-1 to step t of a scan over a grid of width `w` (START at t=0).

    Every consecutive pair must be grid neighbours; anything else raises ValueError.
    """
    rows, cols = np.divmod(np.asarray(order), w)
    moves = zip(np.diff(rows).tolist(), np.diff(cols).tolist())
    try:
        return np.array([START] + [_MOVE_IDS[move] for move in moves])
    except KeyError as error:
        raise ValueError(f"scan_orders: order makes a non-neighbour move {error.args[0]}") from None


def _snake_by_rows(h: int, w: int) -> np.ndarray:
    """Raster indices, rows top to bottom, even rows left-to-right, odd rows right-to-left."""
    grid = np.arange(h * w).reshape(h, w)
    grid[1::2] = grid[1::2, ::-1]
    return grid.reshape(-1)


def _snake_by_columns(h: int, w: int) -> np.ndarray:
    """Raster indices, columns left to right, even columns downwards, odd columns upwards."""
    grid = np.arange(h * w).reshape(h, w).T.copy()  # grid[j] = column j, top to bottom
    grid[1::2] = grid[1::2, ::-1]
    return grid.reshape(-1)


@functools.lru_cache(maxsize=None, typed=True)
def cross_scan(h: int, w: int) -> ScanOrders:
    """VMamba's cross-scan: row-major, column-major, reversed row-major, reversed column-major."""
    _check_grid(h, w)
    row_major = np.arange(h * w)
    column_major = row_major.reshape(h, w).T.reshape(-1)
    orders = np.stack([row_major, column_major, row_major[::-1], column_major[::-1]])
    return ScanOrders(_frozen(orders), _frozen(inverse(orders)))


@functools.lru_cache(maxsize=None, typed=True)
def zigzag(h: int, w: int) -> ScanOrders:
    """PlainMamba's four snake scans with their direction ids (see the module docstring)."""
    _check_grid(h, w)
    by_rows, by_columns = _snake_by_rows(h, w), _snake_by_columns(h, w)
    orders = np.stack([by_rows, by_rows[::-1], by_columns, by_columns[::-1]])
    directions = np.stack([move_directions(order, w) for order in orders])
    return ScanOrders(_frozen(orders), _frozen(inverse(orders)), _frozen(directions))
