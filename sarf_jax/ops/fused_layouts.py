"""The GPU kernel with a multi-order layout fused in (a cross-scan's grid, or a table of orders):
whether to use it, when it cannot run, and the jitted region that runs it.

`cross_scan.cross_selective_scan` (VMamba) and `ordered_scan.ordered_selective_scan` (PlainMamba)
both share u among their groups and can run unfused (every XLA form, `pallas_tpu`: the oracle) or
with the GPU kernel reading u through its layout (scan_pallas_gpu.py, `grid` or `orders`).
"""

from __future__ import annotations

import functools

import jax

from sarf_jax.ops import scan_pallas, scan_pallas_gpu
from sarf_jax.ops.selective_scan import resolve_impl


def use_fused_kernel(owner: str, impl: str, fused) -> bool:
    """Whether `owner` runs the fused GPU kernel: `fused` None means where `impl` resolves to
    `pallas_gpu`, False never, True always (an error for any other impl)."""
    if fused not in (None, True, False):
        raise ValueError(f"{owner}: fused must be None, True or False, got {fused!r}")
    kernel = resolve_impl(impl) == "pallas_gpu"
    if fused and not kernel:
        raise ValueError(
            f"{owner}: fused=True needs the GPU kernel (impl 'pallas_gpu', or 'pallas'/'auto' on a GPU), "
            f"got impl {impl!r}"
        )
    return kernel and fused is not False


def fused_scan(owner: str, u, A, delta, B, C, delta_bias, D, interpret, **layout):
    """y per group, (batch, length, groups * d_inner), from the GPU kernel with `layout` (`grid` or
    `orders`, as scan_pallas_gpu.static_for takes them); or None, after a one-time warning, where it
    cannot run: a state it cannot take, or inputs sharded across a mesh (the unfused path then runs
    the kernel per shard)."""
    options = (("delta_softplus", True), ("return_last_state", False))
    options += (("interpret", scan_pallas.interpret_default(interpret)), ("design", scan_pallas_gpu.DESIGN))
    if scan_pallas_gpu.static_for(u, B, A, None, **dict(options), **layout) is None:
        scan_pallas.warn_once(
            f"{owner}: the fused GPU kernel cannot take state size {A.shape[1]} (a power of two is needed); "
            "running unfused instead"
        )
        return None
    if scan_pallas.sequence_spec(u) is not None:
        scan_pallas.warn_once(f"{owner}: sharded inputs run the unfused kernel per shard")
        return None
    return fused_scan_pallas(u, A, delta, B, C, delta_bias, D, layout=tuple(layout.items()), options=options)


@functools.partial(jax.jit, static_argnames=("layout", "options"))
def fused_scan_pallas(u, A, delta, B, C, delta_bias, D, *, layout, options):
    """The fused kernel. A named region of its own, so that FLOP counters (sarf_jax.analysis.flops)
    charge it by rule: u (batch, length, d_inner) and A (groups * d_inner, state) come first, and D
    is always given."""
    static = scan_pallas_gpu.static_for(u, B, A, None, **dict(options), **dict(layout))
    y, _ = scan_pallas_gpu.scan(static, u, delta, A, B, C, D, None, delta_bias)
    return y
