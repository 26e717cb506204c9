"""The selective scan as Pallas GPU kernels (Triton lowering): one forward, one backward kernel.

Same fusion as the TPU kernels (scan_pallas_tpu.py): delta_bias and softplus, exp(delta A),
delta B u, the recurrence, <h, C>, D u and the z gate all happen in registers; HBM sees the
inputs, y, the gradients and the saved states.

Why Triton and not Mosaic GPU. JAX 0.11 deprecated Pallas' Triton backend in favour of Mosaic GPU
(jax-ml/jax docs/pallas/CHANGELOG.md), so this is a deliberate choice, to revisit:
  * the scan is an elementwise recurrence with a small reduction over the state; it needs no
    TensorCore, TMA or warp specialisation, which is what Mosaic GPU is for. Its register
    layouts (WGMMA tiles of 64 rows, strided layouts) support broadcasting and reducing over a
    16-row state only through layout casts and shared-memory round trips, and state == 1
    (VMamba) not at all without padding;
  * Triton distributes any power-of-two block over the threads itself, lowers `fori_loop` with
    dynamic ref indexing, and runs on Ampere as well as Hopper;
  * the Triton lowering can be checked from a CPU-only host (lowering for 'cuda' under an
    abstract H100 device, tests/ops/test_scan_pallas.py); Mosaic GPU needs the GPU to compile.
  JAX prints a DeprecationWarning when it lowers these kernels; a port to Mosaic GPU is the
  follow-up once a GPU is available to validate it.

Layout: grid (batch, groups, channel tiles within a group); one program owns `channel_tile`
channels of one group (a power of two dividing channels // groups, at most 64) for the whole
sequence, with the fp32 state (state, channel_tile) in registers. GPU programs run in parallel,
so the state cannot be carried across sequence blocks as on TPU; parallelism comes from batch x
channels (fine for training batches; a batch of 1-2 leaves most SMs idle).

Backward: the forward pass saves the state at the start of every chunk of `chunk` (default 8) steps
(batch, chunks, state, channels) fp32 (the same memory as the `chunked` implementation's
boundary states). The backward program walks the chunks in reverse; per chunk it recomputes the
chunk's states into registers (the chunk loop is unrolled in Python, so every state is a separate
value) and runs the reverse recurrence over them. dA, dD, d(delta_bias) are per-program sums
(batch rows reduced outside); dB, dC are per-channel-tile sums reduced outside.

Cross-scan (VMamba's SS2D, `grid` set): the same kernels read a channels-last (height, width) grid
through index maps instead of a sequence. Group k is scan direction k (rows, columns, rows
reversed, columns reversed, as sarf_jax.ops.cross_scan.cross_scan orders them): step t of group k
reads and writes grid position `_position(k, t)`. u (batch, H*W, d_inner) is shared by the four
groups; delta, B, C, y and du are (batch, H*W, 4 * d_inner) / (batch, H*W, 4, state) in grid
order, so no cross-scanned copy of u or delta and no reordering of y reaches memory. du comes out
per direction and is summed over the four outside (a contiguous reduction).

Ordered scans (PlainMamba's zig-zags, `orders` set): group k reads u at row `orders[k, t]` of an
int32 (groups, length) table and writes y there; delta, B and C are read at row t (PlainMamba's
official indexing: only u is permuted). u, delta (batch, length, per_group) and C (batch, length,
1, state) are shared by all groups; y, du and d(delta) come out per group and are summed outside.

Two designs of the same kernels (`DESIGN`, recorded in Static):
  "blocks"     (the default, the one timed on an H100 in benchmarks/RESULTS.md) holds h as one
               (state, channel_tile) block over 4 warps. Triton lays the block out itself, so
               <h, C> and the backward's sums over the state may cross warps every step, and each
               step's loads are issued when the step starts, so their latency is paid every step.
  "registers"  holds h as `state` separate (channel_tile,) vectors with one thread per channel
               (channel_tile / 32 warps), so a channel's states sit in one thread's registers and
               every sum over the state is a chain of register adds; B and C are read as scalars
               (one broadcast load per state); the loads of step t + PREFETCH are issued before
               step t's math (carried through the loop), so their latency overlaps PREFETCH steps
               of work; decays are exp2(delta * A log2 e) with A log2 e computed once. At least
               one warp per program, so tiles under 32 channels leave threads idle. A forward
               pass without a backward pass (inference) at a batch too small to fill the GPU runs
               length-parallel in two passes over sequence segments (`segments_for`). Checked
               in interpret mode and by the Triton lowering (tests/ops/test_scan_pallas_gpu_designs.py);
               not yet timed: no GPU was available since it was written.
`benchmarks/gpu_session.sh` times both (`scan_roofline.py --gpu-designs`); the one that measures
faster should become the only one.

Not done, and why: dB and dC stay per-channel-tile fp32 partials summed by XLA rather than atomic
adds: atomic float adds make the gradients' rounding depend on thread timing, so two identical
runs could differ, and the partials keep the kernel deterministic.

Constraints (else the dispatcher falls back to `chunked`): state a power of two.
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
from jax.experimental.pallas import triton as pltriton

F32 = jnp.float32
CHANNEL_TILE = 64  # channels per program at most (a power of two)
CHUNK = 8  # steps between saved states, recomputed per chunk in the backward pass
NUM_WARPS = 4  # the "blocks" design's threads per program: 4 x 32
DESIGNS = ("blocks", "registers")  # see the module docstring
DESIGN = "blocks"  # the design static_for picks
PREFETCH = 2  # "registers": steps whose loads are in flight ahead of the step being computed
LOG2_E = math.log2(math.e)
PROGRAMS_TO_FILL = 264  # "registers": programs that fill the GPU (2 per SM of an H100 / H200)
MIN_SEGMENT = 16  # "registers": shortest segment of the two-pass forward, in steps


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything the kernels are specialised on (hashable: a custom_vjp non-diff argument)."""

    batch: int
    length: int
    channels: int
    state: int
    groups: int
    channel_tile: int
    chunk: int
    delta_softplus: bool
    has_z: bool
    return_last_state: bool
    interpret: object
    grid: tuple[int, int] | None = None  # (height, width) of a cross-scan, see the module docstring
    orders: tuple | None = None  # (groups, length) rows of u and y of an ordered scan, see the module docstring
    design: str = "blocks"  # "blocks" or "registers", see the module docstring
    segments: int = 1  # "registers": sequence segments of the two-pass forward, see `segments_for`

    @property
    def ordered(self):
        return self.orders is not None

    @property
    def per_group(self):
        return self.channels // self.groups

    @property
    def tiles_per_group(self):
        return self.per_group // self.channel_tile

    @property
    def num_chunks(self):
        return -(-self.length // self.chunk)

    @property
    def segment_length(self):
        return -(-self.length // self.segments)


def _is_power_of_two(n):
    return n >= 1 and n & (n - 1) == 0


def segments_for(batch: int, groups: int, tiles_per_group: int, length: int) -> int:
    """Sequence segments for the "registers" design's forward pass without a backward pass.

    One program per (batch row, channel tile) scans the whole sequence, which leaves most of a
    GPU idle at small batches (Vim-S at batch 2: 24 programs for 132 SMs). Cut into segments,
    the scan runs in two passes of segment-long loops: each segment's end state from h = 0 and
    the sum of its steps, a short sequential combine outside (the state entering segment s is
    exp(A * steps of s - 1) * the state entering s - 1 + the end state of s - 1), then each
    segment again from its true start state, writing y. That is twice the steps, spread over
    `segments` times as many programs, so it is used only until the programs would fill the GPU,
    with segments of at least MIN_SEGMENT steps.
    """
    programs = batch * groups * tiles_per_group
    if programs >= PROGRAMS_TO_FILL or length < 2 * MIN_SEGMENT:
        return 1
    wanted = min(-(-PROGRAMS_TO_FILL // programs), length // MIN_SEGMENT)
    return -(-length // -(-length // wanted))  # as many as segments of that length need


def channel_tile_for(per_group: int) -> int:
    """The largest power of two <= CHANNEL_TILE dividing per_group."""
    return min(CHANNEL_TILE, per_group & -per_group)


def static_for(
    u, B, A, z, *, delta_softplus, return_last_state, interpret, grid=None, orders=None, design=None
) -> Static | None:
    """The kernels' static configuration for these arguments, or None if they cannot take them.

    With `grid` (height, width), u is the (batch, height * width, d_inner) grid shared by the four
    directions, B is (batch, height * width, 4, state) and A (4 * d_inner, state). With `orders`
    ((groups, length) ints), u is (batch, length, d_inner) shared by the groups of B (batch, length,
    groups, state), C is (batch, length, 1, state) and A is (groups * d_inner, state). `design`:
    one of DESIGNS, or None for DESIGN.
    """
    design = DESIGN if design is None else design
    if design not in DESIGNS:
        raise ValueError(f"scan_pallas_gpu: design must be one of {DESIGNS}, got {design!r}")
    batch, length, channels = u.shape
    state = A.shape[1]
    groups = B.shape[2] if B.ndim == 4 else 1
    if not _is_power_of_two(state):
        return None
    if grid is not None:
        channels = A.shape[0]
        if groups != 4 or grid[0] * grid[1] != length or channels != 4 * u.shape[2] or z is not None:
            raise ValueError(f"scan_pallas_gpu: a cross-scan takes 4 directions and no z, got u {u.shape}, B {B.shape}")
    if orders is not None:
        channels = A.shape[0]
        orders = tuple(tuple(int(i) for i in row) for row in orders)
        if grid is not None or channels != groups * u.shape[2] or z is not None or len(orders) != groups:
            raise ValueError(f"scan_pallas_gpu: an ordered scan shares u and takes no z, got u {u.shape}, B {B.shape}")
    channel_tile = channel_tile_for(channels // groups)
    tiles_per_group = channels // groups // channel_tile
    return Static(
        batch,
        length,
        channels,
        state,
        groups,
        channel_tile,
        CHUNK,
        bool(delta_softplus),
        z is not None,
        bool(return_last_state),
        interpret,
        None if grid is None else (int(grid[0]), int(grid[1])),
        orders,
        design,
        segments_for(batch, groups, tiles_per_group, length) if design == "registers" else 1,
    )


# ------------------------------------------------------------------------------------------------
# Kernels


class _Program:
    """This program's coordinates and per-channel parameters."""

    def __init__(self, static: Static, A_ref, D_ref, bias_ref, segmented=False):
        self.batch, self.group, tile = pl.program_id(0), pl.program_id(1), pl.program_id(2)
        self.segment = 0
        if segmented:  # the last grid axis runs over (segment, channel tile)
            tile, self.segment = lax.rem(tile, static.tiles_per_group), lax.div(tile, static.tiles_per_group)
        first = self.group * static.per_group + tile * static.channel_tile
        self.channels = pl.ds(pl.multiple_of(first, static.channel_tile), static.channel_tile)
        # u's channels: the groups of a cross-scan or an ordered scan share one u of per_group channels
        first_u = tile * static.channel_tile if static.grid or static.ordered else first
        self.u_channels = pl.ds(pl.multiple_of(first_u, static.channel_tile), static.channel_tile)
        self.delta_channels = self.u_channels if static.ordered else self.channels
        self.C_group = 0 if static.ordered else self.group
        self.tile = tile
        self.A = A_ref[:, self.channels]  # (state, channel_tile)
        self.D = D_ref[self.channels]
        self.bias = bias_ref[self.channels]


def _rows(static: Static, group, t, orders_ref):
    """(row of u and y, row of delta, B and C) for step t of this program."""
    if static.ordered:
        return orders_ref[group, t], t
    row = _position(static, group, t)
    return row, row


def _position(static: Static, group, t):
    """The row that step t of this program reads and writes: t itself, or for a cross-scan the
    grid position (raster index) direction `group` visits at step t."""
    if static.grid is None:
        return t
    height, width = static.grid
    # lax.rem / lax.div: all values are >= 0, and jnp's % lowers to a sign fix-up Triton rejects
    s = lax.select(group >= 2, static.length - 1 - t, t)  # directions 2, 3 run backwards
    column_major = lax.rem(group, 2) == 1  # directions 1, 3
    return lax.select(column_major, lax.rem(s, height) * width + lax.div(s, height), s)


def _load_step(static: Static, p: _Program, rows, u_ref, delta_ref, B_ref, C_ref):
    """fp32 (u, raw delta + bias, step, B column, C column) at `rows` (see `_rows`) for this program."""
    u_row, row = rows
    u = u_ref[p.batch, u_row, p.u_channels].astype(F32)
    step_in = delta_ref[p.batch, row, p.delta_channels].astype(F32) + p.bias
    step = jax.nn.softplus(step_in) if static.delta_softplus else step_in
    B = B_ref[p.batch, row, p.group, :].astype(F32)[:, None]
    C = C_ref[p.batch, row, p.C_group, :].astype(F32)[:, None]
    return u, step_in, step, B, C


def _gate_gradients(static: Static, g_y, y_before_gate, z, valid):
    """(d loss / d readout, zero past the end; d loss / d z or None) through
    y = y_before_gate * silu(z); `y_before_gate` is a function, called only with a gate."""
    g_y, gz = g_y.astype(F32), None
    if static.has_z:
        sigmoid_z = jax.nn.sigmoid(z)
        gz = g_y * y_before_gate() * sigmoid_z * (1.0 + z * (1.0 - sigmoid_z))
        g_y = g_y * (z * sigmoid_z)
    return jnp.where(valid, g_y, 0.0), gz


def _delta_gradient(static: Static, g_step, step_in, valid):
    """d loss / d(raw delta) from d loss / d(step): through the softplus, zero past the end."""
    if static.delta_softplus:
        g_step = g_step * jax.nn.sigmoid(step_in)
    return jnp.where(valid, g_step, 0.0)


def _store_step_gradients(static: Static, p, rows, gu, gdelta, gz, gu_ref, gdelta_ref, gz_ref):
    """One real step's du, d(delta) and dz, at the rows it read (see `_rows`)."""
    u_row, row = rows
    gu_ref[p.batch, u_row, p.channels] = gu.astype(gu_ref.dtype)
    gdelta_ref[p.batch, row, p.channels] = gdelta.astype(gdelta_ref.dtype)
    if static.has_z:
        gz_ref[p.batch, row, p.channels] = gz.astype(gz_ref.dtype)


def _forward_kernel(static: Static, save_chunk_states: bool, *refs):
    refs = list(refs)
    take = lambda present=True: refs.pop(0) if present else None
    u_ref, delta_ref, z_ref = take(), take(), take(static.has_z)
    B_ref, C_ref, A_ref, D_ref, bias_ref = (take() for _ in range(5))
    orders_ref = take(static.ordered)
    y_ref = take()
    chunk_states_ref = take(save_chunk_states)
    last_state_ref = take(static.return_last_state)
    p = _Program(static, A_ref, D_ref, bias_ref)

    def scan_step(t, h):
        rows = _rows(static, p.group, t, orders_ref)
        u, _, step, B, C = _load_step(static, p, rows, u_ref, delta_ref, B_ref, C_ref)
        h = jnp.exp(step[None, :] * p.A) * h + (step * u)[None, :] * B
        y = jnp.sum(h * C, axis=0) + p.D * u
        if static.has_z:
            y = y * jax.nn.silu(z_ref[p.batch, rows[1], p.channels].astype(F32))
        y_ref[p.batch, rows[0], p.channels] = y.astype(y_ref.dtype)
        return h

    h = jnp.zeros((static.state, static.channel_tile), F32)
    if save_chunk_states:

        def one_chunk(k, h):
            chunk_states_ref[p.batch, k, :, p.channels] = h
            end = jnp.minimum((k + 1) * static.chunk, static.length)
            return lax.fori_loop(k * static.chunk, end, scan_step, h)

        h = lax.fori_loop(0, static.num_chunks, one_chunk, h)
    else:
        h = lax.fori_loop(0, static.length, scan_step, h)
    if static.return_last_state:
        last_state_ref[p.batch, :, p.channels] = h


def _backward_kernel(static: Static, has_last_state_cotangent: bool, *refs):
    refs = list(refs)
    take = lambda present=True: refs.pop(0) if present else None
    u_ref, delta_ref, z_ref, gy_ref = take(), take(), take(static.has_z), take()
    B_ref, C_ref, A_ref, D_ref, bias_ref, chunk_states_ref = (take() for _ in range(6))
    orders_ref = take(static.ordered)
    g_last_ref = take(has_last_state_cotangent)
    gu_ref, gdelta_ref, gz_ref = take(), take(), take(static.has_z)
    gB_ref, gC_ref, gA_ref, gD_ref, gbias_ref = refs
    p = _Program(static, A_ref, D_ref, bias_ref)
    last_step = static.length - 1

    def one_chunk(i, carry):
        g_h, gA, gD, gbias = carry
        k = static.num_chunks - 1 - i
        # Recompute the chunk: states[0] is h before its first step, states[j + 1] after step j.
        steps, states = [], [chunk_states_ref[p.batch, k, :, p.channels]]
        for j in range(static.chunk):
            t = k * static.chunk + j
            valid = t <= last_step
            t = jnp.minimum(t, last_step)  # past the end: read a real row, use step 0
            rows = _rows(static, p.group, t, orders_ref)
            u, step_in, step, B, C = _load_step(static, p, rows, u_ref, delta_ref, B_ref, C_ref)
            step = jnp.where(valid, step, 0.0)
            decay = jnp.exp(step[None, :] * p.A)
            states.append(decay * states[-1] + (step * u)[None, :] * B)
            steps.append((rows, valid, u, step_in, step, B, C, decay))
        # Reverse recurrence over the chunk.
        for j in reversed(range(static.chunk)):
            (u_row, row), valid, u, step_in, step, B, C, decay = steps[j]
            z = z_ref[p.batch, row, p.channels].astype(F32) if static.has_z else None
            y_before_gate = lambda: jnp.sum(states[j + 1] * C, axis=0) + p.D * u
            g_readout, gz = _gate_gradients(static, gy_ref[p.batch, u_row, p.channels], y_before_gate, z, valid)
            g_h = g_h + g_readout[None, :] * C
            g_decay = g_h * states[j] * decay
            gA = gA + g_decay * step[None, :]
            g_drive_B = jnp.sum(g_h * B, axis=0)
            g_step = _delta_gradient(static, jnp.sum(g_decay * p.A, axis=0) + u * g_drive_B, step_in, valid)
            gD = gD + g_readout * u
            gbias = gbias + g_step

            @pl.when(valid)
            def _():
                gu = g_readout * p.D + step * g_drive_B
                _store_step_gradients(static, p, (u_row, row), gu, g_step, gz, gu_ref, gdelta_ref, gz_ref)
                gB_ref[p.batch, p.group, p.tile, row, :] = jnp.sum(g_h * (step * u)[None, :], axis=1)
                gC_ref[p.batch, p.group, p.tile, row, :] = jnp.sum(states[j + 1] * g_readout[None, :], axis=1)

            g_h = g_h * decay
        return g_h, gA, gD, gbias

    zeros_state = jnp.zeros((static.state, static.channel_tile), F32)
    zeros_row = jnp.zeros((static.channel_tile,), F32)
    g_h = g_last_ref[p.batch, :, p.channels] if has_last_state_cotangent else zeros_state
    _, gA, gD, gbias = lax.fori_loop(0, static.num_chunks, one_chunk, (g_h, zeros_state, zeros_row, zeros_row))
    gA_ref[p.batch, :, p.channels] = gA
    gD_ref[p.batch, p.channels] = gD
    gbias_ref[p.batch, p.channels] = gbias


# ------------------------------------------------------------------------------------------------
# The "registers" design (see the module docstring): the state as `state` separate channel
# vectors, B and C as scalars, exp2, and the next steps' loads issued before this step's math.


def _log2_rates(static: Static, p: _Program, A_ref):
    """A's rows times log2(e), one (channel_tile,) vector per state, for exp2."""
    return [A_ref[n, p.channels] * LOG2_E for n in range(static.state)]


def _load_registers_step(static: Static, p: _Program, rows, u_ref, delta_ref, z_ref, B_ref, C_ref, readout=True):
    """fp32 (u, raw delta + bias, B scalars, C scalars, z or None) at `rows` for this program;
    without `readout`, no C (an empty tuple) and no z."""
    u_row, row = rows
    u = u_ref[p.batch, u_row, p.u_channels].astype(F32)
    step_in = delta_ref[p.batch, row, p.delta_channels].astype(F32) + p.bias
    B = tuple(B_ref[p.batch, row, p.group, n].astype(F32) for n in range(static.state))
    C = tuple(C_ref[p.batch, row, p.C_group, n].astype(F32) for n in range(static.state) if readout)
    z = z_ref[p.batch, row, p.channels].astype(F32) if static.has_z and readout else None
    return u, step_in, B, C, z


def _sum(values):
    return functools.reduce(operator.add, values)


def _forward_kernel_registers(static: Static, save_chunk_states: bool, *refs, role="whole"):
    """role "whole": one pass over the sequence. The segmented form (see `segments_for`) runs two:
    "ends" scans each segment from h = 0 and writes its end state and the sum of its steps (no y);
    "outputs" scans each segment again from its true start state (combined outside) and writes y."""
    refs = list(refs)
    take = lambda present=True: refs.pop(0) if present else None
    u_ref, delta_ref, z_ref = take(), take(), take(static.has_z)
    B_ref, C_ref, A_ref, D_ref, bias_ref = (take() for _ in range(5))
    orders_ref = take(static.ordered)
    start_ref = take(role == "outputs")
    ends_ref, sums_ref = take(role == "ends"), take(role == "ends")
    y_ref = take(role != "ends")
    chunk_states_ref = take(save_chunk_states)
    last_state_ref = take(role == "whole" and static.return_last_state)
    p = _Program(static, A_ref, D_ref, bias_ref, segmented=role != "whole")
    A2 = _log2_rates(static, p, A_ref)
    last = static.length - 1
    states = range(static.state)
    if role == "whole":
        first, end = 0, static.length
    else:
        first = p.segment * static.segment_length
        end = jnp.minimum(first + static.segment_length, static.length)

    def fetch(t):  # past the end: a real row, never used
        rows = _rows(static, p.group, jnp.minimum(t, last), orders_ref)
        inputs = _load_registers_step(static, p, rows, u_ref, delta_ref, z_ref, B_ref, C_ref, role != "ends")
        return rows, inputs

    def scan_step(t, carry):
        h, queue, step_sum = carry
        (rows, (u, step_in, B, C, z)), queue = queue[0], queue[1:] + (fetch(t + PREFETCH),)
        if save_chunk_states:

            @pl.when(lax.rem(t, static.chunk) == 0)
            def _():
                for n in states:
                    chunk_states_ref[p.batch, lax.div(t, static.chunk), n, p.channels] = h[n]

        step = jax.nn.softplus(step_in) if static.delta_softplus else step_in
        drive = step * u
        h = tuple(jnp.exp2(step * A2[n]) * h[n] + drive * B[n] for n in states)
        if role == "ends":
            return h, queue, step_sum + step
        y = _sum([h[n] * C[n] for n in states]) + p.D * u
        if static.has_z:
            y = y * jax.nn.silu(z)
        y_ref[p.batch, rows[0], p.channels] = y.astype(y_ref.dtype)
        return h, queue, step_sum

    zeros = jnp.zeros((static.channel_tile,), F32)
    if role == "outputs":
        h = tuple(start_ref[p.batch, p.segment, n, p.channels] for n in states)
    else:
        h = (zeros,) * static.state
    queue = tuple(fetch(first + k) for k in range(PREFETCH))
    h, _, step_sum = lax.fori_loop(first, end, scan_step, (h, queue, zeros))
    if role == "ends":
        for n in states:
            ends_ref[p.batch, p.segment, n, p.channels] = h[n]
        sums_ref[p.batch, p.segment, p.channels] = step_sum
    if last_state_ref is not None:
        for n in states:
            last_state_ref[p.batch, n, p.channels] = h[n]


def _backward_kernel_registers(static: Static, has_last_state_cotangent: bool, *refs):
    refs = list(refs)
    take = lambda present=True: refs.pop(0) if present else None
    u_ref, delta_ref, z_ref, gy_ref = take(), take(), take(static.has_z), take()
    B_ref, C_ref, A_ref, D_ref, bias_ref, chunk_states_ref = (take() for _ in range(6))
    orders_ref = take(static.ordered)
    g_last_ref = take(has_last_state_cotangent)
    gu_ref, gdelta_ref, gz_ref = take(), take(), take(static.has_z)
    gB_ref, gC_ref, gA_ref, gD_ref, gbias_ref = refs
    p = _Program(static, A_ref, D_ref, bias_ref)
    A2 = _log2_rates(static, p, A_ref)
    A = [A_ref[n, p.channels] for n in range(static.state)]
    states_range = range(static.state)
    last_step = static.length - 1

    def one_chunk(i, carry):
        g_h, gA, gD, gbias = carry
        k = static.num_chunks - 1 - i
        # Recompute the chunk: states[0] is h before its first step, states[j + 1] after step j.
        steps, states = [], [tuple(chunk_states_ref[p.batch, k, n, p.channels] for n in states_range)]
        for j in range(static.chunk):
            t = k * static.chunk + j
            valid = t <= last_step
            rows = _rows(static, p.group, jnp.minimum(t, last_step), orders_ref)  # past the end: step 0
            u, step_in, B, C, z = _load_registers_step(static, p, rows, u_ref, delta_ref, z_ref, B_ref, C_ref)
            step = jnp.where(valid, jax.nn.softplus(step_in) if static.delta_softplus else step_in, 0.0)
            decay = tuple(jnp.exp2(step * A2[n]) for n in states_range)
            drive = step * u
            states.append(tuple(decay[n] * states[-1][n] + drive * B[n] for n in states_range))
            steps.append((rows, valid, u, step_in, step, drive, B, C, z, decay))
        # Reverse recurrence over the chunk.
        for j in reversed(range(static.chunk)):
            (u_row, row), valid, u, step_in, step, drive, B, C, z, decay = steps[j]
            y_before_gate = lambda: _sum([states[j + 1][n] * C[n] for n in states_range]) + p.D * u
            g_readout, gz = _gate_gradients(static, gy_ref[p.batch, u_row, p.channels], y_before_gate, z, valid)
            g_h = tuple(g_h[n] + g_readout * C[n] for n in states_range)
            g_decay = tuple(g_h[n] * states[j][n] * decay[n] for n in states_range)
            gA = tuple(gA[n] + g_decay[n] * step for n in states_range)
            g_drive_B = _sum([g_h[n] * B[n] for n in states_range])
            g_step = _sum([g_decay[n] * A[n] for n in states_range]) + u * g_drive_B
            g_step = _delta_gradient(static, g_step, step_in, valid)
            gD = gD + g_readout * u
            gbias = gbias + g_step

            @pl.when(valid)
            def _():
                gu = g_readout * p.D + step * g_drive_B
                _store_step_gradients(static, p, (u_row, row), gu, g_step, gz, gu_ref, gdelta_ref, gz_ref)
                for n in states_range:
                    gB_ref[p.batch, p.group, p.tile, row, n] = jnp.sum(g_h[n] * drive)
                    gC_ref[p.batch, p.group, p.tile, row, n] = jnp.sum(states[j + 1][n] * g_readout)

            g_h = tuple(g_h[n] * decay[n] for n in states_range)
        return g_h, gA, gD, gbias

    zeros = jnp.zeros((static.channel_tile,), F32)
    if has_last_state_cotangent:
        g_h = tuple(g_last_ref[p.batch, n, p.channels] for n in states_range)
    else:
        g_h = (zeros,) * static.state
    _, gA, gD, gbias = lax.fori_loop(0, static.num_chunks, one_chunk, (g_h, (zeros,) * static.state, zeros, zeros))
    for n in states_range:
        gA_ref[p.batch, n, p.channels] = gA[n]
    gD_ref[p.batch, p.channels] = gD
    gbias_ref[p.batch, p.channels] = gbias


# ------------------------------------------------------------------------------------------------
# pallas_call wrappers


def _grid(static: Static):
    return (static.batch, static.groups, static.tiles_per_group)


def _compiler_params(static: Static):
    """ "blocks": NUM_WARPS warps. "registers": one thread per channel of the tile (at least a
    warp), so that a channel's state vectors sit in one thread's registers."""
    num_warps = NUM_WARPS if static.design == "blocks" else max(1, static.channel_tile // 32)
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=1)


_KERNELS = {  # design: (forward kernel, backward kernel)
    "blocks": (_forward_kernel, _backward_kernel),
    "registers": (_forward_kernel_registers, _backward_kernel_registers),
}


def _kernel_operands(static: Static, A, B, C, D, delta_bias):
    grouped = lambda x: x.reshape(static.batch, static.length, -1, static.state)  # an ordered scan's C: 1 group
    return (grouped(B), grouped(C), jnp.swapaxes(A.astype(F32), 0, 1), D.astype(F32), delta_bias.astype(F32))


def _orders(static: Static):
    return [jnp.asarray(static.orders, jnp.int32)] if static.ordered else []


def _forward(static: Static, save_chunk_states: bool, u, delta, z, A, B, C, D, delta_bias):
    """(y, chunk start states (batch, chunks, state, channels) or None, last state or None)."""
    inputs = [u, delta] + ([z] if static.has_z else []) + list(_kernel_operands(static, A, B, C, D, delta_bias))
    inputs += _orders(static)
    if static.segments > 1 and not save_chunk_states:
        return _forward_segmented(static, inputs, A, u.dtype)
    sequence = (static.batch, static.length, static.channels)  # y of a cross-scan or ordered scan: per group
    out_shape = [jax.ShapeDtypeStruct(sequence, u.dtype)]
    if save_chunk_states:
        out_shape.append(jax.ShapeDtypeStruct((static.batch, static.num_chunks, static.state, static.channels), F32))
    if static.return_last_state:
        out_shape.append(jax.ShapeDtypeStruct((static.batch, static.state, static.channels), F32))
    outputs = list(
        pl.pallas_call(
            functools.partial(_KERNELS[static.design][0], static, save_chunk_states),
            grid=_grid(static),
            out_shape=out_shape,
            compiler_params=_compiler_params(static),
            interpret=static.interpret,
            name="selective_scan_forward",
        )(*inputs)
    )
    y = outputs.pop(0)
    chunk_states = outputs.pop(0) if save_chunk_states else None
    last_state = jnp.swapaxes(outputs.pop(0), 1, 2) if static.return_last_state else None
    return y, chunk_states, last_state


def _forward_segmented(static: Static, inputs, A, dtype):
    """The two-pass forward of `segments_for`: (y, None, last state or None)."""
    segments, sequence = static.segments, (static.batch, static.length, static.channels)
    call = lambda role, out_shape: pl.pallas_call(
        functools.partial(_forward_kernel_registers, static, False, role=role),
        grid=(static.batch, static.groups, static.tiles_per_group * segments),
        out_shape=out_shape,
        compiler_params=_compiler_params(static),
        interpret=static.interpret,
        name=f"selective_scan_forward_{role}",
    )
    states = jax.ShapeDtypeStruct((static.batch, segments, static.state, static.channels), F32)
    ends, sums = call("ends", [states, jax.ShapeDtypeStruct((static.batch, segments, static.channels), F32)])(*inputs)
    decays = jnp.exp(jnp.swapaxes(A.astype(F32), 0, 1) * sums[:, :, None, :])  # each segment's exp(A sum of steps)

    def combine(h, segment):
        decay, end = segment
        return decay * h + end, h

    zeros = jnp.zeros((static.batch, static.state, static.channels), F32)
    last_state, starts = lax.scan(combine, zeros, (jnp.swapaxes(decays, 0, 1), jnp.swapaxes(ends, 0, 1)))
    (y,) = call("outputs", [jax.ShapeDtypeStruct(sequence, dtype)])(*inputs, jnp.swapaxes(starts, 0, 1))
    return y, None, jnp.swapaxes(last_state, 1, 2) if static.return_last_state else None


def _backward(static: Static, residuals, gy, g_last_state):
    u, delta, z, A, B, C, D, delta_bias, chunk_states = residuals
    has_g_last = g_last_state is not None
    inputs = (
        [u, delta]
        + ([z] if static.has_z else [])
        + [gy]
        + list(_kernel_operands(static, A, B, C, D, delta_bias))
        + [chunk_states]
        + _orders(static)
    )
    if has_g_last:
        inputs.append(jnp.swapaxes(g_last_state.astype(F32), 1, 2))
    partial_bc = (static.batch, static.groups, static.tiles_per_group, static.length, static.state)
    sequence = (static.batch, static.length, static.channels)  # du, d(delta) of shared inputs: per group
    out_shape = (
        [jax.ShapeDtypeStruct(sequence, u.dtype), jax.ShapeDtypeStruct(sequence, delta.dtype)]
        + ([jax.ShapeDtypeStruct(z.shape, z.dtype)] if static.has_z else [])
        + [jax.ShapeDtypeStruct(partial_bc, F32)] * 2
        + [jax.ShapeDtypeStruct((static.batch, static.state, static.channels), F32)]
        + [jax.ShapeDtypeStruct((static.batch, static.channels), F32)] * 2
    )
    grads = list(
        pl.pallas_call(
            functools.partial(_KERNELS[static.design][1], static, has_g_last),
            grid=_grid(static),
            out_shape=out_shape,
            compiler_params=_compiler_params(static),
            interpret=static.interpret,
            name="selective_scan_backward",
        )(*inputs)
    )

    def shared(g, like):  # the groups' contributions to an input they share
        return g.reshape(*like.shape[:2], static.groups, like.shape[2]).sum(axis=2, dtype=F32).astype(like.dtype)

    gu, gdelta = grads.pop(0), grads.pop(0)
    if static.grid or static.ordered:
        gu = shared(gu, u)
    if static.ordered:
        gdelta = shared(gdelta, delta)
    gz = grads.pop(0) if static.has_z else None
    gB_partial, gC_partial, gA_partial, gD_partial, gbias_partial = grads

    def bc_grad(partial, like, shared_by_groups=False):
        g = jnp.swapaxes(partial.sum(axis=2), 1, 2)  # (batch, length, groups, state)
        if shared_by_groups:
            g = g.sum(axis=2)
        return g.reshape(like.shape).astype(like.dtype)

    gA = jnp.swapaxes(gA_partial.sum(axis=0), 0, 1).astype(A.dtype)
    return (
        gu,
        gdelta,
        gz,
        gA,
        bc_grad(gB_partial, B),
        bc_grad(gC_partial, C, shared_by_groups=static.ordered),  # an ordered scan's C: shared
        gD_partial.sum(axis=0).astype(D.dtype),
        gbias_partial.sum(axis=0).astype(delta_bias.dtype),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan(static: Static, u, delta, z, A, B, C, D, delta_bias):
    y, _, last_state = _forward(static, False, u, delta, z, A, B, C, D, delta_bias)
    return y, last_state


def _scan_forward(static: Static, u, delta, z, A, B, C, D, delta_bias):
    y, chunk_states, last_state = _forward(static, True, u, delta, z, A, B, C, D, delta_bias)
    return (y, last_state), (u, delta, z, A, B, C, D, delta_bias, chunk_states)


def _scan_backward(static: Static, residuals, cotangents):
    gy, g_last_state = cotangents
    return _backward(static, residuals, gy, g_last_state if static.return_last_state else None)


_scan.defvjp(_scan_forward, _scan_backward)


def scan(static: Static, u, delta, A, B, C, D, z, delta_bias):
    """y (u.dtype) and the last state (batch, channels, state) fp32 or None; differentiable.

    D and delta_bias must be arrays (zeros when absent); shapes as in selective_scan, or for a
    cross-scan or an ordered scan as in `static_for` (y then is (batch, length, groups * d_inner), per group).
    """
    return _scan(static, u, delta, z, A, B, C, D, delta_bias)
