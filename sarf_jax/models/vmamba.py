"""VMamba (MzeroMiko/VMamba, classification/models/vmamba.py `VSSM`), channels-last.

    images -> patch_embed -> stages [blocks, downsample] -> classifier (norm, avgpool, head)

- patch_embed "v2" (released v2/v3 models): conv(k = patch/2 + 1, stride patch/2, pad 1) ->
  LayerNorm -> GELU -> conv(same) -> LayerNorm; "v1": conv(k = stride = patch) -> LayerNorm.
- downsample between stages, channels doubled: "v3" (released): conv 3x3 stride 2 pad 1 with
  bias -> LayerNorm; "v2": conv 2x2 stride 2 -> LayerNorm; "v1": PatchMerging2D (pad odd grids,
  concat the 2x2 neighbours -> LayerNorm(4C) -> Linear(4C -> 2C, no bias)).
- block (pre-norm): x = x + DropPath(SS2D(norm(x))); x = x + DropPath(Mlp(norm2(x))) when
  mlp_ratio > 0 (fc1 -> exact GELU -> fc2).
- LayerNorm epsilon 1e-5 everywhere. The official "ln2d" layout (channels-first with Linear2d /
  LayerNorm2d) and "ln" compute the same function and store the same weights; this port is
  channels-last only.

Attribute names follow the official state-dict keys except inside nn.Sequential stacks, whose
numeric indices sarf_jax.convert.vmamba renames (patch_embed.0/2/5/7 -> conv1/norm1/conv2/norm2,
downsample.1/3 -> conv/norm).

Initialisation as VSSM: every Linear (in_proj, out_proj, fc1, fc2, head, PatchMerging's
reduction) trunc_normal(0.02) with zero bias, LayerNorms (1, 0), convolutions and SS2D's raw
tensors (x_proj_weight included, which is no longer an nn.Linear when VSSM initialises) as in
the official constructors.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sarf_jax.models.common import check_images, check_positive_ints, check_rate
from sarf_jax.models.registry import register
from sarf_jax.nn.common import DropPath, Mlp
from sarf_jax.nn.initializers import torch_default, trunc_normal
from sarf_jax.nn.ss2d import SS2D
from sarf_jax.reduction import placement
from sarf_jax.reduction.restore import PositionMap

PATCHEMBED_VERSIONS = ("v1", "v2")
DOWNSAMPLE_VERSIONS = ("v1", "v2", "v3")
LINEAR_INIT = trunc_normal(0.02)  # VSSM._init_weights: every Linear (biases zero)


def layer_norm(features: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm as torch's: epsilon 1e-5, exact two-pass variance."""
    return nnx.LayerNorm(features, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


def conv(
    in_features: int, out_features: int, kernel: int, stride: int, padding: int, *, dtype, rngs: nnx.Rngs
) -> nnx.Conv:
    """PyTorch Conv2d (with bias, torch default init) with explicit symmetric zero padding
    (Flax's 'SAME' pads stride-2 convolutions asymmetrically)."""
    fan_in = in_features * kernel * kernel
    return nnx.Conv(
        in_features,
        out_features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dtype=dtype,
        kernel_init=torch_default(fan_in),
        bias_init=torch_default(fan_in),
        rngs=rngs,
    )


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class PatchEmbed(nnx.Module):
    """The stem: "v2" conv1 -> norm1 -> GELU -> conv2 -> norm2 (overall stride patch_size),
    "v1" conv1 (k = stride = patch_size) -> norm1. Norms are absent with patch_norm=False."""

    def __init__(
        self, in_chans: int, embed_dim: int, patch_size: int, version: str, patch_norm: bool, *, dtype, rngs: nnx.Rngs
    ):
        self.version = version
        if version == "v1":
            self.geometry = [(patch_size, patch_size, 0)]
            self.conv1 = conv(in_chans, embed_dim, patch_size, patch_size, 0, dtype=dtype, rngs=rngs)
            self.norm1 = layer_norm(embed_dim, rngs) if patch_norm else None
        else:
            stride = patch_size // 2
            self.geometry = [(stride + 1, stride, 1)] * 2
            self.conv1 = conv(in_chans, embed_dim // 2, stride + 1, stride, 1, dtype=dtype, rngs=rngs)
            self.norm1 = layer_norm(embed_dim // 2, rngs) if patch_norm else None
            self.conv2 = conv(embed_dim // 2, embed_dim, stride + 1, stride, 1, dtype=dtype, rngs=rngs)
            self.norm2 = layer_norm(embed_dim, rngs) if patch_norm else None

    def output_size(self, size: int) -> int:
        for kernel, stride, padding in self.geometry:
            size = conv_output_size(size, kernel, stride, padding)
        return size

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.conv1(x)
        if self.norm1 is not None:
            x = self.norm1(x)
        if self.version == "v2":
            x = self.conv2(jax.nn.gelu(x, approximate=False))
            if self.norm2 is not None:
                x = self.norm2(x)
        return x


class Downsample(nnx.Module):
    """Halve the grid (odd sizes round up) and go from dim to out_dim channels."""

    def __init__(self, dim: int, out_dim: int, version: str, *, dtype, rngs: nnx.Rngs):
        self.version = version
        if version == "v1":  # PatchMerging2D
            self.norm = layer_norm(4 * dim, rngs)
            self.reduction = nnx.Linear(
                4 * dim, out_dim, use_bias=False, dtype=dtype, kernel_init=LINEAR_INIT, rngs=rngs
            )
        else:
            kernel, padding = (3, 1) if version == "v3" else (2, 0)
            self.conv = conv(dim, out_dim, kernel, 2, padding, dtype=dtype, rngs=rngs)
            self.norm = layer_norm(out_dim, rngs)

    def output_size(self, size: int) -> int:
        if self.version == "v1":
            return -(-size // 2)
        return conv_output_size(size, 3, 2, 1) if self.version == "v3" else size // 2

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.version != "v1":
            return self.norm(self.conv(x))
        height, width = x.shape[1:3]
        x = jnp.pad(x, [(0, 0), (0, height % 2), (0, width % 2), (0, 0)])
        # channel order of PatchMerging2D: (even row, even col), (odd, even), (even, odd), (odd, odd)
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return self.reduction(self.norm(x))


class VSSBlock(nnx.Module):
    """Pre-norm residual block: SS2D branch on the full grid, then the MLP branch."""

    def __init__(self, dim: int, *, drop_path: float, mlp_ratio: float, ssm_kwargs: dict, dtype, rngs: nnx.Rngs):
        self.norm = layer_norm(dim, rngs)
        self.op = SS2D(dim, proj_init=LINEAR_INIT, dtype=dtype, rngs=rngs, **ssm_kwargs)
        self.drop_path = DropPath(drop_path, rngs=rngs)
        if mlp_ratio > 0:
            self.norm2 = layer_norm(dim, rngs)
            self.mlp = Mlp(
                dim,
                int(dim * mlp_ratio),
                kernel_init=LINEAR_INIT,
                bias_init=nnx.initializers.zeros,
                dtype=dtype,
                rngs=rngs,
            )
        else:
            self.norm2 = self.mlp = None

    def mixer_branch(self, x: jax.Array) -> jax.Array:
        """SS2D(norm(x)) on x's grid: the branch a token reducer plans around."""
        return self.op(self.norm(x))

    def mlp_branch(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.mlp is None:
            return x
        return x + self.drop_path(self.mlp(self.norm2(x)), deterministic=not train)

    def __call__(self, x: jax.Array, *, train: bool = False, reduce=None, mix=None) -> jax.Array:
        """`reduce(x, y)` shrinks the block input and the SS2D branch with one plan before they are
        added, so the MLP runs on the reduced grid (STORM's placement); `mix(branch, x)` replaces
        `branch(x)` (QuarterMap)."""
        y = self.mixer_branch(x) if mix is None else mix(self.mixer_branch, x)
        if reduce is not None:
            x, y = reduce(x, y)
        x = x + self.drop_path(y, deterministic=not train)
        return self.mlp_branch(x, train=train)


class Stage(nnx.Module):
    """blocks, then the downsample to the next stage (absent in the last stage)."""

    def __init__(self, blocks: list[VSSBlock], downsample: Downsample | None):
        self.blocks = nnx.List(blocks)
        self.downsample = downsample

    def run_blocks(self, x: jax.Array, *, train: bool = False, reduce=None, mix=None) -> jax.Array:
        """The blocks alone (the stage's output for dense heads); `reduce` / `mix`: one per block
        (or None), see VSSBlock."""
        for i, block in enumerate(self.blocks):
            x = block(x, train=train, reduce=reduce and reduce[i], mix=mix)
        return x

    def __call__(self, x: jax.Array, *, train: bool = False, reduce=None, mix=None) -> jax.Array:
        x = self.run_blocks(x, train=train, reduce=reduce, mix=mix)
        return x if self.downsample is None else self.downsample(x)


class Classifier(nnx.Module):
    """norm -> global average pool -> head."""

    def __init__(self, dim: int, num_classes: int, *, dtype, rngs: nnx.Rngs):
        self.norm = layer_norm(dim, rngs)
        self.head = nnx.Linear(
            dim, num_classes, dtype=dtype, kernel_init=LINEAR_INIT, bias_init=nnx.initializers.zeros, rngs=rngs
        )

    def pool(self, x: jax.Array) -> jax.Array:
        """(batch, H, W, C) -> (batch, C): the features fed to the head."""
        return jnp.mean(self.norm(x).astype(jnp.float32), axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.pool(x))


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"VMamba: {message}")


class VMamba(nnx.Module):
    """VMamba classifier on NHWC images of img_size x img_size (the layers themselves take any
    grid); keyword arguments named as the official VSSM's.

    Args:
      num_classes, img_size, in_chans: the task (img_size must be a multiple of patch_size).
      depths: blocks per stage. dims: channels of stage 0 (doubled per stage) or one per stage.
      patch_size: overall stride of the stem.
      ssm_d_state, ssm_ratio, ssm_dt_rank, ssm_conv, ssm_conv_bias, forward_type: SS2D's
        d_state, ssm_ratio, dt_rank, d_conv, conv_bias, forward_type.
      mlp_ratio: MLP hidden width / dim; 0 drops the MLP branch (Vanilla-VMamba).
      patchembed_version, downsample_version, patch_norm: see the module docstring.
      drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
      dtype: compute dtype (None: the input's); parameters, scans and pooling are float32.
      scan_impl, chunk_size: passed to `sarf_jax.ops.selective_scan`.
      out_norms: give `features` a trainable LayerNorm per stage (the official detection backbone's
        `outnorm{i}`, initialised (1, 0)); classification checkpoints do not hold them, so the
        default uses the same norm without parameters, i.e. as initialised.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        img_size: int,
        in_chans: int = 3,
        depths: Sequence[int] = (2, 2, 8, 2),
        dims: int | Sequence[int] = 96,
        patch_size: int = 4,
        ssm_d_state: int = 1,
        ssm_ratio: float = 1.0,
        ssm_dt_rank: int | str = "auto",
        ssm_conv: int = 3,
        ssm_conv_bias: bool = False,
        forward_type: str = "v05_noz",
        mlp_ratio: float = 4.0,
        patchembed_version: str = "v2",
        downsample_version: str = "v3",
        patch_norm: bool = True,
        drop_path_rate: float = 0.0,
        dtype=None,
        scan_impl: str = "auto",
        chunk_size: int | None = None,
        out_norms: bool = False,
        rngs: nnx.Rngs,
    ):
        check_positive_ints(
            "VMamba", num_classes=num_classes, img_size=img_size, in_chans=in_chans, patch_size=patch_size
        )
        positive = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
        depths = tuple(depths)
        _check(
            len(depths) >= 1 and all(positive(d) for d in depths),
            f"depths must be a non-empty sequence of positive ints, got {depths!r}",
        )
        dims = tuple(dims * 2**i for i in range(len(depths))) if positive(dims) else tuple(dims)
        _check(
            len(dims) == len(depths) and all(positive(d) for d in dims),
            f"dims must be a positive int or {len(depths)} positive ints (one per stage), got {dims!r}",
        )
        _check(
            patchembed_version in PATCHEMBED_VERSIONS,
            f"patchembed_version must be one of {PATCHEMBED_VERSIONS}, got {patchembed_version!r}",
        )
        _check(
            downsample_version in DOWNSAMPLE_VERSIONS,
            f"downsample_version must be one of {DOWNSAMPLE_VERSIONS}, got {downsample_version!r}",
        )
        _check(
            patchembed_version == "v1" or (patch_size % 2 == 0 and dims[0] % 2 == 0),
            f"patchembed_version 'v2' needs an even patch_size and dims[0], got {patch_size} and {dims[0]}",
        )
        _check(img_size % patch_size == 0, f"img_size ({img_size}) must be a multiple of patch_size ({patch_size})")
        _check(isinstance(mlp_ratio, (int, float)) and mlp_ratio >= 0, f"mlp_ratio must be >= 0, got {mlp_ratio!r}")
        check_rate("VMamba", "drop_path_rate", drop_path_rate)

        self.num_classes, self.img_size, self.in_chans = num_classes, img_size, in_chans
        self.dims = dims
        ssm_kwargs = dict(
            d_state=ssm_d_state,
            ssm_ratio=ssm_ratio,
            dt_rank=ssm_dt_rank,
            d_conv=ssm_conv,
            conv_bias=ssm_conv_bias,
            forward_type=forward_type,
            scan_impl=scan_impl,
            chunk_size=chunk_size,
        )
        self.patch_embed = PatchEmbed(
            in_chans, dims[0], patch_size, patchembed_version, patch_norm, dtype=dtype, rngs=rngs
        )
        rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        stages = []
        for i, (depth, dim) in enumerate(zip(depths, dims)):
            first = sum(depths[:i])
            blocks = [
                VSSBlock(
                    dim, drop_path=rates[first + j], mlp_ratio=mlp_ratio, ssm_kwargs=ssm_kwargs, dtype=dtype, rngs=rngs
                )
                for j in range(depth)
            ]
            downsample = (
                Downsample(dim, dims[i + 1], downsample_version, dtype=dtype, rngs=rngs)
                if i + 1 < len(depths)
                else None
            )
            stages.append(Stage(blocks, downsample))
        self.layers = nnx.List(stages)
        self.classifier = Classifier(dims[-1], num_classes, dtype=dtype, rngs=rngs)
        _check(isinstance(out_norms, bool), f"out_norms must be True or False, got {out_norms!r}")
        self.outnorms = nnx.List(
            [
                nnx.LayerNorm(
                    dim, epsilon=1e-5, use_fast_variance=False, use_scale=out_norms, use_bias=out_norms, rngs=rngs
                )
                for dim in dims
            ]
        )

    def grid_sizes(self) -> list[int]:
        """Side of every stage's grid for img_size x img_size images."""
        size = self.patch_embed.output_size(self.img_size)
        sizes = [size]
        for stage in self.layers[:-1]:
            size = stage.downsample.output_size(size)
            sizes.append(size)
        return sizes

    def reduction_sites(self, reduction):
        """Grid before and after every block under `reduction` (None when nothing is reduced)."""
        depths = tuple(len(stage.blocks) for stage in self.layers)
        side = self.grid_sizes()[0]
        return placement.block_sites(reduction, depths, (side, side), next_stage_hw=self._next_stage_hw)

    def _next_stage_hw(self, stage: int, hw):
        downsample = self.layers[stage].downsample
        return downsample.output_size(hw[0]), downsample.output_size(hw[1])

    def stage_outputs(self, images: jax.Array, *, reduction=None, train: bool = False, plans=None):
        """Every stage's block output (before its downsample), on the stage's grid under `reduction`.

        plans: a dict that receives the plan of every reducing block, by global block index.
        """
        sites = self.reduction_sites(reduction)
        reducer = reduction.reducer("vmamba") if sites else None
        mix = placement.quartermap_mixer if sites and reducer.method == "quartermap" else None
        check_images("VMamba", images, self.img_size, self.in_chans)
        x = self.patch_embed(images)
        outputs, index = [], 0
        for stage in self.layers:
            reduce = None
            if sites and mix is None:
                reduce = [
                    functools.partial(placement.reduce_pair, reducer, sites[index + i], index=index + i, plans=plans)
                    for i in range(len(stage.blocks))
                ]
            x = stage.run_blocks(x, train=train, reduce=reduce, mix=mix)
            outputs.append(x)
            if stage.downsample is not None:
                x = stage.downsample(x)
            index += len(stage.blocks)
        return outputs

    def forward_features(self, images: jax.Array, *, reduction=None, train: bool = False) -> jax.Array:
        """(batch, img_size, img_size, in_chans) -> (batch, dims[-1]) pooled features (the head's input)."""
        return self.classifier.pool(self.stage_outputs(images, reduction=reduction, train=train)[-1])

    def features(
        self, images: jax.Array, *, reduction=None, restore: bool = False, train: bool = False
    ) -> list[jax.Array]:
        """Multi-scale maps for dense heads: one (batch, h_i, w_i, dims[i]) array per stage.

        Stage i's block output (before its downsample) through `outnorms[i]`, as the official
        detection/segmentation backbone (`Backbone_VSSM`: `outnorm{i}`, the classifier removed).
        Under `reduction` the grids are the reduced ones; restore=True maps each back onto the
        stage's dense grid (`grid_sizes()`) with `sarf_jax.reduction.restore.PositionMap`.
        """
        plans = {} if restore else None
        outputs = self.stage_outputs(images, reduction=reduction, train=train, plans=plans)
        outputs = [norm(x) for norm, x in zip(self.outnorms, outputs)]
        if not plans:
            return outputs
        return self._restore(outputs, plans)

    def _restore(self, outputs, plans):
        sides = self.grid_sizes()
        position = PositionMap.identity(outputs[0], (sides[0], sides[0]))
        restored, first = [], 0
        for stage_index, (stage, x) in enumerate(zip(self.layers, outputs)):
            if stage_index:
                reduced = self._next_stage_hw(stage_index - 1, position.grid)
                position = position.next_stage((sides[stage_index],) * 2, reduced)
            for index in range(first, first + len(stage.blocks)):
                if index in plans:
                    position = position.then(plans[index])
            restored.append(position.restore(x))
            first += len(stage.blocks)
        return restored

    def __call__(self, images: jax.Array, *, reduction=None, train: bool = False) -> jax.Array:
        """Logits; `reduction` (a reduction.Spec, static under jit) shrinks grids inside blocks."""
        return self.classifier.head(self.forward_features(images, reduction=reduction, train=train))


# name -> VSSM keyword arguments (vmamba.py factories vmamba_tiny_s1l8 / vmamba_small_s2l15 /
# vmamba_base_s2l15 and configs/vssm/*.yaml)
RELEASED = dict(
    ssm_d_state=1,
    ssm_dt_rank="auto",
    ssm_conv=3,
    ssm_conv_bias=False,
    forward_type="v05_noz",
    mlp_ratio=4.0,
    patch_size=4,
    patchembed_version="v2",
    downsample_version="v3",
)
VARIANTS = {
    "vmamba_tiny": dict(RELEASED, depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0, drop_path_rate=0.2),
    "vmamba_small": dict(RELEASED, depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0, drop_path_rate=0.3),
    "vmamba_base": dict(RELEASED, depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0, drop_path_rate=0.6),
    # 28x28 Fashion-MNIST on a 2-core CPU: a 2x2 "v1" stem gives a 14x14 first-stage grid (a "v2"
    # stem cannot reach stride 2 with a symmetric pad), then 7x7 and 4x4.
    "vmamba_mini": dict(
        RELEASED, depths=(2, 2, 2), dims=32, ssm_ratio=1.0, patch_size=2, patchembed_version="v1", drop_path_rate=0.0
    ),
}
for _name, _kwargs in VARIANTS.items():
    register(_name, VMamba, **_kwargs)
