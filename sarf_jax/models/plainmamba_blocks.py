"""PlainMamba's building blocks (ChenhongyiYang/PlainMamba, mmcls/plain_mamba_dev/models/:
plain_mamba.py, plain_mamba_layer.py, modules/patch_embed.py), channels-last: the convolutional
stem (`ConvPatchEmbed`), the layer (`PlainMambaLayer`) and mmcls's `LinearClsHead`;
`sarf_jax.models.plainmamba.PlainMamba` assembles them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sarf_jax.nn.common import DropPath, gelu
from sarf_jax.nn.conv import DepthwiseConv2d, torch_conv2d
from sarf_jax.nn.initializers import torch_default
from sarf_jax.nn.norm import LayerNorm
from sarf_jax.nn.plainmamba2d import PlainMamba2D
from sarf_jax.nn.ssm_config import SSMConfig


def batch_norm(features, *, dtype, rngs):
    """torch's BatchNorm2d: eps 1e-5, running averages with momentum 0.1, exact variance."""
    return nnx.BatchNorm(
        features, epsilon=1e-5, momentum=0.9, use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )


def layer_norm(features, epsilon, *, dtype, rngs, affine=True):
    """torch's LayerNorm (two-pass variance); nn.LayerNorm differentiates it in closed form."""
    return LayerNorm(
        features,
        epsilon=epsilon,
        use_fast_variance=False,
        use_scale=affine,
        use_bias=affine,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def conv_bn_act(sequence: nnx.List, x: jax.Array, *, train: bool) -> jax.Array:
    """Apply [conv, BatchNorm, activation] * n kept in one list (official nn.Sequential indices)."""
    for i in range(0, len(sequence), 3):
        convolution, norm, activation = sequence[i : i + 3]
        x = activation(norm(convolution(x), use_running_average=not train))
    return x


class ConvPatchEmbed(nnx.Module):
    """Convolutional stem: (B, H, W, in_chans) -> (B, H / patch, W / patch, embed_dim)."""

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        patch_size: int,
        num_convs: int,
        stem_channels: int,
        *,
        dtype,
        rngs: nnx.Rngs,
    ):
        conv = lambda i, o, k, bias=False, **kw: torch_conv2d(i, o, k, bias=bias, dtype=dtype, rngs=rngs, **kw)
        bn = lambda c: batch_norm(c, dtype=dtype, rngs=rngs)
        self.stem = nnx.List([conv(in_chans, stem_channels, 7, stride=2, padding=3), bn(stem_channels), jax.nn.relu])
        self.convs = (
            nnx.List(
                [
                    layer
                    for _ in range(num_convs)
                    for layer in (conv(stem_channels, stem_channels, 3, padding=1), bn(stem_channels), jax.nn.relu)
                ]
            )
            if num_convs
            else None
        )
        self.projection = conv(stem_channels, embed_dim, patch_size // 2, stride=patch_size // 2, bias=True)

    def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        x = conv_bn_act(self.stem, images, train=train)
        if self.convs is not None:
            x = conv_bn_act(self.convs, x, train=train)
        return self.projection(x)


class PlainMambaLayer(nnx.Module):
    """x + drop_path(mixer(norm(x))), then GELU(BN(dwconv3x3(.))) when with_dwconv."""

    def __init__(
        self,
        dim: int,
        *,
        with_dwconv: bool,
        drop_path: float,
        use_rms_norm: bool,
        ssm: SSMConfig,
        init_layer_scale: float | None,
        dtype,
        rngs: nnx.Rngs,
    ):
        if use_rms_norm:  # mamba_ssm's RMSNorm: eps 1e-5, weight only
            self.norm = nnx.RMSNorm(dim, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
        else:
            self.norm = layer_norm(dim, 1e-5, dtype=dtype, rngs=rngs)
        self.mamba = PlainMamba2D(dim, ssm=ssm, init_layer_scale=init_layer_scale, dtype=dtype, rngs=rngs)
        self.drop_path = DropPath(drop_path, rngs=rngs)
        self.dw = (
            nnx.List(
                [
                    DepthwiseConv2d(dim, 3, use_bias=False, dtype=dtype, rngs=rngs),
                    batch_norm(dim, dtype=dtype, rngs=rngs),
                    gelu,
                ]
            )
            if with_dwconv
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool = False, reduce_pair=None, run_mixer=None) -> jax.Array:
        """`reduce_pair(x, y)` shrinks the layer input and the mixer output with one plan before they
        are added, so the depthwise conv runs on the reduced grid and later layers rebuild their
        scan orders for it (STORM's placement); `run_mixer(mixer, h)` replaces `mixer(h)` (QuarterMap)."""
        h = self.norm(x)
        y = self.mamba(h) if run_mixer is None else run_mixer(self.mamba, h)
        if reduce_pair is not None:
            x, y = reduce_pair(x, y)
        x = x + self.drop_path(y, deterministic=not train)
        if self.dw is not None:
            x = conv_bn_act(self.dw, x, train=train)
        return x


class LinearClsHead(nnx.Module):
    """mmcls's LinearClsHead: one Linear named `fc`."""

    def __init__(self, dim: int, num_classes: int, *, dtype, rngs: nnx.Rngs):
        self.fc = nnx.Linear(
            dim,
            num_classes,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=torch_default(dim),
            bias_init=torch_default(dim),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(x)
