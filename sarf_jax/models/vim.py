"""Vim (Vision Mamba, hustvl/Vim vim/models_mamba.py `VisionMamba`), the released configuration.

Patch conv -> tokens; a class token inserted in the middle (index M // 2) and a learned absolute
position embedding added after it; `depth` blocks of "add -> RMSNorm -> bidirectional Mamba (v2)"
with the residual stream kept in float32; norm_f(residual + last mixer output); the head reads
the middle class token. Attribute names are the official state-dict names.

Official behaviours reproduced on purpose:
- block i adds the previous block's mixer output to the residual with drop-path rate
  `[0] + linspace(0, drop_path_rate, depth)` at index i, and the final add uses the full
  `drop_path_rate` (models_mamba.py `inter_dpr`, `drop_path` L315-333, L513);
- the released models' `final_pool_type="mean"` is never reached: the middle class token is
  returned first (models_mamba.py L522-552).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sarf_jax.models.common import (
    check_feature_layers,
    check_images,
    check_positive_ints,
    check_rate,
    resize_pos_embed_with_class_token,
)
from sarf_jax.models.registry import register
from sarf_jax.nn import DropPath, Mamba
from sarf_jax.nn.ssm_config import SSMConfig
from sarf_jax.reduction import placement
from sarf_jax.reduction.restore import restore_taps


class PatchEmbed(nnx.Module):
    """One strided convolution (Vim `PatchEmbed`, no norm); weights lecun-normal, bias zero."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, *, dtype, rngs: nnx.Rngs):
        self.proj = nnx.Conv(
            in_chans,
            embed_dim,
            (patch_size, patch_size),
            strides=(stride, stride),
            padding="VALID",
            dtype=dtype,
            kernel_init=jax.nn.initializers.lecun_normal(),
            rngs=rngs,
        )

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.proj(images)


class VimBlock(nnx.Module):
    """residual += drop_path(hidden); hidden = mixer(RMSNorm(residual)) (Vim `Block`, prenorm)."""

    def __init__(self, dim: int, *, ssm: SSMConfig, drop_path: float, dtype, rngs: nnx.Rngs):
        self.mixer = Mamba(dim, ssm=ssm, bidirectional="v2", dtype=dtype, rngs=rngs)
        self.norm = nnx.RMSNorm(dim, epsilon=1e-5, dtype=jnp.float32, rngs=rngs)
        self.drop_path = DropPath(drop_path, rngs=rngs)

    def __call__(self, hidden, residual, *, train: bool, run_mixer=None):
        """`run_mixer(mixer, h)` replaces `mixer(h)` (QuarterMap runs the mixer on a halved grid)."""
        residual = hidden if residual is None else residual + self.drop_path(hidden, deterministic=not train)
        residual = residual.astype(jnp.float32)
        normed = self.norm(residual).astype(hidden.dtype)
        return (self.mixer(normed) if run_mixer is None else run_mixer(self.mixer, normed)), residual


class VisionMamba(nnx.Module):
    """Vim classifier on NHWC images of exactly `img_size` x `img_size` (as the official model).

    d_state, scan_impl, chunk_size, scan_interpret: the `SSMConfig` every block's mixer shares
    (`self.ssm`; the rest is mamba_ssm's defaults, as in the released models; scan_interpret is its
    `interpret`).
    feature_layers: the blocks whose outputs `features` returns (default: 4 evenly spaced, ending
    at the last block; the official segmentation configs use 5, 11, 17, 23 of 24).
    """

    def __init__(
        self,
        *,
        num_classes: int,
        img_size: int,
        in_chans: int = 3,
        patch_size: int = 16,
        stride: int | None = None,
        embed_dim: int = 192,
        depth: int = 24,
        d_state: int = 16,
        drop_path_rate: float = 0.0,
        dtype=None,
        scan_impl: str = "auto",
        chunk_size: int | None = None,
        scan_interpret: bool | None = None,
        feature_layers: Sequence[int] | None = None,
        rngs: nnx.Rngs,
    ):
        stride = patch_size if stride is None else stride
        check_positive_ints(
            "VisionMamba",
            num_classes=num_classes,
            img_size=img_size,
            in_chans=in_chans,
            patch_size=patch_size,
            stride=stride,
            embed_dim=embed_dim,
            depth=depth,
        )
        if img_size < patch_size or (img_size - patch_size) % stride:
            raise ValueError(
                f"VisionMamba: img_size - patch_size must be a non-negative multiple of stride; got "
                f"img_size={img_size}, patch_size={patch_size}, stride={stride}"
            )
        check_rate("VisionMamba", "drop_path_rate", drop_path_rate)
        self.feature_layers = check_feature_layers("VisionMamba", feature_layers, depth)
        self.grid = ((img_size - patch_size) // stride + 1,) * 2
        self.num_patches = self.grid[0] * self.grid[1]
        self.img_size, self.in_chans, self.dtype = img_size, in_chans, dtype
        self.ssm = SSMConfig(d_state=d_state, scan_impl=scan_impl, chunk_size=chunk_size, interpret=scan_interpret)

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, stride, dtype=dtype, rngs=rngs)
        trunc = jax.nn.initializers.truncated_normal(0.02)
        self.cls_token = nnx.Param(trunc(rngs.params(), (1, 1, embed_dim)))
        self.pos_embed = nnx.Param(trunc(rngs.params(), (1, self.num_patches + 1, embed_dim)))
        rates = [0.0, *np.linspace(0.0, drop_path_rate, depth).tolist()]  # official inter_dpr
        self.layers = nnx.List(
            [VimBlock(embed_dim, ssm=self.ssm, drop_path=rates[i], dtype=dtype, rngs=rngs) for i in range(depth)]
        )
        for layer in self.layers:  # mamba_ssm _init_weights: prenorm residual rescale
            out_proj = layer.mixer.out_proj.kernel
            out_proj[...] = out_proj[...] / math.sqrt(depth)
        self.norm_f = nnx.RMSNorm(embed_dim, epsilon=1e-5, dtype=jnp.float32, rngs=rngs)
        self.final_drop_path = DropPath(drop_path_rate, rngs=rngs)
        self.head = nnx.Linear(
            embed_dim, num_classes, dtype=dtype, kernel_init=trunc, bias_init=jax.nn.initializers.zeros, rngs=rngs
        )

    @property
    def cls_position(self) -> int:
        return self.num_patches // 2

    def resize_pos_embed(self, weights: nnx.State, grid: tuple[int, int]) -> nnx.State:
        """`weights` (a state like this model's) stored for patch grid `grid`, with `pos_embed` fitted
        to this model's grid: the class token's entry (at h * w // 2) unchanged, moved to the new
        middle; the patch entries resized with PyTorch's bicubic (align_corners=False). (Vim's
        main.py --finetune keeps the first entry aside as DeiT does, which with the middle class
        token resizes the class token's entry among the patches; we keep the class token's own.)"""
        return resize_pos_embed_with_class_token(weights, grid, self.grid, lambda grid: grid[0] * grid[1] // 2)

    def tokens(self, images: jax.Array) -> jax.Array:
        """Patch tokens with the middle class token and position embedding: (B, M + 1, D)."""
        check_images("VisionMamba", images, self.img_size, self.in_chans)
        dtype = self.dtype or images.dtype
        x = self.patch_embed(images.astype(dtype))
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        # zeros_like(x): under an explicit mesh the class token takes the batch's sharding
        cls = jnp.zeros_like(x[:, :1]) + self.cls_token[...].astype(dtype)
        middle = self.cls_position
        x = jnp.concatenate([x[:, :middle], cls, x[:, middle:]], axis=1)
        return x + self.pos_embed[...].astype(dtype)

    def reduction_sites(self, reduction):
        """Grid before and after every block under `reduction` (None when nothing is reduced)."""
        return placement.block_sites(reduction, (len(self.layers),), self.grid)

    def run_blocks(self, images: jax.Array, *, reduction=None, train: bool = False, taps=None, plans=None):
        """Every block, with `reduction` between blocks (the middle class token taken out before
        planning and put back after): (hidden, residual, class token position) after the last.

        taps: a dict that receives, for every block in `feature_layers`, its mixer output on the
        patch grid (class token removed), (B, h, w, D). plans: a dict that receives the plan of
        every reducing block, by block index.
        """
        sites = self.reduction_sites(reduction)
        reducer = reduction.reducer("vim") if sites else None
        hidden, residual = self.tokens(images), None
        hw, position = self.grid, self.cls_position
        for index, layer in enumerate(self.layers):
            run_mixer = None
            if sites and reducer.method == "quartermap":
                run_mixer = functools.partial(_quartermap_sequence, position=position, hw=hw)
            hidden, residual = layer(hidden, residual, train=train, run_mixer=run_mixer)
            if sites and sites[index].out_hw != hw:
                x, cls_residual = placement.split_class_token(residual, position, hw)
                y, cls_hidden = placement.split_class_token(hidden, position, hw)
                x, y = placement.reduce_pair(reducer, sites[index], x, y, index=index, plans=plans)
                hw = sites[index].out_hw
                position = hw[0] * hw[1] // 2
                residual = placement.join_class_token(x, cls_residual, position)
                hidden = placement.join_class_token(y, cls_hidden, position)
            if taps is not None and index in self.feature_layers:
                taps[index] = placement.split_class_token(hidden, position, hw)[0]
        return hidden, residual, position

    def __call__(self, images: jax.Array, *, reduction=None, train: bool = False) -> jax.Array:
        """Logits; `reduction` (a reduction.Spec, static under jit) shrinks the patch grid between
        blocks with the middle class token taken out before planning and put back after."""
        hidden, residual, position = self.run_blocks(images, reduction=reduction, train=train)
        residual = residual + self.final_drop_path(hidden, deterministic=not train)
        features = self.norm_f(residual)[:, position]
        return self.head(features.astype(hidden.dtype))

    def features(
        self, images: jax.Array, *, reduction=None, restore: bool = False, train: bool = False
    ) -> list[jax.Array]:
        """Maps for dense heads: for every block of `feature_layers`, (B, h, w, embed_dim).

        As the official segmentation backbone (`VisionMambaSeg`, features from the hidden states):
        the block's mixer output (what the next block adds to the residual stream), no final norm.
        The middle class token stays in the sequence, as the classifier was trained with it (the
        official segmentation model drops it from its input), and is removed from the maps.
        Under `reduction` the grid is the reduced one after that block; restore=True maps it back
        onto the dense patch grid (`PositionMap`).
        """
        taps, plans = {}, ({} if restore else None)
        self.run_blocks(images, reduction=reduction, train=train, taps=taps, plans=plans)
        return restore_taps(taps, plans, self.grid)


def _quartermap_sequence(mixer, tokens, *, position, hw):
    """QuarterMap on a class-token sequence: the mixer sees the halved grid with the class token
    in its middle; its patch outputs are upsampled back, the class token's output kept."""
    grid, cls = placement.split_class_token(tokens, position, hw)
    small = placement.baselines.quartermap_downsample(grid)
    small_position = small.shape[1] * small.shape[2] // 2
    out = mixer(placement.join_class_token(small, cls, small_position))
    out_grid, out_cls = placement.split_class_token(out, small_position, small.shape[1:3])
    full = placement.baselines.quartermap_upsample(out_grid, hw)
    return placement.join_class_token(full, out_cls, position)


VARIANTS = {
    "vim_tiny": dict(patch_size=16, embed_dim=192, depth=24),
    "vim_small": dict(patch_size=16, embed_dim=384, depth=24),
    "vim_base": dict(patch_size=16, embed_dim=768, depth=24),
    # 28x28 Fashion-MNIST: 2x2 patches give a 14x14 grid, room for token reduction.
    "vim_mini": dict(patch_size=2, embed_dim=64, depth=4),
}
for _name, _kwargs in VARIANTS.items():
    register(_name, VisionMamba, **_kwargs)
