"""The backbones' convolutions, in the forms XLA's CPU backend runs fastest.

Causal depthwise 1-D (Mamba) and 'same' depthwise 2-D (SS2D, PlainMamba): sums of shifted
products. XLA's grouped convolution on CPU took ~40x longer than this form for Mamba's shapes
(K = 4 taps, hundreds of channels; measured 7.8 ms vs 0.18 ms at batch 4, length 197, 384
channels), and the arithmetic is identical: y_t = bias + sum_k w_k * x_{t - (K-1) + k}, with
zeros before t=0 (PyTorch's Conv1d with padding K-1 and the first L outputs kept).

PyTorch-style dense 2-D convolutions (`torch_conv2d`): `nnx.Conv`, whose deep strided forward
passes run as a matmul over patches (`patches_conv`).
"""

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from sarf_jax.nn.initializers import torch_default


class CausalDepthwiseConv1d(nnx.Module):
    """Per-channel causal convolution over (batch, length, channels).

    Parameters have nnx.Conv's layout: kernel (K, 1, channels), bias (channels,), so PyTorch's
    Conv1d weight (channels, 1, K) converts with transpose(2, 1, 0). Initialised like PyTorch's
    Conv1d, U(-1/sqrt(K), 1/sqrt(K)).
    """

    def __init__(self, channels: int, kernel_size: int, *, use_bias: bool = True, dtype=None, rngs: nnx.Rngs):
        init = torch_default(kernel_size)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, 1, channels)))
        self.bias = nnx.Param(init(rngs.params(), (channels,))) if use_bias else None
        self.kernel_size = kernel_size
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        bias = None if self.bias is None else self.bias[...].astype(dtype)
        return causal_depthwise_conv1d(x.astype(dtype), self.kernel[...].astype(dtype), bias)


@jax.jit
def causal_depthwise_conv1d(x, kernel, bias):
    """y_t = bias + sum_k kernel[k] * x_{t-(K-1)+k}; a named region, so FLOP counters
    (sarf_jax.analysis.flops) charge it as the convolution it is: K MACs per output."""
    length, taps = x.shape[1], kernel.shape[0]
    padded = jnp.pad(x, [(0, 0), (taps - 1, 0), (0, 0)])
    y = sum(padded[:, k : k + length] * kernel[k, 0] for k in range(taps))
    return y if bias is None else y + bias


class DepthwiseConv2d(nnx.Module):
    """Per-channel 'same' 2-D convolution over (batch, H, W, channels), odd kernel, stride 1.

    Written as a sum of kernel_size² shifted products for the reason given at the top of this
    file (XLA's grouped convolution on CPU: 40 ms forward vs 1.7 ms for VMamba's 3x3 at batch 64,
    14x14, 128 channels). Parameters have nnx.Conv's layout, kernel (k, k, 1, channels), so
    PyTorch's Conv2d(groups=channels) weight (channels, 1, k, k) converts like any Conv2d.
    Zero padding of (k - 1) / 2 on every side, as PyTorch's padding=(k - 1) // 2.
    """

    def __init__(self, channels: int, kernel_size: int, *, use_bias: bool = True, dtype=None, rngs: nnx.Rngs):
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"DepthwiseConv2d: kernel_size must be a positive odd int, got {kernel_size}")
        init = torch_default(kernel_size * kernel_size)
        self.kernel = nnx.Param(init(rngs.params(), (kernel_size, kernel_size, 1, channels)))
        self.bias = nnx.Param(init(rngs.params(), (channels,))) if use_bias else None
        self.kernel_size = kernel_size
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.dtype or x.dtype
        bias = None if self.bias is None else self.bias[...].astype(dtype)
        return depthwise_conv2d(x.astype(dtype), self.kernel[...].astype(dtype), bias)


@jax.jit
def depthwise_conv2d(x, kernel, bias):
    """y[h, w] = bias + sum_ij kernel[i, j] * x[h + i - p, w + j - p], zeros outside, p = (k-1)/2;
    a named region that FLOP counters charge k² MACs per output."""
    height, width, taps = x.shape[1], x.shape[2], kernel.shape[0]
    p = (taps - 1) // 2
    padded = jnp.pad(x, [(0, 0), (p, p), (p, p), (0, 0)])
    rows = [padded[:, i : i + height] for i in range(taps)]
    y = sum(row[:, :, j : j + width] * kernel[i, j, 0] for i, row in enumerate(rows) for j in range(taps))
    return y if bias is None else y + bias


def torch_conv2d(in_features, out_features, kernel, *, stride=1, padding=0, bias=True, dtype=None, rngs):
    """PyTorch's Conv2d: its default init, explicit symmetric zero padding (Flax's 'SAME' pads
    stride-2 convolutions asymmetrically), float32 parameters; deep strided ones as a matmul over
    patches (`patches_conv`)."""
    fan_in = in_features * kernel * kernel
    return nnx.Conv(
        in_features,
        out_features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=torch_default(fan_in),
        bias_init=torch_default(fan_in),
        conv_general_dilated=patches_conv,
        rngs=rngs,
    )


NHWC = ("NHWC", "HWIO", "NHWC")
MIN_PATCH_INPUTS = 1024  # kh * kw * in_channels from which patches_conv's matmul form pays (CPU)


def _is_nhwc(lhs, rhs, dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False  # lax's default is NCHW
    as_numbers = lambda spec: lax.conv_dimension_numbers(lhs.shape, rhs.shape, spec)
    if not isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        dimension_numbers = as_numbers(dimension_numbers)
    return dimension_numbers == as_numbers(NHWC)


def patches_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, **kwargs):
    """`lax.conv_general_dilated`, with the forward pass of a strided NHWC convolution computed as
    one matmul of its input patches (kh * kw shifted strided slices side by side) with the kernel.

    XLA's CPU convolution ran VMamba-T's 3x3 stride-2 downsamplings at 49-84 GMAC/s (batch 8,
    stages 1 and 2: 1,728 and 3,456 inputs per output) where the patches' matmul, same MACs, ran
    at 104-120; at stage 0 (864 inputs per output) lax was the faster, 113 against 86
    (benchmarks/RESULTS.md). So only convolutions with at least MIN_PATCH_INPUTS inputs per output
    take this form. The backward pass is lax's (the patches' transpose, a scatter of slices, was
    slower). Everything else (stride 1, groups, dilation, other layouts, a requested output
    sharding) goes to lax unchanged.
    """
    plain = (
        kwargs.get("feature_group_count", 1) == 1
        and kwargs.get("out_sharding") is None
        and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
        and _is_nhwc(lhs, rhs, kwargs.get("dimension_numbers"))
        and not isinstance(padding, str)
    )
    if tuple(window_strides) == (1, 1) or not plain or math.prod(rhs.shape[:3]) < MIN_PATCH_INPUTS:
        return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, **kwargs)
    options = (tuple(window_strides), tuple(map(tuple, padding)), kwargs.get("precision"))
    return _strided_conv(options, lhs, rhs.astype(lhs.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _strided_conv(options, lhs, rhs):
    (sh, sw), padding, precision = options
    kh, kw, channels, out = rhs.shape
    x = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    rows, cols = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    taps = [
        x[:, i : i + sh * (rows - 1) + 1 : sh, j : j + sw * (cols - 1) + 1 : sw] for i in range(kh) for j in range(kw)
    ]
    patches = jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]  # (i, j, channel): HWIO's order
    return jnp.dot(patches, rhs.reshape(kh * kw * channels, out), precision=precision)


def _lax_conv(options, lhs, rhs):
    strides, padding, precision = options
    return lax.conv_general_dilated(lhs, rhs, strides, padding, dimension_numbers=NHWC, precision=precision)


def _strided_conv_forward(options, lhs, rhs):
    return _strided_conv(options, lhs, rhs), (lhs, rhs)


def _strided_conv_backward(options, residuals, cotangent):
    return jax.vjp(functools.partial(_lax_conv, options), *residuals)[1](cotangent)


_strided_conv.defvjp(_strided_conv_forward, _strided_conv_backward)
