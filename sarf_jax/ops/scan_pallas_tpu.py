"""The selective scan as Pallas TPU (Mosaic) kernels: one forward kernel, one backward kernel.

Everything of the scan happens inside the kernels: delta + delta_bias and its softplus, the
discretisation exp(delta A) and delta B u, the recurrence, the readout <h, C>, the D skip and the
z gate, forward and backward. HBM sees only the inputs, y, the gradients, and one state per
sequence tile; no (batch, length, channels, state) tensor ever exists.

Layout (the TPU rules in docs/architecture.md#pallas-kernels). A vector register holds 8
sublanes x 128 lanes of fp32. Channels go on the lanes. What goes on the sublanes depends on the
state size, so that one step fills whole registers where the shapes allow:

  state >= 8  the state: h is (state, lanes), one lane per channel (a tile of up to
              CHANNEL_TILE lanes). A step's row of u, delta or y is (1, lanes).
  state < 8   `fold` rows of 128 channels, stacked on the sublanes (the way recurrentgemma's
              RG-LRU kernel folds its channels into (8, 128) tiles): a channel tile is
              fold x 128 channels, a step's row is (fold, 128), and h is (state * fold, 128),
              row n * fold + s holding state n of the channels in row s. fold is the largest
              divisor of channels / 128 with state * fold <= 8. VMamba's one-state scan then
              fills fold/8 of each register instead of 1/8 (all of it from 1,024 channels on),
              its exp runs once per register instead of once per 128 channels, and its readout
              is a register-wide store instead of a one-row store.

  grid        (batch, channel tiles, sequence tiles); the sequence axis is last and "arbitrary",
              so the fp32 state h stays in VMEM scratch from one sequence tile to the next; the
              other two axes are "parallel".
  u, delta, z (batch, length, channels) in their own dtype, blocks (seq_tile, lanes); with
              fold > 1 viewed (a free reshape) as (batch, length, channel tiles, fold, 128),
              blocks (seq_tile, fold, 128). Cast to fp32 in VMEM.
  A           (channel tiles, state * fold, lanes), in h's row order; D and delta_bias
              (channel tiles, fold, lanes), in a step row's order.
  B, C        flattened outside to (batch, groups, length * state) so that the block
              (groups, seq_tile * state) is lane-dense. The time loop walks a tile in sub-blocks
              of `sub_steps` steps (sub_steps * state a multiple of 128, or the whole tile); at
              the start of each, one small matmul per folded row with a 0/1 (groups, lanes)
              matrix expands that sub-block to rows (t, n) and one lane per channel, stored with
              a sublane stride of fold, so that step t's rows are h's rows. That handles plain
              and grouped B/C alike, with no relayout inside the time loop, and keeps the
              expanded copies at a sub-block's size instead of a tile's.
  time loop   `lax.fori_loop` over the sub-blocks, and inside each over its steps. Per-step
              output rows (the readout; in the backward pass the two per-step gradient terms)
              that fill one sublane (no fold) are gathered 8 steps at a time and stored as one
              (8, lanes) block; folded rows are whole registers and are stored as they come.

Backward (one kernel, sequence tiles visited in reverse through the index maps): the forward
pass saved only the state at the end of each sequence tile. Each tile recomputes its states from
the previous tile's end state into VMEM, then runs the reverse recurrence
    g_h[t] = exp(delta[t+1] A) g_h[t+1] + g_readout[t] C[t]
with g_h carried in VMEM scratch across tiles, sub-block by sub-block (last first), each
sub-block's B and C expanded again as in the forward pass. dA, dD, d(delta_bias) are accumulated
per batch row in resident output blocks; dB and dC are written per (channel tile, sub-block) as
a sum over the folded rows of (groups, lanes) x (sub_steps * state, lanes)^T matmuls. The batch
and channel-tile partial sums are reduced outside (no atomics on TPU).

Sizes: lanes is 128 (state < 8), a multiple of 128 up to CHANNEL_TILE dividing `channels`
(state >= 8), or all channels when they are not a multiple of 128; a sequence tile is a multiple
of 8 with seq_tile * state a multiple of 128 (or the whole length). The last sequence tile may
run past `length`: those steps get delta = 0 and B = C = 0, which leaves the state unchanged
(exp(0 A) = 1, 0 B u = 0), and their rows are never written back. `plan_tiling` returns None for
shapes whose tiles would not fit the VMEM budget; the dispatcher then falls back to `chunked`.

VMEM: when tracing for a known TPU (a TPU backend, or an abstract TPU mesh in scope),
`vmem_limits` raises the kernels' scoped VMEM limit to 3/4 of the chip's VMEM and plans tiles
for 4/5 of that (v5e/v6e: 96 MiB limit; v5p: 48 MiB; v4: 12 MiB); on a v5e a Vim-S layer then
runs as one 197-step tile, where the default budget plans two of 104. Elsewhere (interpret
mode, lowering on a CPU host) the compiler's default limit stands and tiles are planned for
`VMEM_BUDGET_BYTES`.

Nothing here is timed or tuned on hardware: no TPU was reachable. The folded layout was checked
in interpret mode and by the Mosaic lowering on a CPU host only (tests/ops/test_scan_pallas.py).
Tile sizes follow axlearn's v5p defaults in spirit (apple/axlearn axlearn/common/ssm.py;
docs/architecture.md#pallas-kernels).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

F32 = jnp.float32
HIGHEST = lax.Precision.HIGHEST

SUBLANES = 8  # fp32 rows of a vector register
CHANNEL_TILE = 256  # target lanes per tile when state >= 8 (a multiple of 128)
MAX_SEQ_TILE = 1024
VMEM_BUDGET_BYTES = 10 * 2**20  # under the "16MB+" of VMEM Pallas' TPU docs promise
TILE_OVERHEAD_STEPS = 16  # a grid step costs about as much as this many scan steps (estimate)


@dataclasses.dataclass(frozen=True)
class Tiling:
    seq_tile: int
    num_seq_tiles: int
    lanes: int  # channels per folded row
    fold: int  # rows of `lanes` channels stacked on the sublanes
    num_channel_tiles: int
    sub_steps: int  # steps whose B and C are expanded at once; divides seq_tile

    @property
    def channel_tile(self):
        return self.fold * self.lanes

    @property
    def num_sub_blocks(self):
        return self.seq_tile // self.sub_steps


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything the kernels are specialised on (hashable: a custom_vjp non-diff argument)."""

    batch: int
    length: int
    channels: int
    state: int
    groups: int
    tiling: Tiling
    delta_softplus: bool
    has_z: bool
    return_last_state: bool
    interpret: object  # False, True, or a pltpu.InterpretParams

    @property
    def per_group(self):
        return self.channels // self.groups

    @property
    def state_rows(self):
        """Rows of h: state n of folded row s is row n * fold + s."""
        return self.state * self.tiling.fold


def vmem_limits() -> tuple[int | None, int]:
    """(the kernels' scoped VMEM limit, or None for the compiler's default; the bytes tiles are
    planned for). Read from the TPU being traced for, if one is known."""
    try:
        capacity = pltpu.get_tpu_info().vmem_capacity_bytes
    except ValueError:  # not tracing for a known TPU (CPU interpret mode, cross-lowering)
        return None, VMEM_BUDGET_BYTES
    limit = capacity * 3 // 4
    return limit, limit * 4 // 5  # headroom for the compiler's own scratch and this estimate


def _alignment(state):
    """Steps per aligned block: a multiple of 8 whose B/C columns (steps * state) fill 128 lanes."""
    return math.lcm(8, 128 // math.gcd(state, 128))


def _sub_steps(seq_tile, state):
    align = _alignment(state)
    return align if seq_tile % align == 0 else seq_tile  # a whole-length tile: one sub-block


def _round_up(n, multiple):
    return -(-n // multiple) * multiple


def _layouts(channels, state):
    """The (lanes, fold) a channel tile can have; see the module docstring."""
    if channels % 128:
        return [(channels, 1)]  # a block equal to the full dimension is always legal
    widest = max(d for d in range(128, min(CHANNEL_TILE, channels) + 1, 128) if channels % d == 0)
    folds = [f for f in range(2, SUBLANES // state + 1) if (channels // 128) % f == 0]
    return [(widest, 1)] + [(128, f) for f in folds]


def _vmem_bytes(seq_tile, lanes, fold, state, groups):
    """Upper estimate of the backward kernel's VMEM (the larger of the two), inputs in fp32,
    with blocks padded to whole (8, 128) tiles."""
    lane_bytes = _round_up(lanes, 128) * 4
    tile = seq_tile * (_round_up(fold, SUBLANES) if fold > 1 else 1) * lane_bytes  # a sequence block
    step_states = state * fold * lane_bytes
    h = _round_up(state * fold, SUBLANES) * lane_bytes
    flat_bc = _round_up(groups, SUBLANES) * _round_up(seq_tile * state, 128) * 4
    expanded_bc = 2 * _sub_steps(seq_tile, state) * step_states
    scratch = seq_tile * step_states + expanded_bc + 6 * tile + h  # states, B/C, per-step rows, g_h
    buffers = 2 * (7 * tile + 4 * flat_bc + 3 * h)  # double-buffered blocks
    return scratch + buffers


def plan_tiling(length: int, channels: int, state: int, groups: int) -> Tiling | None:
    """Tile sizes for these shapes, or None when no legal tiling fits the VMEM budget.

    Each grid step's time loop is a chain of dependent steps whose length does not depend on how
    many channels it covers (one register row per state and 128 lanes), so the plan minimises
    (channel tiles) x (sequence tiles) x (tile steps + a grid step's overhead): the widest fold
    whose tiles fit, then the tile length.
    """
    budget = vmem_limits()[1]
    align = _alignment(state)  # seq_tile % 8 == 0, seq_tile * state % 128 == 0
    plans = []
    for lanes, fold in _layouts(channels, state):
        fits = lambda tile: _vmem_bytes(tile, lanes, fold, state, groups) <= budget
        if length <= MAX_SEQ_TILE and fits(length):
            tiles = [length]
        else:
            tiles = [t for t in range(align, min(MAX_SEQ_TILE, length) + 1, align) if fits(t)]
        plans += [
            Tiling(tile, -(-length // tile), lanes, fold, channels // (lanes * fold), _sub_steps(tile, state))
            for tile in tiles
        ]
    if not plans:
        return None
    cost = lambda p: p.num_channel_tiles * p.num_seq_tiles * (p.seq_tile + TILE_OVERHEAD_STEPS)
    return min(plans, key=lambda p: (cost(p), -p.fold, -p.seq_tile))


# ------------------------------------------------------------------------------------------------
# Kernels


def _row(ref, t):
    """Step t's row of a tile-shaped ref: (fold, lanes), or (1, lanes) when fold is 1."""
    return ref[t] if len(ref.shape) == 3 else ref[pl.ds(t, 1), :]


def _set_row(ref, t, value):
    if len(ref.shape) == 3:
        ref[t] = value
    else:
        ref[pl.ds(t, 1), :] = value


def _spread(static: Static, row):
    """A step's row repeated for every state, in h's row order (broadcasting does it unless
    several states and several folded rows share the sublanes)."""
    if static.state == 1 or static.tiling.fold == 1:
        return row
    return jnp.concatenate([row] * static.state, axis=0)


def _sum_states(static: Static, x):
    """(state * fold, lanes) in h's row order -> a step's row: the sum over each channel's states."""
    fold = static.tiling.fold
    if static.state == 1:
        return x
    if fold == 1:
        return jnp.sum(x, axis=0, keepdims=True)
    return functools.reduce(operator.add, [x[n * fold : (n + 1) * fold] for n in range(static.state)])


def _sum_steps(x):
    """The sum over a tile's steps: a step's row."""
    return jnp.sum(x, axis=0, keepdims=x.ndim == 2)


def _state_rows(static: Static, t):
    """Step t's rows of a buffer holding one h per step."""
    rows = static.state_rows
    return pl.ds(pl.multiple_of(t * rows, rows), rows)


def _folded_rows(static: Static, start, s):
    """The rows of folded row s, steps start .. start + sub_steps, in a buffer holding one h per
    step: one row per (step, state), sub_steps * state rows in all."""
    tiling = static.tiling
    first = start * static.state_rows
    if tiling.num_sub_blocks > 1:
        first = pl.multiple_of(first, 128)  # sub_steps * state is a multiple of 128
    width = tiling.sub_steps * static.state
    return pl.ds(first + s, width, stride=tiling.fold) if tiling.fold > 1 else pl.ds(first, width)


def _group_matrices(static: Static, channel_tile_index):
    """One (groups, lanes) float 0/1 matrix per folded row: entry [g, l] says the channel on lane l
    of that row reads group g."""
    tiling = static.tiling
    shape = (static.groups, tiling.lanes)
    lane = lax.broadcasted_iota(jnp.int32, shape, 1)
    first = lax.broadcasted_iota(jnp.int32, shape, 0) * static.per_group
    matrices = []
    for s in range(tiling.fold):
        channel = lane + (channel_tile_index * tiling.fold + s) * tiling.lanes
        matrices.append(((channel >= first) & (channel < first + static.per_group)).astype(F32))
    return matrices


def _discretise(static: Static, seq_tile_index, u_ref, delta_ref, bias_ref, step_ref, drive_ref):
    """Discretise one tile into scratch; returns the tile-shaped mask of real steps.

    step = softplus(delta + delta_bias) (or without softplus), drive = step * u, both zero on the
    steps past `length`.
    """
    steps_left = static.length - seq_tile_index * static.tiling.seq_tile
    valid = lax.broadcasted_iota(jnp.int32, step_ref.shape, 0) < steps_left
    step = delta_ref[...].astype(F32) + bias_ref[...]
    if static.delta_softplus:
        step = jax.nn.softplus(step)
    step = jnp.where(valid, step, 0.0)
    step_ref[...] = step
    drive_ref[...] = jnp.where(valid, step * u_ref[...].astype(F32), 0.0)
    return valid


def _bc_columns(static: Static, start):
    """The flat B/C columns (rows t * state + n) of the sub-block starting at tile step `start`."""
    if static.tiling.num_sub_blocks == 1:
        return slice(None)
    width = static.tiling.sub_steps * static.state  # a multiple of 128
    return pl.ds(pl.multiple_of(start * static.state, 128), width)


def _expand_bc(static: Static, seq_tile_index, groups, start, B_ref, C_ref, B_lanes_ref, C_lanes_ref):
    """B and C of the sub-block starting at tile step `start`, one h-shaped block of rows per step
    and one lane per channel (zero past `length`), into B_lanes_ref and C_lanes_ref."""
    width = static.tiling.sub_steps * static.state
    steps_left = static.length - seq_tile_index * static.tiling.seq_tile - start
    column = lax.broadcasted_iota(jnp.int32, (static.groups, width), 1)
    columns = _bc_columns(static, start)
    for flat_ref, lanes_ref in ((B_ref, B_lanes_ref), (C_ref, C_lanes_ref)):
        flat = jnp.where(column < steps_left * static.state, flat_ref[:, columns].astype(F32), 0.0)
        for s, group_matrix in enumerate(groups):
            lanes_ref[_folded_rows(static, 0, s), :] = lax.dot_general(
                flat, group_matrix, (((0,), (0,)), ((), ())), precision=HIGHEST, preferred_element_type=F32
            )


def _advance(static: Static, h, A, t, i, step_ref, drive_ref, B_lanes_ref):
    """One step of the recurrence at tile step t (sub-block step i): exp(step A) h + step u B."""
    decay = jnp.exp(_spread(static, _row(step_ref, t)) * A)
    return decay * h + _spread(static, _row(drive_ref, t)) * B_lanes_ref[_state_rows(static, i), :]


def _readout(static: Static, h, i, C_lanes_ref):
    """<h, C> at sub-block step i: a step's row."""
    return _sum_states(static, h * C_lanes_ref[_state_rows(static, i), :])


def _unroll(static: Static):
    """Steps per loop iteration on hardware; 1 in interpret mode, where unrolling only makes the
    CPU compile several times slower (same arithmetic either way)."""
    return 1 if static.interpret is not False else min(8, static.tiling.sub_steps)


def _run_steps(static: Static, count, step, carry, row_refs, first, reverse=False):
    """Runs `carry, rows = step(i, carry)` for sub-block steps i = 0 .. count - 1 (last first when
    `reverse`) and stores rows[j] as tile step `first + i` of row_refs[j].

    A folded row is a whole register and is stored as it comes. An unfolded row is one sublane,
    so the rows of 8 consecutive steps are gathered into one (8, lanes) block and stored at once
    (sub-blocks start at multiples of 8, so the blocks are aligned); a sub-block's last
    count % 8 steps store single rows.
    """

    def one_at_a_time(begin, steps, carry):
        def body(m, carry):
            i = begin + (steps - 1 - m if reverse else m)
            carry, rows = step(i, carry)
            for ref, row in zip(row_refs, rows):
                _set_row(ref, first + i, row)
            return carry

        return lax.fori_loop(0, steps, body, carry, unroll=min(_unroll(static), steps)) if steps else carry

    if static.tiling.fold > 1 or not row_refs:
        return one_at_a_time(0, count, carry)
    blocks, tail = divmod(count, SUBLANES)

    def block(k, carry):
        begin = (blocks - 1 - k if reverse else k) * SUBLANES
        rows = [None] * SUBLANES
        for j in reversed(range(SUBLANES)) if reverse else range(SUBLANES):
            carry, rows[j] = step(begin + j, carry)
        at = pl.ds(pl.multiple_of(first + begin, SUBLANES), SUBLANES)
        for n, ref in enumerate(row_refs):
            ref[at, :] = jnp.concatenate([r[n] for r in rows], axis=0)
        return carry

    if reverse:
        carry = one_at_a_time(blocks * SUBLANES, tail, carry)
    carry = lax.fori_loop(0, blocks, block, carry)
    return carry if reverse else one_at_a_time(blocks * SUBLANES, tail, carry)


def _forward_kernel(static: Static, save_tile_states: bool, *refs):
    refs = list(refs)
    take = lambda present=True: refs.pop(0) if present else None
    u_ref, delta_ref, z_ref = take(), take(), take(static.has_z)
    B_ref, C_ref, A_ref, D_ref, bias_ref = (take() for _ in range(5))
    y_ref = take()
    state_out_ref = take(save_tile_states or static.return_last_state)
    h_ref, step_ref, drive_ref, B_lanes_ref, C_lanes_ref, readout_ref = refs

    channel_tile_index, seq_tile_index = pl.program_id(1), pl.program_id(2)

    @pl.when(seq_tile_index == 0)
    def _():
        h_ref[...] = jnp.zeros_like(h_ref)

    _discretise(static, seq_tile_index, u_ref, delta_ref, bias_ref, step_ref, drive_ref)
    groups = _group_matrices(static, channel_tile_index)
    A = A_ref[...]
    sub_steps = static.tiling.sub_steps

    def sub_block(j, h):
        start = j * sub_steps
        _expand_bc(static, seq_tile_index, groups, start, B_ref, C_ref, B_lanes_ref, C_lanes_ref)

        def scan_step(i, h):
            h = _advance(static, h, A, start + i, i, step_ref, drive_ref, B_lanes_ref)
            return h, (_readout(static, h, i, C_lanes_ref),)

        return _run_steps(static, sub_steps, scan_step, h, (readout_ref,), start)

    h = lax.fori_loop(0, static.tiling.num_sub_blocks, sub_block, h_ref[...])
    h_ref[...] = h

    y = readout_ref[...] + D_ref[...] * u_ref[...].astype(F32)
    if static.has_z:
        y = y * jax.nn.silu(z_ref[...].astype(F32))
    y_ref[...] = y.astype(y_ref.dtype)  # whole tile at once (axlearn saw bf16 row stores fail)

    if save_tile_states:
        state_out_ref[...] = h
    elif static.return_last_state:

        @pl.when(seq_tile_index == static.tiling.num_seq_tiles - 1)
        def _():
            state_out_ref[...] = h


def _backward_kernel(static: Static, has_last_state_cotangent: bool, *refs):
    refs = list(refs)
    take = lambda present=True: refs.pop(0) if present else None
    u_ref, delta_ref, z_ref, gy_ref = take(), take(), take(static.has_z), take()
    B_ref, C_ref, A_ref, D_ref, bias_ref, start_ref = (take() for _ in range(6))
    g_last_ref = take(has_last_state_cotangent)
    gu_ref, gdelta_ref, gz_ref = take(), take(), take(static.has_z)
    gB_ref, gC_ref, gA_ref, gD_ref, gbias_ref = (take() for _ in range(5))
    (
        g_h_ref,
        states_ref,
        step_ref,
        drive_ref,
        B_lanes_ref,
        C_lanes_ref,
        readout_ref,
        g_readout_ref,
        g_step_decay_ref,
        g_drive_B_ref,
    ) = refs

    tiling = static.tiling
    sub_steps = tiling.sub_steps
    channel_tile_index = pl.program_id(1)
    reversed_index = pl.program_id(2)
    seq_tile_index = tiling.num_seq_tiles - 1 - reversed_index
    spread = functools.partial(_spread, static)
    sum_states = functools.partial(_sum_states, static)

    @pl.when(reversed_index == 0)  # the last sequence tile: start the reverse recurrence
    def _():
        g_h_ref[...] = g_last_ref[...] if has_last_state_cotangent else jnp.zeros_like(g_h_ref)
        gA_ref[...] = jnp.zeros_like(gA_ref)
        gD_ref[...] = jnp.zeros_like(gD_ref)
        gbias_ref[...] = jnp.zeros_like(gbias_ref)

    valid = _discretise(static, seq_tile_index, u_ref, delta_ref, bias_ref, step_ref, drive_ref)
    groups = _group_matrices(static, channel_tile_index)
    expand_bc = lambda start: _expand_bc(static, seq_tile_index, groups, start, B_ref, C_ref, B_lanes_ref, C_lanes_ref)
    A = A_ref[...]
    h_start = jnp.where(seq_tile_index > 0, start_ref[...], 0.0)

    # 1. Recompute this tile's states (and the readout, needed for the gate's gradient).
    def recompute_sub_block(j, h):
        start = j * sub_steps
        expand_bc(start)

        def recompute_step(i, h):
            t = start + i
            h = _advance(static, h, A, t, i, step_ref, drive_ref, B_lanes_ref)
            states_ref[_state_rows(static, t), :] = h
            return h, ((_readout(static, h, i, C_lanes_ref),) if static.has_z else ())

        readout = (readout_ref,) if static.has_z else ()
        return _run_steps(static, sub_steps, recompute_step, h, readout, start)

    lax.fori_loop(0, tiling.num_sub_blocks, recompute_sub_block, h_start)

    # 2. Output side: y = (readout + D u) * silu(z).
    u = u_ref[...].astype(F32)
    gy = gy_ref[...].astype(F32)
    if static.has_z:
        z = z_ref[...].astype(F32)
        sigmoid_z = jax.nn.sigmoid(z)
        y_before_gate = readout_ref[...] + D_ref[...] * u
        gz = gy * y_before_gate * sigmoid_z * (1.0 + z * (1.0 - sigmoid_z))
        gz_ref[...] = jnp.where(valid, gz, 0.0).astype(gz_ref.dtype)
        gy = gy * (z * sigmoid_z)
    g_readout = jnp.where(valid, gy, 0.0)
    g_readout_ref[...] = g_readout
    gD_ref[...] += _sum_steps(jnp.where(valid, g_readout * u, 0.0))

    # 3. Reverse recurrence, sub-block by sub-block (last first). After step t, its rows of the
    #    expanded B and of the states are dead, so they are overwritten with the per-step terms of
    #    dB (g_h * step * u) and dC (h * g_readout), which each sub-block then reduces per group.
    def reverse_sub_block(k, carry):
        start = (tiling.num_sub_blocks - 1 - k) * sub_steps
        expand_bc(start)

        def reverse_step(i, carry):
            g_h, gA = carry
            t = start + i
            rows, state_rows = _state_rows(static, i), _state_rows(static, t)
            step = spread(_row(step_ref, t))
            g_readout = spread(_row(g_readout_ref, t))
            g_h = g_h + g_readout * C_lanes_ref[rows, :]
            decay = jnp.exp(step * A)
            previous = jnp.where(t > 0, states_ref[_state_rows(static, jnp.maximum(t - 1, 0)), :], h_start)
            g_decay = g_h * previous * decay  # d loss / d(step A), per state
            gA = gA + g_decay * step
            step_rows = (sum_states(g_decay * A), sum_states(g_h * B_lanes_ref[rows, :]))
            B_lanes_ref[rows, :] = g_h * spread(_row(drive_ref, t))
            states_ref[state_rows, :] = states_ref[state_rows, :] * g_readout
            return (g_h * decay, gA), step_rows

        step_refs = (g_step_decay_ref, g_drive_B_ref)
        carry = _run_steps(static, sub_steps, reverse_step, carry, step_refs, start, reverse=True)
        for terms_ref, first, out_ref in ((B_lanes_ref, 0, gB_ref), (states_ref, start, gC_ref)):
            out_ref[:, _bc_columns(static, start)] = functools.reduce(
                operator.add,
                [
                    lax.dot_general(
                        group_matrix,
                        terms_ref[_folded_rows(static, first, s), :],
                        (((1,), (1,)), ((), ())),
                        precision=HIGHEST,
                        preferred_element_type=F32,
                    )
                    for s, group_matrix in enumerate(groups)
                ],
            )
        return carry

    g_h, gA = lax.fori_loop(0, tiling.num_sub_blocks, reverse_sub_block, (g_h_ref[...], jnp.zeros_like(A)))
    g_h_ref[...] = g_h
    gA_ref[...] += gA

    # 4. Per-step gradients of u and delta, and the per-tile partial sums.
    step, g_drive_B = step_ref[...], g_drive_B_ref[...]
    gu_ref[...] = (g_readout * D_ref[...] + step * g_drive_B).astype(gu_ref.dtype)
    g_step = g_step_decay_ref[...] + u * g_drive_B
    if static.delta_softplus:
        g_step = g_step * jax.nn.sigmoid(delta_ref[...].astype(F32) + bias_ref[...])
    g_step = jnp.where(valid, g_step, 0.0)
    gdelta_ref[...] = g_step.astype(gdelta_ref.dtype)
    gbias_ref[...] += _sum_steps(g_step)


# ------------------------------------------------------------------------------------------------
# pallas_call wrappers


def _specs(static: Static, reverse: bool):
    """BlockSpecs by argument kind, for grid (batch, channel tiles, sequence tiles)."""
    tiling, state, groups = static.tiling, static.state, static.groups
    lanes, fold, rows = tiling.lanes, tiling.fold, static.state_rows
    last = tiling.num_seq_tiles - 1
    seq = (lambda s: last - s) if reverse else (lambda s: s)
    if fold == 1:
        sequence = pl.BlockSpec((None, tiling.seq_tile, lanes), lambda b, c, s: (b, seq(s), c))
    else:
        sequence = pl.BlockSpec((None, tiling.seq_tile, None, fold, lanes), lambda b, c, s: (b, seq(s), c, 0, 0))
    return dict(
        sequence=sequence,
        flat_bc=pl.BlockSpec((None, groups, tiling.seq_tile * state), lambda b, c, s: (b, 0, seq(s))),
        per_channel=pl.BlockSpec((None, rows, lanes), lambda b, c, s: (c, 0, 0)),
        row=pl.BlockSpec((None, fold, lanes), lambda b, c, s: (c, 0, 0)),
        tile_state=pl.BlockSpec((None, None, None, rows, lanes), lambda b, c, s: (b, seq(s), c, 0, 0)),
        previous_tile_state=pl.BlockSpec(
            (None, None, None, rows, lanes), lambda b, c, s: (b, jnp.maximum(seq(s) - 1, 0), c, 0, 0)
        ),
        batch_state=pl.BlockSpec((None, None, rows, lanes), lambda b, c, s: (b, c, 0, 0)),
        batch_row=pl.BlockSpec((None, None, fold, lanes), lambda b, c, s: (b, c, 0, 0)),
        partial_bc=pl.BlockSpec((None, None, groups, tiling.seq_tile * state), lambda b, c, s: (b, c, 0, seq(s))),
    )


def _grid(static: Static):
    t = static.tiling
    return (static.batch, t.num_channel_tiles, t.num_seq_tiles)


def _compiler_params():
    return pltpu.CompilerParams(
        dimension_semantics=("parallel", "parallel", "arbitrary"), vmem_limit_bytes=vmem_limits()[0]
    )


def _tile_shape(static: Static):
    """Shape of a sequence block, and of the per-step scratch buffers, in the kernels."""
    t = static.tiling
    return (t.seq_tile, t.lanes) if t.fold == 1 else (t.seq_tile, t.fold, t.lanes)


def _folded(x, static: Static):
    """(batch, length, channels) -> the view the sequence BlockSpec reads (a free reshape)."""
    t = static.tiling
    return x if t.fold == 1 else x.reshape(*x.shape[:2], t.num_channel_tiles, t.fold, t.lanes)


def _unfolded(x, static: Static):
    return x.reshape(static.batch, static.length, static.channels)


def _to_state_rows(x, static: Static):
    """(..., state, channels) -> (..., channel tiles, state * fold, lanes), in h's row order."""
    t = static.tiling
    x = x.reshape(*x.shape[:-2], static.state, t.num_channel_tiles, t.fold, t.lanes)
    return jnp.moveaxis(x, -3, -4).reshape(*x.shape[:-4], t.num_channel_tiles, static.state_rows, t.lanes)


def _from_state_rows(x, static: Static):
    """(..., channel tiles, state * fold, lanes) -> (..., state, channels)."""
    t = static.tiling
    x = x.reshape(*x.shape[:-2], static.state, t.fold, t.lanes)
    return jnp.moveaxis(x, -4, -3).reshape(*x.shape[:-4], static.state, static.channels)


def _flatten_bc(x, static: Static):
    """(batch, length, [groups,] state) -> (batch, groups, length * state), dtype kept."""
    x = x.reshape(static.batch, static.length, static.groups, static.state)
    return jnp.swapaxes(x, 1, 2).reshape(static.batch, static.groups, static.length * static.state)


def _kernel_operands(static: Static, A, B, C, D, delta_bias):
    t = static.tiling
    A_rows = _to_state_rows(jnp.swapaxes(A.astype(F32), 0, 1), static)  # (tiles, state * fold, lanes)
    rows = lambda v: v.astype(F32).reshape(t.num_channel_tiles, t.fold, t.lanes)
    return _flatten_bc(B, static), _flatten_bc(C, static), A_rows, rows(D), rows(delta_bias)


def _last_state(state_rows, static: Static):
    """(batch, channel tiles, state * fold, lanes) -> (batch, channels, state)."""
    return jnp.swapaxes(_from_state_rows(state_rows, static), 1, 2)


def _forward(static: Static, save_tile_states: bool, u, delta, z, A, B, C, D, delta_bias):
    """(y, tile end states (batch, seq tiles, channel tiles, state * fold, lanes) or the last
    state (batch, channel tiles, state * fold, lanes) or None)."""
    spec = _specs(static, reverse=False)
    t = static.tiling
    sequence_inputs = [u, delta] + ([z] if static.has_z else [])
    inputs = [_folded(x, static) for x in sequence_inputs] + list(_kernel_operands(static, A, B, C, D, delta_bias))
    in_specs = (
        [spec["sequence"]] * len(sequence_inputs)
        + [spec["flat_bc"]] * 2
        + [spec["per_channel"], spec["row"], spec["row"]]
    )
    out_shape = [jax.ShapeDtypeStruct(inputs[0].shape, u.dtype)]
    out_specs = [spec["sequence"]]
    state_shape = (t.num_channel_tiles, static.state_rows, t.lanes)
    if save_tile_states:
        out_shape.append(jax.ShapeDtypeStruct((static.batch, t.num_seq_tiles, *state_shape), F32))
        out_specs.append(spec["tile_state"])
    elif static.return_last_state:
        out_shape.append(jax.ShapeDtypeStruct((static.batch, *state_shape), F32))
        out_specs.append(spec["batch_state"])
    tile = _tile_shape(static)
    lanes = (t.sub_steps * static.state_rows, t.lanes)
    outputs = pl.pallas_call(
        functools.partial(_forward_kernel, static, save_tile_states),
        grid=_grid(static),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[
            pltpu.VMEM((static.state_rows, t.lanes), F32),
            pltpu.VMEM(tile, F32),
            pltpu.VMEM(tile, F32),
            pltpu.VMEM(lanes, F32),
            pltpu.VMEM(lanes, F32),
            pltpu.VMEM(tile, F32),
        ],
        compiler_params=_compiler_params(),
        interpret=static.interpret,
        name="selective_scan_forward",
    )(*inputs)
    return _unfolded(outputs[0], static), (outputs[1] if len(outputs) > 1 else None)


def _backward(static: Static, residuals, gy, g_last_state):
    u, delta, z, A, B, C, D, delta_bias, tile_states = residuals
    spec = _specs(static, reverse=True)
    t = static.tiling
    has_g_last = g_last_state is not None
    sequence_inputs = [u, delta] + ([z] if static.has_z else []) + [gy]
    inputs = (
        [_folded(x, static) for x in sequence_inputs]
        + list(_kernel_operands(static, A, B, C, D, delta_bias))
        + [tile_states]
    )
    in_specs = (
        [spec["sequence"]] * len(sequence_inputs)
        + [spec["flat_bc"]] * 2
        + [spec["per_channel"], spec["row"], spec["row"], spec["previous_tile_state"]]
    )
    if has_g_last:
        inputs.append(_to_state_rows(jnp.swapaxes(g_last_state.astype(F32), 1, 2), static))
        in_specs.append(spec["batch_state"])
    sequence_grads = [u, delta] + ([z] if static.has_z else [])
    partial_bc = (static.batch, t.num_channel_tiles, static.groups, static.length * static.state)
    out_shape = (
        [jax.ShapeDtypeStruct(inputs[0].shape, x.dtype) for x in sequence_grads]
        + [jax.ShapeDtypeStruct(partial_bc, F32)] * 2
        + [jax.ShapeDtypeStruct((static.batch, t.num_channel_tiles, static.state_rows, t.lanes), F32)]
        + [jax.ShapeDtypeStruct((static.batch, t.num_channel_tiles, t.fold, t.lanes), F32)] * 2
    )
    out_specs = (
        [spec["sequence"]] * len(sequence_grads)
        + [spec["partial_bc"]] * 2
        + [spec["batch_state"], spec["batch_row"], spec["batch_row"]]
    )
    tile = _tile_shape(static)
    lanes = (t.sub_steps * static.state_rows, t.lanes)
    states = (t.seq_tile * static.state_rows, t.lanes)
    grads = pl.pallas_call(
        functools.partial(_backward_kernel, static, has_g_last),
        grid=_grid(static),
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        scratch_shapes=[
            pltpu.VMEM((static.state_rows, t.lanes), F32),
            pltpu.VMEM(states, F32),
            pltpu.VMEM(tile, F32),
            pltpu.VMEM(tile, F32),
            pltpu.VMEM(lanes, F32),
            pltpu.VMEM(lanes, F32),
            pltpu.VMEM(tile, F32),
            pltpu.VMEM(tile, F32),
            pltpu.VMEM(tile, F32),
            pltpu.VMEM(tile, F32),
        ],
        compiler_params=_compiler_params(),
        interpret=static.interpret,
        name="selective_scan_backward",
    )(*inputs)
    grads = list(grads)
    gu, gdelta = _unfolded(grads.pop(0), static), _unfolded(grads.pop(0), static)
    gz = _unfolded(grads.pop(0), static) if static.has_z else None
    gB_partial, gC_partial, gA_partial, gD_partial, gbias_partial = grads

    def bc_grad(partial, like):
        g = partial.sum(axis=1).reshape(static.batch, static.groups, static.length, static.state)
        return jnp.swapaxes(g, 1, 2).reshape(like.shape).astype(like.dtype)

    gA = jnp.swapaxes(_from_state_rows(gA_partial.sum(axis=0), static), 0, 1).astype(A.dtype)
    gD = gD_partial.sum(axis=0).reshape(static.channels).astype(D.dtype)
    gbias = gbias_partial.sum(axis=0).reshape(static.channels).astype(delta_bias.dtype)
    return gu, gdelta, gz, gA, bc_grad(gB_partial, B), bc_grad(gC_partial, C), gD, gbias


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(static: Static, u, delta, z, A, B, C, D, delta_bias):
    y, last_state = _forward(static, False, u, delta, z, A, B, C, D, delta_bias)
    return y, (None if last_state is None else _last_state(last_state, static))


def _scan_forward(static: Static, u, delta, z, A, B, C, D, delta_bias):
    y, tile_states = _forward(static, True, u, delta, z, A, B, C, D, delta_bias)
    last_state = _last_state(tile_states[:, -1], static) if static.return_last_state else None
    return (y, last_state), (u, delta, z, A, B, C, D, delta_bias, tile_states)


def _scan_backward(static: Static, residuals, cotangents):
    gy, g_last_state = cotangents
    return _backward(static, residuals, gy, g_last_state if static.return_last_state else None)


_scan.defvjp(_scan_forward, _scan_backward)


def static_for(u, B, A, z, *, delta_softplus, return_last_state, interpret) -> Static | None:
    """The kernels' static configuration for these arguments, or None if they cannot take them."""
    batch, length, channels = u.shape
    state = A.shape[1]
    groups = B.shape[2] if B.ndim == 4 else 1
    tiling = plan_tiling(length, channels, state, groups)
    if tiling is None:
        return None
    return Static(
        batch,
        length,
        channels,
        state,
        groups,
        tiling,
        bool(delta_softplus),
        z is not None,
        bool(return_last_state),
        interpret,
    )


def scan(static: Static, u, delta, A, B, C, D, z, delta_bias):
    """y (u.dtype) and the last state (batch, channels, state) fp32 or None; differentiable.

    D and delta_bias must be arrays (zeros when absent); shapes as in selective_scan.
    """
    return _scan(static, u, delta, z, A, B, C, D, delta_bias)
