"""VMamba's building blocks (MzeroMiko/VMamba, classification/models/vmamba.py), channels-last:
the stem (`PatchEmbed`), the block (`VSSBlock`), a stage of blocks with its `Downsample`, and the
`Classifier`; `sarf_jax.models.vmamba.VMamba` assembles them. Versions and layouts are described
in that module's docstring.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sarf_jax.nn.common import DropPath, Mlp, gelu
from sarf_jax.nn.conv import torch_conv2d
from sarf_jax.nn.initializers import trunc_normal
from sarf_jax.nn.norm import LayerNorm
from sarf_jax.nn.ss2d import SS2D
from sarf_jax.nn.ssm_config import SSMConfig

PATCHEMBED_VERSIONS = ("v1", "v2")
DOWNSAMPLE_VERSIONS = ("v1", "v2", "v3")
LINEAR_INIT = trunc_normal(0.02)  # VSSM._init_weights: every Linear (biases zero)


def layer_norm(features: int, rngs: nnx.Rngs) -> LayerNorm:
    """LayerNorm as torch's: epsilon 1e-5, exact two-pass variance (closed-form backward)."""
    return LayerNorm(features, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


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
            self.conv1 = torch_conv2d(in_chans, embed_dim, patch_size, stride=patch_size, dtype=dtype, rngs=rngs)
            self.norm1 = layer_norm(embed_dim, rngs) if patch_norm else None
        else:
            stride = patch_size // 2
            self.geometry = [(stride + 1, stride, 1)] * 2
            self.conv1 = torch_conv2d(
                in_chans, embed_dim // 2, stride + 1, stride=stride, padding=1, dtype=dtype, rngs=rngs
            )
            self.norm1 = layer_norm(embed_dim // 2, rngs) if patch_norm else None
            self.conv2 = torch_conv2d(
                embed_dim // 2, embed_dim, stride + 1, stride=stride, padding=1, dtype=dtype, rngs=rngs
            )
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
            x = self.conv2(gelu(x))
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
            self.conv = torch_conv2d(dim, out_dim, kernel, stride=2, padding=padding, dtype=dtype, rngs=rngs)
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

    def __init__(
        self, dim: int, *, drop_path: float, mlp_ratio: float, ssm: SSMConfig, forward_type: str, dtype, rngs: nnx.Rngs
    ):
        self.norm = layer_norm(dim, rngs)
        self.op = SS2D(dim, ssm=ssm, forward_type=forward_type, proj_init=LINEAR_INIT, dtype=dtype, rngs=rngs)
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

    def __call__(self, x: jax.Array, *, train: bool = False, reduce_pair=None, run_mixer=None) -> jax.Array:
        """`reduce_pair(x, y)` shrinks the block input and the SS2D branch with one plan before they are
        added, so the MLP runs on the reduced grid (STORM's placement); `run_mixer(branch, x)` replaces
        `branch(x)` (QuarterMap)."""
        y = self.mixer_branch(x) if run_mixer is None else run_mixer(self.mixer_branch, x)
        if reduce_pair is not None:
            x, y = reduce_pair(x, y)
        x = x + self.drop_path(y, deterministic=not train)
        return self.mlp_branch(x, train=train)


class Stage(nnx.Module):
    """blocks, then the downsample to the next stage (absent in the last stage)."""

    def __init__(self, blocks: list[VSSBlock], downsample: Downsample | None):
        self.blocks = nnx.List(blocks)
        self.downsample = downsample

    def run_blocks(self, x: jax.Array, *, train: bool = False, reduce_pair=None, run_mixer=None) -> jax.Array:
        """The blocks alone (the stage's output for dense heads); `reduce_pair` / `run_mixer`: one per block
        (or None), see VSSBlock."""
        for i, block in enumerate(self.blocks):
            x = block(x, train=train, reduce_pair=reduce_pair and reduce_pair[i], run_mixer=run_mixer)
        return x

    def __call__(self, x: jax.Array, *, train: bool = False, reduce_pair=None, run_mixer=None) -> jax.Array:
        x = self.run_blocks(x, train=train, reduce_pair=reduce_pair, run_mixer=run_mixer)
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
