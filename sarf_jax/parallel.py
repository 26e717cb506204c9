"""Device mesh, logical-axis rules for every parameter, and multi-host start-up.

The mesh has three named axes:
  data    pure data parallelism (parameters replicated),
  fsdp    data parallelism whose parameters and optimizer state are split across it (ZeRO-3),
  tensor  model parallelism: splits the Mamba inner dimension (and MLP hidden / attention heads).
The batch is split over data x fsdp. `mesh_shape` resolves one -1 entry to "the rest".

Parameters get *logical* axis names from their path (`PARAM_AXES`, first match wins), and
`LOGICAL_RULES` maps logical names to mesh axes. A dimension whose size is not divisible by its
mesh axes is replicated instead (tiny models on big meshes still run). Parameters that match no
rule get FSDP on their largest divisible dimension, so new backbones shard without edits here.
Layers know nothing of this: it is all read off parameter paths.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (None: replicated)
LOGICAL_RULES = {
    "embed": "fsdp",  # model width: FSDP splits parameters along it
    "inner": "tensor",  # Mamba d_inner (expand * d_model)
    "mlp": "tensor",  # MLP hidden width
    "heads": "tensor",  # attention q/k/v outputs
    "state": None,  # SSM state size N (16; too small to split)
    "classes": None,
    "length": None,  # position-embedding tokens
    "conv": None,  # convolution window / spatial kernel
    "rank": None,  # dt_rank, x_proj's dt|B|C outputs
    "stack": None,  # stacked per-direction parameters (VMamba K=4, PlainMamba directions)
    "in": None,  # image channels
}

# (regex on the '/'-joined parameter path, logical axes per dimension); first match wins.
PARAM_AXES = [
    # Mamba mixer (nn.Mamba, Vim v2 backward set, PlainMamba2D): official names.
    (r"in_proj/kernel$", ("embed", "inner")),
    (r"in_proj/bias$", ("inner",)),
    (r"out_proj/kernel$", ("inner", "embed")),
    (r"out_proj/bias$", ("embed",)),
    (r"conv1d(_b)?/kernel$", ("conv", None, "inner")),
    (r"conv1d(_b)?/bias$", ("inner",)),
    (r"conv2d/kernel$", ("conv", "conv", None, "inner")),
    (r"conv2d/bias$", ("inner",)),
    (r"x_proj(_b)?/kernel$", ("inner", "rank")),
    (r"dt_proj(_b)?/kernel$", ("rank", "inner")),
    (r"dt_proj(_b)?/bias$", ("inner",)),
    (r"(^|/)A(_b)?_log$", ("inner", "state")),
    (r"(^|/)D(_b)?$", ("inner",)),
    (r"direction_Bs$", ("stack", "state")),
    # VMamba SS2D: K per-direction parameters stacked on a leading axis.
    (r"x_proj_weight$", ("stack", "rank", "inner")),
    (r"dt_projs_weight$", ("stack", "inner", "rank")),
    (r"dt_projs_bias$", ("stack", "inner")),
    (r"A_logs$", ("inner", "state")),
    (r"(^|/)Ds$", ("inner",)),
    (r"out_norm/(scale|bias)$", ("inner",)),
    # Transformer MLP and attention (nn.Mlp, models.vit).
    (r"fc1/kernel$", ("embed", "mlp")),
    (r"fc1/bias$", ("mlp",)),
    (r"fc2/kernel$", ("mlp", "embed")),
    (r"fc2/bias$", ("embed",)),
    (r"qkv/kernel$", ("embed", "heads")),
    (r"qkv/bias$", ("heads",)),
    (r"attn/proj/kernel$", ("heads", "embed")),
    (r"attn/proj/bias$", ("embed",)),
    # Embeddings, classifier heads.
    (r"(cls_token|pos_embed)$", (None, "length", "embed")),
    (r"patch_embed/.*kernel$", ("conv", "conv", "in", "embed")),
    (r"patch_embed/.*bias$", ("embed",)),
    (r"(head|fc|classifier/head)/kernel$", ("embed", "classes")),
    (r"(head|fc|classifier/head)/bias$", ("classes",)),
    # Norms and layer scales on the model width.
    (r"(norm\w*|ln\w*)/(scale|bias|mean|var)$", ("embed",)),
    (r"gamma$", ("embed",)),
]


def mesh_shape(mesh_config, device_count: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes with one -1 resolved to the devices left over.

    Raises ValueError naming the axis when a size is invalid or the mesh does not fit.
    """
    sizes = []
    for axis in MESH_AXES:
        size = mesh_config.get(axis, 1)
        if isinstance(size, bool) or not isinstance(size, int) or (size < 1 and size != -1):
            raise ValueError(f"config.mesh.{axis} must be a positive int or -1 (the rest), got {size!r}")
        sizes.append(size)
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    fixed = int(np.prod([s for s in sizes if s != -1]))
    if fixed > device_count or device_count % fixed:
        raise ValueError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} needs a multiple of {fixed} devices, but "
            f"{device_count} are available (jax.device_count()); make the product of the axes "
            f"divide {device_count}, or set one axis to -1"
        )
    sizes = [device_count // fixed if s == -1 else s for s in sizes]
    if int(np.prod(sizes)) != device_count:
        raise ValueError(
            f"config.mesh {dict(zip(MESH_AXES, sizes))} uses {int(np.prod(sizes))} of the {device_count} "
            "devices; the mesh must use all of them (set one axis to -1)"
        )
    return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> jax.sharding.Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all), axes in Auto mode so that
    the compiler propagates shardings through model code that carries no annotations."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_config, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def path_string(path) -> str:
    """'layers/0/mixer/in_proj/kernel' from a jax key path (Variable `.value` entries dropped)."""
    parts = []
    for entry in path:
        key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
        if key != "value":
            parts.append(str(key))
    return "/".join(parts)


def logical_axes(path: str, shape: tuple[int, ...]) -> tuple[str | None, ...]:
    """Logical axis names of the parameter at `path` (see PARAM_AXES)."""
    for pattern, axes in PARAM_AXES:
        if re.search(pattern, path) and len(axes) == len(shape):
            return axes
    # Unknown parameter: FSDP on its largest dimension (big_vision's "fsdp" fallback).
    axes = [None] * len(shape)
    if shape:
        axes[int(np.argmax(shape))] = "embed"
    return tuple(axes)


def partition_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh) -> PartitionSpec:
    """Mesh axes for `axes` under LOGICAL_RULES; a dimension that the mesh axis does not divide,
    or whose mesh axis is already used by an earlier dimension, is replicated."""
    spec, used = [], set()
    for name, size in zip(axes, shape):
        mesh_axis = LOGICAL_RULES.get(name) if name is not None else None
        if mesh_axis is None or mesh_axis in used or size % mesh.shape[mesh_axis]:
            spec.append(None)
        else:
            spec.append(mesh_axis)
            used.add(mesh_axis)
    return PartitionSpec(*spec)


def param_shardings(tree, mesh):
    """NamedShardings for a tree of parameters (or optimizer state shaped like them)."""

    def sharding(path, leaf):
        shape = tuple(np.shape(leaf))
        return NamedSharding(mesh, partition_spec(logical_axes(path_string(path), shape), shape, mesh))

    return jax.tree_util.tree_map_with_path(sharding, tree)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) dimension split over data x fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def initialize_distributed(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Start multi-host JAX before any computation.

    On Cloud TPU (and SLURM / Open MPI clusters) every argument is detected, so call with none;
    elsewhere pass all three (e.g. `127.0.0.1:1234`, 2, 0 for the first of two local processes).
    Does nothing for a single process with no coordinator.
    """
    given = [coordinator_address is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError(
            "multi-host start-up needs --coordinator_address, --num_processes and "
            f"--process_id together; got coordinator_address={coordinator_address!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}"
        )
    if all(given):
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ValueError(f"--process_id must be in [0, {num_processes}), got {process_id}")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize()  # multi-host Cloud TPU slice (or coordinator given by environment)
