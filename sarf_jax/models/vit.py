"""ViT / DeiT baseline (timm `VisionTransformer` as DeiT trains it), for comparing reducers.

Patch conv -> class token prepended -> position embedding -> pre-norm blocks (multi-head
self-attention, GELU MLP) -> LayerNorm -> head on the class token. LayerNorm eps 1e-6 and the
timm attribute names (`blocks.{i}.attn.qkv`, `mlp.fc1`, ...), so DeiT checkpoints map by name.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from sarf_jax.models.common import (
    check_feature_layers,
    check_images,
    check_positive_ints,
    check_rate,
    resize_pos_embed_with_class_token,
)
from sarf_jax.models.registry import register
from sarf_jax.nn import DropPath, LayerNorm, Mlp
from sarf_jax.reduction import placement
from sarf_jax.reduction.restore import restore_taps


def layer_norm(dim: int, dtype, rngs: nnx.Rngs) -> LayerNorm:
    return LayerNorm(dim, epsilon=1e-6, use_fast_variance=False, dtype=dtype, rngs=rngs)


def linear(fan_in: int, fan_out: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """timm ViT init: truncated normal(0.02) weights, zero biases."""
    return nnx.Linear(
        fan_in,
        fan_out,
        dtype=dtype,
        kernel_init=jax.nn.initializers.truncated_normal(0.02),
        bias_init=jax.nn.initializers.zeros,
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head self-attention with one fused qkv projection (timm layout: q | k | v, heads inner)."""

    def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = linear(dim, 3 * dim, dtype, rngs)
        self.proj = linear(dim, dim, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b l h d", three=3, h=self.num_heads)
        out = jax.nn.dot_product_attention(q, k, v)
        return self.proj(rearrange(out, "b l h d -> b l (h d)"))


class Block(nnx.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, *, dtype, rngs: nnx.Rngs):
        self.norm1 = layer_norm(dim, dtype, rngs)
        self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(dim, dtype, rngs)
        self.mlp = Mlp(
            dim,
            int(dim * mlp_ratio),
            dtype=dtype,
            rngs=rngs,
            kernel_init=jax.nn.initializers.truncated_normal(0.02),
            bias_init=jax.nn.initializers.zeros,
        )
        self.drop_path = DropPath(drop_path, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool, reduce_pair=None, run_mixer=None) -> jax.Array:
        """`reduce_pair(x, y)` shrinks the block input and the attention output with one plan before
        they are added (reduction between attention and MLP, as EViT and ToMe place it);
        `run_mixer(attn, h)` replaces `attn(h)` (QuarterMap)."""
        h = self.norm1(x)
        y = self.attn(h) if run_mixer is None else run_mixer(self.attn, h)
        if reduce_pair is not None:
            x, y = reduce_pair(x, y)
        x = x + self.drop_path(y, deterministic=not train)
        return x + self.drop_path(self.mlp(self.norm2(x)), deterministic=not train)


class PatchEmbed(nnx.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, *, dtype, rngs: nnx.Rngs):
        self.proj = nnx.Conv(
            in_chans,
            embed_dim,
            (patch_size, patch_size),
            strides=(patch_size, patch_size),
            padding="VALID",
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.proj(images)


class VisionTransformer(nnx.Module):
    """DeiT-style ViT classifier on NHWC images of `img_size` x `img_size`.

    feature_layers: the blocks whose outputs `features` returns (default: 4 evenly spaced, ending
    at the last block: 2, 5, 8, 11 of 12).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        img_size: int,
        in_chans: int = 3,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        dtype=None,
        feature_layers: Sequence[int] | None = None,
        rngs: nnx.Rngs,
    ):
        check_positive_ints(
            "VisionTransformer",
            num_classes=num_classes,
            img_size=img_size,
            in_chans=in_chans,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
        )
        if img_size % patch_size:
            raise ValueError(f"VisionTransformer: img_size ({img_size}) must be divisible by patch_size ({patch_size})")
        if embed_dim % num_heads:
            raise ValueError(f"VisionTransformer: embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        check_rate("VisionTransformer", "drop_path_rate", drop_path_rate)
        self.feature_layers = check_feature_layers("VisionTransformer", feature_layers, depth)
        self.grid = (img_size // patch_size,) * 2
        self.img_size, self.in_chans, self.dtype = img_size, in_chans, dtype
        trunc = jax.nn.initializers.truncated_normal(0.02)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(trunc(rngs.params(), (1, 1, embed_dim)))
        self.pos_embed = nnx.Param(trunc(rngs.params(), (1, self.grid[0] * self.grid[1] + 1, embed_dim)))
        rates = np.linspace(0.0, drop_path_rate, depth).tolist()
        self.blocks = nnx.List(
            [Block(embed_dim, num_heads, mlp_ratio, rates[i], dtype=dtype, rngs=rngs) for i in range(depth)]
        )
        self.norm = layer_norm(embed_dim, dtype, rngs)
        self.head = linear(embed_dim, num_classes, dtype, rngs)

    def resize_pos_embed(self, weights: nnx.State, grid: tuple[int, int]) -> nnx.State:
        """`weights` (a state like this model's) stored for patch grid `grid`, with `pos_embed` fitted
        to this model's grid as DeiT fine-tunes at another resolution: the class token's entry
        (first) unchanged, the patch entries resized with PyTorch's bicubic (align_corners=False)."""
        return resize_pos_embed_with_class_token(weights, grid, self.grid, lambda grid: 0)

    def reduction_sites(self, reduction):
        """Grid before and after every block under `reduction` (None when nothing is reduced)."""
        return placement.block_sites(reduction, (len(self.blocks),), self.grid)

    def run_blocks(self, images: jax.Array, *, reduction=None, train: bool = False, taps=None, plans=None):
        """Every block, with `reduction` inside blocks (the class token, position 0, kept aside):
        the (B, 1 + h·w, D) tokens after the last block.

        taps: a dict that receives, for every block in `feature_layers`, its output tokens
        (B, 1 + h·w, D) and their patch grid (h, w). plans: a dict that receives the plan of every
        reducing block, by block index.
        """
        sites = self.reduction_sites(reduction)
        reducer = reduction.reducer("vit") if sites else None
        check_images("VisionTransformer", images, self.img_size, self.in_chans)
        dtype = self.dtype or images.dtype
        x = self.patch_embed(images.astype(dtype))
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        # zeros_like(x): under an explicit mesh the class token takes the batch's sharding
        cls = jnp.zeros_like(x[:, :1]) + self.cls_token[...].astype(dtype)
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...].astype(dtype)
        for index, block in enumerate(self.blocks):
            reduce_pair = run_mixer = None
            if sites and reducer.method == "quartermap":
                run_mixer = functools.partial(_quartermap_sequence, hw=sites[index].in_hw)
            elif sites and sites[index].out_hw != sites[index].in_hw:
                reduce_pair = functools.partial(
                    _reduce_with_class_token, reducer, sites[index], index=index, plans=plans
                )
            x = block(x, train=train, reduce_pair=reduce_pair, run_mixer=run_mixer)
            if taps is not None and index in self.feature_layers:
                taps[index] = (x, sites[index].out_hw if sites else self.grid)
        return x

    def __call__(self, images: jax.Array, *, reduction=None, train: bool = False) -> jax.Array:
        """Logits; `reduction` (a reduction.Spec, static under jit) shrinks the patch grid inside
        blocks, the class token (position 0) kept aside."""
        return self.head(self.norm(self.run_blocks(images, reduction=reduction, train=train))[:, 0])

    def features(
        self, images: jax.Array, *, reduction=None, restore: bool = False, train: bool = False
    ) -> list[jax.Array]:
        """Maps for dense heads: for every block of `feature_layers`, (B, h, w, embed_dim).

        As mmsegmentation's ViT backbone: the block's output tokens, the class token removed;
        the last block's output through the final `norm` (as the classifier has it), the others
        without. Under `reduction` the grid is the reduced one after that block; restore=True
        maps it back onto the dense patch grid (`PositionMap`).
        """
        taps, plans = {}, ({} if restore else None)
        self.run_blocks(images, reduction=reduction, train=train, taps=taps, plans=plans)
        last = len(self.blocks) - 1
        grids = {}
        for index, (tokens, hw) in taps.items():
            tokens = self.norm(tokens) if index == last else tokens
            grids[index] = placement.split_class_token(tokens, 0, hw)[0]
        return restore_taps(grids, plans, self.grid)


def _reduce_with_class_token(reducer, site, x, y, *, index, plans=None):
    (x, cls_x), (y, cls_y) = (placement.split_class_token(t, 0, site.in_hw) for t in (x, y))
    x, y = placement.reduce_pair(reducer, site, x, y, index=index, plans=plans)
    return placement.join_class_token(x, cls_x, 0), placement.join_class_token(y, cls_y, 0)


def _quartermap_sequence(attn, tokens, *, hw):
    grid, cls = placement.split_class_token(tokens, 0, hw)
    small = placement.baselines.quartermap_downsample(grid)
    out = attn(placement.join_class_token(small, cls, 0))
    out_grid, out_cls = placement.split_class_token(out, 0, small.shape[1:3])
    return placement.join_class_token(placement.baselines.quartermap_upsample(out_grid, hw), out_cls, 0)


VARIANTS = {
    "vit_tiny": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),  # DeiT-Ti
    "vit_small": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),  # DeiT-S
    # 28x28 Fashion-MNIST: 2x2 patches give a 14x14 grid, the same token count as the *_mini SSMs.
    "vit_mini": dict(patch_size=2, embed_dim=64, depth=4, num_heads=2),
}
for _name, _kwargs in VARIANTS.items():
    register(_name, VisionTransformer, **_kwargs)
