"""PlainMamba (Yang et al., 2024): a non-hierarchical visual Mamba with zig-zag scans.

One module tree (ChenhongyiYang/PlainMamba, mmcls/plain_mamba_dev/models/: plain_mamba.py,
plain_mamba_layer.py, modules/patch_embed.py, necks/custom_avg_pooling.py; wrapped as mmcls's
ImageClassifier with a LinearClsHead) and a table of variants:

    images (B, H, W, in_chans)
    patch_embed: stem conv7x7 s2 (no bias) + BN + ReLU, num_convs x [conv3x3 + BN + ReLU],
                 projection conv (patch/2)x(patch/2) stride patch/2 (with bias)   -> (B, h, w, D)
    + pos_embed (1, h0*w0, D), bicubic-resized when (h, w) != (h0, w0) (torch's kernel, exact)
    layers[i]:   x = x + drop_path(PlainMamba2D(LayerNorm(x)))                   (eps 1e-5)
                 then, in layers_with_dwconv only: x = GELU(BN(dwconv3x3(x)))     (no skip)
    ln1 (LayerNorm eps 1e-6) -> mean over tokens -> head.fc

Attribute names follow the official modules, so an official state dict loads by name (see
sarf_jax.convert.plainmamba for the prefixes). Grids stay (B, h, w, D) channels-last between
layers; every layer takes its grid size from its input, so layers work on any (h, w).

Images of other sizes than img_size are accepted, as officially (the position embedding is
resized). Token reduction runs inside the layers with STORM's PlainMamba placement (see
`reduction.placement`); `features` returns the outputs of `feature_layers` as grids.

Deviations from the official code:
- Input H and W must be multiples of patch_size (the official AdaptivePadding pads the stem output
  at the bottom/right otherwise); a ValueError says so.
- The stem width (64 in the official code) is the `stem_channels` argument, so that small
  variants can use a narrower stem; the official variants keep 64.
- Initialisation follows the official module constructors (PyTorch defaults, mamba's dt/A/D
  init, trunc-normal 0.02 position embedding and direction_Bs); mmcls's classifier-level
  init_cfg (trunc-normal Linear layers) is not applied.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from sarf_jax.models.common import check_feature_layers, check_positive_ints, check_rate
from sarf_jax.models.plainmamba_blocks import ConvPatchEmbed, LinearClsHead, PlainMambaLayer, layer_norm
from sarf_jax.models.registry import register
from sarf_jax.nn.checks import check_bools, check_ints_at_least, is_int
from sarf_jax.nn.pos_embed import resize_bicubic
from sarf_jax.nn.ssm_config import SSMConfig
from sarf_jax.reduction import placement
from sarf_jax.reduction.restore import restore_taps

OFFICIAL_STEM_CHANNELS = 64


def _check_arguments(args: dict) -> tuple[int, ...]:
    """Validate PlainMamba's constructor arguments (its locals()); layers_with_dwconv as a tuple."""
    sizes = ("num_classes", "img_size", "in_chans", "patch_size", "embed_dim", "depth", "stem_channels")
    check_positive_ints("PlainMamba", **{name: args[name] for name in sizes})
    check_ints_at_least("PlainMamba", 0, num_convs_patch_embed=args["num_convs_patch_embed"])
    patch_size, img_size, depth = args["patch_size"], args["img_size"], args["depth"]
    if patch_size % 2:
        raise ValueError(
            f"PlainMamba: patch_size must be even (stem stride 2 x projection stride patch_size / 2), got {patch_size}"
        )
    if img_size % patch_size:
        raise ValueError(f"PlainMamba: img_size must be a multiple of patch_size={patch_size}, got {img_size}")
    layers_with_dwconv = tuple(args["layers_with_dwconv"])
    if not all(is_int(i) and 0 <= i < depth for i in layers_with_dwconv):
        raise ValueError(
            f"PlainMamba: layers_with_dwconv must hold layer indices in [0, {depth}), got {layers_with_dwconv}"
        )
    check_rate("PlainMamba", "drop_rate", args["drop_rate"])
    check_rate("PlainMamba", "drop_path_rate", args["drop_path_rate"])
    check_bools("PlainMamba", out_norms=args["out_norms"])
    return layers_with_dwconv


class PlainMamba(nnx.Module):
    """PlainMamba classifier on NHWC images.

    Args:
      num_classes, img_size, in_chans: classifier size; img_size (square) sets the position
        embedding's grid (img_size / patch_size)^2 and must be a multiple of patch_size.
      patch_size: total stride of the patch embedding (even; 16 in the official models).
      embed_dim, depth: width D and number of layers.
      num_convs_patch_embed: 3x3 conv + BN + ReLU blocks after the stem conv.
      layers_with_dwconv: layer indices followed by a depthwise conv3x3 + BN + GELU.
      d_state, expand, dt_rank, conv_size, conv_bias, bias, dt_*: the `SSMConfig` that every
        PlainMamba2D shares (`self.ssm`; conv_size is its d_conv), named as the official mamba_cfg.
      init_layer_scale: PlainMamba2D's (a learned output scale when not None).
      use_rms_norm: RMSNorm instead of LayerNorm before the mixer.
      final_norm: apply `ln1` (LayerNorm, eps final_norm_eps) before pooling.
      with_pos_embed: learned absolute position embedding.
      stem_channels: width of the stem convolutions (64 officially).
      drop_rate: dropout after the position embedding; drop_path_rate: stochastic depth, linear
        from 0 at the first layer to drop_path_rate at the last.
      dtype: compute dtype (parameters are float32; scans run in float32; logits are float32).
      scan_impl, chunk_size, scan_interpret: `SSMConfig`'s scan_impl, chunk_size, interpret.
      feature_layers: the layers whose outputs `features` returns (default: 4 evenly spaced,
        ending at the last layer; the official segmentation configs use 5, 11, 17, 23 of 24).
      out_norms: give `features` a trainable LayerNorm (eps final_norm_eps) per feature layer
        other than the last (the official segmentation backbone's `norm_layer{i}`, initialised
        (1, 0)); classification checkpoints do not hold them, so the default uses the same norms
        without parameters, i.e. as initialised.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        img_size: int,
        in_chans: int = 3,
        patch_size: int = 16,
        embed_dim: int = 192,
        depth: int = 24,
        num_convs_patch_embed: int = 1,
        layers_with_dwconv: tuple[int, ...] = (),
        d_state: int = 16,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_size: int = 7,
        conv_bias: bool = True,
        bias: bool = True,
        init_layer_scale: float | None = None,
        use_rms_norm: bool = False,
        final_norm: bool = True,
        final_norm_eps: float = 1e-6,
        with_pos_embed: bool = True,
        stem_channels: int = OFFICIAL_STEM_CHANNELS,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        dtype=None,
        scan_impl: str = "auto",
        chunk_size: int | None = None,
        scan_interpret: bool | None = None,
        feature_layers: Sequence[int] | None = None,
        out_norms: bool = False,
        rngs: nnx.Rngs,
    ):
        layers_with_dwconv = _check_arguments(locals())
        self.feature_layers = check_feature_layers("PlainMamba", feature_layers, depth)
        self.ssm = SSMConfig(
            d_state=d_state,
            expand=expand,
            dt_rank=dt_rank,
            dt_min=dt_min,
            dt_max=dt_max,
            dt_init=dt_init,
            dt_scale=dt_scale,
            dt_init_floor=dt_init_floor,
            d_conv=conv_size,
            conv_bias=conv_bias,
            bias=bias,
            scan_impl=scan_impl,
            chunk_size=chunk_size,
            interpret=scan_interpret,
        )

        self.num_classes, self.in_chans, self.patch_size = num_classes, in_chans, patch_size
        self.grid = (img_size // patch_size, img_size // patch_size)  # of the position embedding
        self.embed_dim = embed_dim
        self.patch_embed = ConvPatchEmbed(
            in_chans, embed_dim, patch_size, num_convs_patch_embed, stem_channels, dtype=dtype, rngs=rngs
        )
        self.pos_embed = (
            nnx.Param(
                0.02
                * jax.random.truncated_normal(
                    rngs.params(), -2.0 / 0.02, 2.0 / 0.02, (1, self.grid[0] * self.grid[1], embed_dim)
                )
            )
            if with_pos_embed
            else None
        )
        self.drop_after_pos = nnx.Dropout(drop_rate, rngs=rngs if drop_rate > 0 else None)
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]
        self.layers = nnx.List(
            [
                PlainMambaLayer(
                    embed_dim,
                    with_dwconv=i in layers_with_dwconv,
                    drop_path=rates[i],
                    use_rms_norm=use_rms_norm,
                    ssm=self.ssm,
                    init_layer_scale=init_layer_scale,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(depth)
            ]
        )
        self.ln1 = layer_norm(embed_dim, final_norm_eps, dtype=dtype, rngs=rngs) if final_norm else None
        self.head = LinearClsHead(embed_dim, num_classes, dtype=dtype, rngs=rngs)
        self.out_norms = nnx.List(
            [
                layer_norm(embed_dim, final_norm_eps, dtype=dtype, rngs=rngs, affine=out_norms)
                for _ in self._intermediate_feature_layers()
            ]
        )

    def _intermediate_feature_layers(self) -> tuple[int, ...]:
        """The feature layers that get an out norm: all but the last layer (which gets `ln1`)."""
        return tuple(i for i in self.feature_layers if i != len(self.layers) - 1)

    def resize_pos_embed(self, weights: nnx.State, grid: tuple[int, int]) -> nnx.State:
        """`weights` (a state like this model's) stored for patch grid `grid`, with `pos_embed`
        resized to this model's grid once, as `embed` would at every call for images of this size
        (no class token)."""
        if tuple(grid) == self.grid or self.pos_embed is None:
            return weights
        stored = weights["pos_embed"][...].reshape(1, *grid, self.embed_dim)
        resized = resize_bicubic(stored, self.grid).reshape(1, -1, self.embed_dim)
        return nnx.State({**weights, "pos_embed": weights["pos_embed"].replace(resized)})

    def embed(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """Patch embedding plus (resized) position embedding: (B, H, W, C) -> (B, h, w, D)."""
        if images.ndim != 4 or images.shape[-1] != self.in_chans:
            raise ValueError(
                f"PlainMamba: images must have shape (batch, H, W, in_chans={self.in_chans}), got {images.shape}"
            )
        if images.shape[1] % self.patch_size or images.shape[2] % self.patch_size:
            raise ValueError(
                f"PlainMamba: image height and width must be multiples of "
                f"patch_size={self.patch_size}, got {images.shape[1:3]}"
            )
        x = self.patch_embed(images, train=train)
        if self.pos_embed is not None:
            pos_embed = self.pos_embed[...].reshape(1, *self.grid, self.embed_dim)
            x = x + resize_bicubic(pos_embed, x.shape[1:3]).astype(x.dtype)
        return self.drop_after_pos(x, deterministic=not train)

    def pool(self, x: jax.Array) -> jax.Array:
        """Final norm and token mean (the official CustomAveragePooling neck): (B, h, w, D) -> (B, D)."""
        if self.ln1 is not None:
            x = self.ln1(x)
        return x.mean(axis=(1, 2))

    def reduction_sites(self, reduction, hw=None):
        """Grid before and after every layer under `reduction` (None when nothing is reduced), for
        the patch grid `hw` (default: that of img_size)."""
        return placement.block_sites(reduction, (len(self.layers),), hw or self.grid)

    def patch_grid(self, images: jax.Array) -> tuple[int, int]:
        """The (h, w) patch grid of `images` without reduction."""
        return images.shape[1] // self.patch_size, images.shape[2] // self.patch_size

    def run_layers(self, images: jax.Array, *, reduction=None, train: bool = False, taps=None, plans=None):
        """Embedding and every layer, with `reduction` between layers: the (B, h, w, D) grid after
        the last. taps: a dict that receives the output of every layer in `feature_layers`.
        plans: a dict that receives the plan of every reducing layer, by layer index."""
        sites = self.reduction_sites(reduction, self.patch_grid(images))  # checked before tracing
        x = self.embed(images, train=train)
        reducer = reduction.reducer("plainmamba") if sites else None
        run_mixer = placement.quartermap_mixer if sites and reducer.method == "quartermap" else None
        for index, layer in enumerate(self.layers):
            reduce_pair = None
            if sites and run_mixer is None and sites[index].out_hw != sites[index].in_hw:
                reduce_pair = functools.partial(placement.reduce_pair, reducer, sites[index], index=index, plans=plans)
            x = layer(x, train=train, reduce_pair=reduce_pair, run_mixer=run_mixer)
            if taps is not None and index in self.feature_layers:
                taps[index] = x
        return x

    def __call__(self, images: jax.Array, *, reduction=None, train: bool = False) -> jax.Array:
        """Logits; `reduction` (a reduction.Spec, static under jit) shrinks the grid between layers."""
        return self.head(self.pool(self.run_layers(images, reduction=reduction, train=train))).astype(jnp.float32)

    def features(
        self, images: jax.Array, *, reduction=None, restore: bool = False, train: bool = False
    ) -> list[jax.Array]:
        """Maps for dense heads: for every layer of `feature_layers`, (B, h, w, embed_dim).

        As the official segmentation backbone (`PlainMambaSeg`): the layer's output, the last
        layer's through `ln1` (when final_norm), every other through its `out_norms` entry. Under
        `reduction` the grid is the reduced one after that layer; restore=True maps it back onto
        the dense patch grid of `images` (`PositionMap`).
        """
        taps, plans = {}, ({} if restore else None)
        self.run_layers(images, reduction=reduction, train=train, taps=taps, plans=plans)
        norms = dict(zip(self._intermediate_feature_layers(), self.out_norms))
        if self.ln1 is not None:
            norms[len(self.layers) - 1] = self.ln1
        normed = {index: norms[index](x) if index in norms else x for index, x in taps.items()}
        return restore_taps(normed, plans, self.patch_grid(images))


# Official variants (arch_zoo in plain_mamba.py). Their ImageNet training used drop_path_rate
# 0.2 (L1, L2) and 0.4 (L3) (plain_mamba_configs/plain_mamba_l*_in1k_300e.py); like every
# variant here they default to 0 and a training config sets it.
# `plainmamba_mini` is ours: 28x28 Fashion-MNIST on a 2-core CPU: 2x2 patches (stem stride 2, 1x1
# projection) give a 14x14 grid; narrow stem, 4 layers of width 48, expand 1, d_state 8 (the four
# scans over 4 x d_inner channels dominate the step time: expand 2 halved the images/s).
VARIANTS = {
    "plainmamba_l1": dict(embed_dim=192, depth=24, num_convs_patch_embed=1, layers_with_dwconv=(0,)),
    "plainmamba_l2": dict(embed_dim=384, depth=24, num_convs_patch_embed=2, layers_with_dwconv=()),
    "plainmamba_l3": dict(embed_dim=448, depth=36, num_convs_patch_embed=2, layers_with_dwconv=()),
    "plainmamba_mini": dict(
        patch_size=2,
        embed_dim=48,
        depth=4,
        expand=1,
        d_state=8,
        num_convs_patch_embed=0,
        layers_with_dwconv=(0,),
        stem_channels=32,
    ),
}
# The paper's conditions: as plainmamba_mini with 8 layers, so that `paper_like=hybrid_*` or
# `schedual_*` puts its 4-6 sites one grid row apart (14→13→…→8) as STORM's PlainMamba tables
# do on the 14x14 grid of PlainMamba-L at 224 px.
VARIANTS["plainmamba_paper_mini"] = dict(VARIANTS["plainmamba_mini"], depth=8)


for _name, _kwargs in VARIANTS.items():
    register(_name, PlainMamba, **_kwargs)
