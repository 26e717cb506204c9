"""Scan orders: permutations with correct inverses, snakes that only step between neighbours,
and the exact orders / direction ids of PlainMamba's get_permute_order on small grids."""

import itertools

import numpy as np
import pytest

from sarf_jax.nn import scan_orders
from sarf_jax.nn.scan_orders import DOWN, LEFT, RIGHT, START, UP

GRIDS = [(1, 1), (1, 5), (5, 1), (2, 2), (2, 3), (3, 2), (4, 4), (7, 9), (9, 7), (14, 14), (13, 6)]


@pytest.mark.parametrize("family", [scan_orders.cross_scan, scan_orders.zigzag])
@pytest.mark.parametrize("h, w", GRIDS)
def test_every_order_is_a_permutation_and_its_inverse_undoes_it(family, h, w):
    result = family(h, w)
    assert result.orders.shape == result.inverses.shape == (4, h * w)
    for order, inverse in zip(result.orders, result.inverses):
        np.testing.assert_array_equal(np.sort(order), np.arange(h * w))
        np.testing.assert_array_equal(order[inverse], np.arange(h * w))  # back to raster order
        np.testing.assert_array_equal(inverse[order], np.arange(h * w))


@pytest.mark.parametrize("h, w", GRIDS)
def test_snakes_step_between_grid_neighbours_and_directions_name_each_step(h, w):
    result = scan_orders.zigzag(h, w)
    steps = {RIGHT: (0, 1), LEFT: (0, -1), UP: (-1, 0), DOWN: (1, 0)}
    for order, directions in zip(result.orders, result.directions):
        rows, cols = np.divmod(order, w)
        assert directions[0] == START
        for t in range(1, h * w):
            assert abs(rows[t] - rows[t - 1]) + abs(cols[t] - cols[t - 1]) == 1
            assert steps[directions[t]] == (rows[t] - rows[t - 1], cols[t] - cols[t - 1])


def test_cross_scan_is_row_major_column_major_and_their_reverses():
    result = scan_orders.cross_scan(2, 3)  # raster: 0 1 2 / 3 4 5
    np.testing.assert_array_equal(
        result.orders, [[0, 1, 2, 3, 4, 5], [0, 3, 1, 4, 2, 5], [5, 4, 3, 2, 1, 0], [5, 2, 4, 1, 3, 0]]
    )
    assert result.directions is None


def test_zigzag_4x4_matches_the_official_orders():
    """The orders get_permute_order returns on 4x4 (measured, docs/official_code.md#plainmamba-scan-orders)."""
    result = scan_orders.zigzag(4, 4)
    np.testing.assert_array_equal(
        result.orders,
        [
            [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12],
            [12, 13, 14, 15, 11, 10, 9, 8, 4, 5, 6, 7, 3, 2, 1, 0],
            [0, 4, 8, 12, 13, 9, 5, 1, 2, 6, 10, 14, 15, 11, 7, 3],
            [3, 7, 11, 15, 14, 10, 6, 2, 1, 5, 9, 13, 12, 8, 4, 0],
        ],
    )


def test_zigzag_odd_height_matches_the_official_rules():
    """3 x 2 grid (raster 0 1 / 2 3 / 4 5). Official rules: scan 1 starts bottom-right when H is
    odd, scan 3 starts top-right when W is even; ids 0 start, 1 right, 2 left, 3 up, 4 down,
    each the move that reached the step."""
    result = scan_orders.zigzag(3, 2)
    np.testing.assert_array_equal(
        result.orders, [[0, 1, 3, 2, 4, 5], [5, 4, 2, 3, 1, 0], [0, 2, 4, 5, 3, 1], [1, 3, 5, 4, 2, 0]]
    )
    np.testing.assert_array_equal(
        result.directions, [[0, 1, 4, 2, 4, 1], [0, 2, 3, 1, 3, 2], [0, 4, 4, 1, 3, 3], [0, 4, 4, 2, 3, 3]]
    )


def official_rule_walk(h, w, scan):
    """An independent step-by-step walk following the rules stated in get_permute_order:
    where each scan starts, which way it first runs, and that it turns at every edge."""
    if scan == 0:
        pos, run, turn = (0, 0), (0, 1), (1, 0)
    elif scan == 1:
        pos, run, turn = ((h - 1, w - 1), (0, -1), (-1, 0)) if h % 2 else ((h - 1, 0), (0, 1), (-1, 0))
    elif scan == 2:
        pos, run, turn = (0, 0), (1, 0), (0, 1)
    else:
        pos, run, turn = ((h - 1, w - 1), (-1, 0), (0, -1)) if w % 2 else ((0, w - 1), (1, 0), (0, -1))
    inside = lambda p: 0 <= p[0] < h and 0 <= p[1] < w
    order, moves = [], []
    while inside(pos):
        order.append(pos[0] * w + pos[1])
        ahead = (pos[0] + run[0], pos[1] + run[1])
        if inside(ahead):
            pos, move = ahead, run
        else:
            pos, move, run = (pos[0] + turn[0], pos[1] + turn[1]), turn, (-run[0], -run[1])
        moves.append({(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}[move])
    return order, [0] + moves[:-1]


@pytest.mark.parametrize("h, w", list(itertools.product(range(1, 7), range(1, 7))) + [(14, 14), (13, 11)])
def test_zigzag_matches_a_step_by_step_walk_of_the_official_rules(h, w):
    result = scan_orders.zigzag(h, w)
    for scan in range(4):
        order, directions = official_rule_walk(h, w, scan)
        np.testing.assert_array_equal(result.orders[scan], order)
        np.testing.assert_array_equal(result.directions[scan], directions)


def test_orders_are_cached_per_grid_and_read_only():
    assert scan_orders.zigzag(5, 7) is scan_orders.zigzag(5, 7)
    assert scan_orders.zigzag(5, 7) is not scan_orders.zigzag(7, 5)
    with pytest.raises(ValueError):
        scan_orders.zigzag(5, 7).orders[0, 0] = 1


@pytest.mark.parametrize("h, w", [(0, 3), (3, -1), (2.0, 3), (True, 3)])
def test_bad_grid_sizes_raise_value_error_naming_the_field(h, w):
    with pytest.raises(ValueError, match="grid (h|w) must be a positive int"):
        scan_orders.zigzag(h, w)
