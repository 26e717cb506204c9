"""Running the Pallas selective-scan kernels: platform choice, interpret mode, fallback, sharding.

The kernels themselves live in scan_pallas_tpu.py (Mosaic) and scan_pallas_gpu.py (Triton).
This module decides which one runs and how:
  * `pallas` means the TPU kernel on TPU, the GPU kernel on GPU, and the TPU kernel in interpret
    mode on CPU (tests only: interpret mode is slow);
  * `interpret=None` interprets exactly when JAX's default backend is the CPU; `interpret=False`
    on a CPU host is how the kernels are lowered for another platform (`lowering_platforms`);
  * shapes a kernel cannot take return None here after a one-time warning, and the dispatcher
    runs `chunked` instead: never a wrong answer;
  * under a mesh with explicitly sharded inputs, the kernel runs per shard through
    `jax.shard_map`: batch and channels are independent, so no communication is needed. A
    sharded length axis is gathered first (carrying states across devices is not implemented).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sarf_jax.ops import scan_pallas_gpu, scan_pallas_tpu

KERNELS = {"pallas_tpu": scan_pallas_tpu, "pallas_gpu": scan_pallas_gpu}

_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=5)  # the caller of selective_scan


def kernel_for_platform(platform: str) -> str:
    """`pallas_tpu` or `pallas_gpu`: the kernel `impl="pallas"` means on this platform."""
    return "pallas_gpu" if platform in ("gpu", "cuda", "rocm") else "pallas_tpu"


def interpret_default(interpret):
    return jax.default_backend() == "cpu" if interpret is None else interpret


def run(kernel: str, u, delta, A, B, C, D, z, delta_bias, *, delta_softplus: bool, return_last_state: bool, interpret):
    """(y, last_state or None) from the kernel, or None when it cannot take these arguments.

    Arguments as in selective_scan (already checked).
    """
    options = (
        ("delta_softplus", bool(delta_softplus)),
        ("return_last_state", bool(return_last_state)),
        ("interpret", interpret_default(interpret)),
    )
    if kernel == "pallas_gpu":  # read now, so that it keys the jitted region's cache
        options += (("design", scan_pallas_gpu.DESIGN),)
    specs = _shard_specs(u, B)
    local_u, local_B = (u, B) if specs is _UNSHARDED else _local_shapes(u, B, specs[0])
    if KERNELS[kernel].static_for(local_u, local_B, A, z, **dict(options)) is None:
        return _unsupported(kernel, u, A, B)
    if delta_bias is None:  # the kernels always add it
        delta_bias = jnp.zeros(u.shape[-1], jnp.float32)
    return selective_scan_pallas(u, A, delta, B, C, delta_bias, D, z, kernel=kernel, options=options)


@functools.partial(jax.jit, static_argnames=("kernel", "options"))
def selective_scan_pallas(u, A, delta, B, C, delta_bias, D, z, *, kernel, options):
    """The kernel on the whole arrays, or per shard under shard_map.

    A named region of its own (like selective_scan.selective_scan_core), so that FLOP counters
    (sarf_jax.analysis.flops) charge it by rule: u and A come first, and D and z are operands
    only when given.
    """
    module, options = KERNELS[kernel], dict(options)
    if D is None:  # the kernels always add D u
        D = jnp.zeros(u.shape[-1], jnp.float32)

    def scan(u, delta, A, B, C, D, z, delta_bias):
        static = module.static_for(u, B, A, z, **options)
        return module.scan(static, u, delta, A, B, C, D, z, delta_bias)

    specs = _shard_specs(u, B)
    if specs is _UNSHARDED:
        return scan(u, delta, A, B, C, D, z, delta_bias)
    in_specs, out_specs, u_spec = specs
    args = (u, delta, A, B, C, D, z, delta_bias)
    args = [x if x is None else jax.sharding.reshard(x, spec) for x, spec in zip(args, in_specs)]
    last_state_spec = out_specs[1] if options["return_last_state"] else None
    y, last_state = jax.shard_map(scan, in_specs=in_specs, out_specs=(out_specs[0], last_state_spec), check_vma=False)(
        *args
    )
    return jax.sharding.reshard(y, u_spec), last_state


def _unsupported(kernel, u, A, B):
    warn_once(
        f"selective_scan: the {kernel} kernel cannot take u {tuple(u.shape)}, A {tuple(A.shape)}, "
        f"B {tuple(B.shape)} (see sarf_jax/ops/scan_{kernel}.py for its limits); using "
        "impl='chunked' instead"
    )
    return None


_UNSHARDED = object()


def sequence_spec(u) -> tuple | None:
    """The mesh axes of u's (batch, length, channels) under a mesh with explicitly sharded inputs;
    None when u is replicated, or the mesh is in Auto mode (its types carry no sharding)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not mesh.axis_names:
        return None
    sharding = getattr(jax.typeof(u), "sharding", None)
    spec = (tuple(getattr(sharding, "spec", ())) + (None,) * 3)[:3]
    return None if all(axes is None for axes in spec) else spec


def _shard_specs(u, B):
    """_UNSHARDED, or (in_specs, out_specs, u's spec) for running the kernel under shard_map.

    Batch and channels keep their sharding. A sharded length axis is gathered first (each
    device then scans whole sequences), and so are channels whose groups of B/C cannot be split
    the same way; both with a one-time warning, since they move data.
    """
    spec = sequence_spec(u)
    if spec is None:
        return _UNSHARDED
    mesh = jax.sharding.get_abstract_mesh()
    batch_axes, length_axes, channel_axes = spec
    if length_axes is not None:
        warn_once(
            "selective_scan: the pallas kernels scan whole sequences; gathering the length "
            f"axis of u {P(*spec)} across devices"
        )
    grouped = B.ndim == 4
    groups = B.shape[2] if grouped else 1
    if channel_axes is not None and groups > 1 and groups % _axis_size(mesh, channel_axes):
        warn_once(
            f"selective_scan: {groups} groups of B/C cannot follow channels split over "
            f"{_axis_size(mesh, channel_axes)} devices; gathering the channel axis"
        )
        channel_axes = None
    group_axes = channel_axes if groups > 1 else None
    sequence = P(batch_axes, None, channel_axes)
    bc = P(batch_axes, None, group_axes, None) if grouped else P(batch_axes, None, None)
    in_specs = (sequence, sequence, P(channel_axes, None), bc, bc, P(channel_axes), sequence, P(channel_axes))
    return in_specs, (sequence, P(batch_axes, channel_axes, None)), P(*spec)


def _axis_size(mesh, axes):
    if axes is None:
        return 1
    size = 1
    for name in axes if isinstance(axes, tuple) else (axes,):
        size *= mesh.shape[name]
    return size


def _local_shapes(u, B, in_specs):
    """Per-shard ShapeDtypeStructs of u and B, for the support check before shard_map."""
    mesh = jax.sharding.get_abstract_mesh()

    def local(x, spec):
        shape = [d // _axis_size(mesh, axes) for d, axes in zip(x.shape, tuple(spec) + (None,) * x.ndim)]
        return jax.ShapeDtypeStruct(tuple(shape), x.dtype)

    return local(u, in_specs[0]), local(B, in_specs[3])
