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
import numpy as np
from flax import nnx

from sarf_jax.models.common import check_images, check_positive_ints, check_rate
from sarf_jax.models.registry import register
from sarf_jax.models.vmamba_blocks import (
    DOWNSAMPLE_VERSIONS,
    PATCHEMBED_VERSIONS,
    Classifier,
    Downsample,
    PatchEmbed,
    Stage,
    VSSBlock,
)
from sarf_jax.nn.checks import check_bools, is_int, is_real
from sarf_jax.nn.ssm_config import SSMConfig
from sarf_jax.reduction import placement
from sarf_jax.reduction.restore import PositionMap


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"VMamba: {message}")


def _check_arguments(args: dict) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate VMamba's constructor arguments (its locals()); (depths, dims), dims one per stage."""
    check_positive_ints("VMamba", **{k: args[k] for k in ("num_classes", "img_size", "in_chans", "patch_size")})
    depths, dims, patch_size = tuple(args["depths"]), args["dims"], args["patch_size"]
    _check(
        len(depths) >= 1 and all(is_int(d) and d >= 1 for d in depths),
        f"depths must be a non-empty sequence of positive ints, got {depths!r}",
    )
    dims = tuple(dims * 2**i for i in range(len(depths))) if is_int(dims) and dims >= 1 else tuple(dims)
    _check(
        len(dims) == len(depths) and all(is_int(d) and d >= 1 for d in dims),
        f"dims must be a positive int or {len(depths)} positive ints (one per stage), got {args['dims']!r}",
    )
    for name, valid in (("patchembed_version", PATCHEMBED_VERSIONS), ("downsample_version", DOWNSAMPLE_VERSIONS)):
        _check(args[name] in valid, f"{name} must be one of {valid}, got {args[name]!r}")
    _check(
        args["patchembed_version"] == "v1" or (patch_size % 2 == 0 and dims[0] % 2 == 0),
        f"patchembed_version 'v2' needs an even patch_size and dims[0], got {patch_size} and {dims[0]}",
    )
    _check(
        args["img_size"] % patch_size == 0,
        f"img_size ({args['img_size']}) must be a multiple of patch_size ({patch_size})",
    )
    _check(is_real(args["mlp_ratio"]) and args["mlp_ratio"] >= 0, f"mlp_ratio must be >= 0, got {args['mlp_ratio']!r}")
    check_rate("VMamba", "drop_path_rate", args["drop_path_rate"])
    check_bools("VMamba", out_norms=args["out_norms"])
    return depths, dims


class VMamba(nnx.Module):
    """VMamba classifier on NHWC images of img_size x img_size (the layers themselves take any
    grid); keyword arguments named as the official VSSM's.

    Args:
      num_classes, img_size, in_chans: the task (img_size must be a multiple of patch_size).
      depths: blocks per stage. dims: channels of stage 0 (doubled per stage) or one per stage.
      patch_size: overall stride of the stem.
      ssm_d_state, ssm_ratio, ssm_dt_rank, ssm_conv, ssm_conv_bias: the `SSMConfig` fields d_state,
        expand, dt_rank, d_conv, conv_bias that every SS2D shares (`self.ssm`).
      forward_type: SS2D's ("v05_noz" released, "v0" Vanilla-VMamba).
      mlp_ratio: MLP hidden width / dim; 0 drops the MLP branch (Vanilla-VMamba).
      patchembed_version, downsample_version, patch_norm: see the module docstring.
      drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
      dtype: compute dtype (None: the input's); parameters, scans and pooling are float32.
      scan_impl, chunk_size, scan_interpret: `SSMConfig`'s scan_impl, chunk_size, interpret.
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
        scan_interpret: bool | None = None,
        out_norms: bool = False,
        rngs: nnx.Rngs,
    ):
        depths, dims = _check_arguments(locals())
        self.num_classes, self.img_size, self.in_chans = num_classes, img_size, in_chans
        self.dims = dims
        self.ssm = SSMConfig(
            d_state=ssm_d_state,
            expand=ssm_ratio,
            dt_rank=ssm_dt_rank,
            d_conv=ssm_conv,
            conv_bias=ssm_conv_bias,
            scan_impl=scan_impl,
            chunk_size=chunk_size,
            interpret=scan_interpret,
        )
        self.patch_embed = PatchEmbed(
            in_chans, dims[0], patch_size, patchembed_version, patch_norm, dtype=dtype, rngs=rngs
        )
        rates = iter(np.linspace(0.0, drop_path_rate, sum(depths)).tolist())
        block = functools.partial(
            VSSBlock, mlp_ratio=mlp_ratio, ssm=self.ssm, forward_type=forward_type, dtype=dtype, rngs=rngs
        )
        self.layers = nnx.List(
            [
                Stage(
                    [block(dim, drop_path=next(rates)) for _ in range(depth)],
                    Downsample(dim, dims[i + 1], downsample_version, dtype=dtype, rngs=rngs)
                    if i + 1 < len(depths)
                    else None,
                )
                for i, (depth, dim) in enumerate(zip(depths, dims))
            ]
        )
        self.classifier = Classifier(dims[-1], num_classes, dtype=dtype, rngs=rngs)
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
        run_mixer = placement.quartermap_mixer if sites and reducer.method == "quartermap" else None
        check_images("VMamba", images, self.img_size, self.in_chans)
        x = self.patch_embed(images)
        outputs, index = [], 0
        for stage in self.layers:
            reduce_pair = None
            if sites and run_mixer is None:
                reduce_pair = [
                    functools.partial(placement.reduce_pair, reducer, sites[index + i], index=index + i, plans=plans)
                    for i in range(len(stage.blocks))
                ]
            x = stage.run_blocks(x, train=train, reduce_pair=reduce_pair, run_mixer=run_mixer)
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
# The paper's conditions on 28x28 inputs: most blocks in one stage on a 14x14 grid, where each
# of `paper_like=hybrid_*`'s sites removes one row and column (14→13→12→11→10→9, 14-17% of the
# tokens per site, as 56→52 and 12→11→…→8 do in VMamba-T at 224 px); two stages, since a third
# halving would leave grids (4x4) too small for such steps. Blocks as released (v05_noz SS2D,
# MLP ratio 4, v3 downsample).
VARIANTS["vmamba_paper_mini"] = dict(VARIANTS["vmamba_mini"], depths=(6, 2))
for _name, _kwargs in VARIANTS.items():
    register(_name, VMamba, **_kwargs)
