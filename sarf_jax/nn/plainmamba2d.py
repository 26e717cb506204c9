"""PlainMamba's 2-D selective-scan mixer as a Flax NNX module on (batch, H, W, channels) grids.

Order of operations (`PlainMamba2D.forward`, ChenhongyiYang/PlainMamba,
mmcls/plain_mamba_dev/models/plain_mamba/plain_mamba_layer.py):
in_proj (with bias) -> (x | z) -> 7x7 depthwise conv2d (with bias) -> SiLU -> x_proj -> (dt | B | C)
-> dt = dt_proj(dt) including its bias -> four zig-zag selective scans sharing x_proj, dt_proj,
A and D, each adding `direction_Bs[direction id]` to B -> un-permute and sum -> * SiLU(z) ->
out_proj (with bias) [-> * gamma when init_layer_scale is set].

Two official quirks are reproduced on purpose, because the released weights were trained with
them (docs/official_code.md#plainmamba-quirks):
- only u is permuted into each scan order; dt, B, C and the direction offsets are indexed by
  the scan step in raster order, i.e. step t reads dt, B, C of the token at raster index t and
  the direction id of step t, while u is the token at order[t];
- the dt_proj bias is applied twice: inside dt_proj(dt) and again as the scan's delta_bias.

The four scans run as one grouped selective scan over 4 * d_inner channels (group k = scan k,
whose B carries its own direction offsets); the arithmetic is that of four separate calls.

Parameter names map one-to-one onto the official state-dict keys (E = d_inner, R = dt_rank,
N = d_state):

    official key (PyTorch)            here (Flax NNX)              layout change
    in_proj.weight  (2E, D), .bias    in_proj.kernel (D, 2E), .bias  transpose
    conv2d.weight   (E, 1, k, k)      conv2d.kernel  (k, k, 1, E)  (O, I, kh, kw) -> (kh, kw, I, O)
    conv2d.bias     (E,)              conv2d.bias
    x_proj.weight   (R+2N, E)         x_proj.kernel  (E, R+2N)     transpose; columns dt | B | C
    dt_proj.weight  (E, R), .bias     dt_proj.kernel (R, E), .bias transpose
    A_log (E, N), D (E,)              A_log, D                     -
    direction_Bs    (5, N)            direction_Bs                 - rows: start, right, left, up, down
    out_proj.weight (D, E), .bias     out_proj.kernel (E, D), .bias  transpose
    gamma (D,)                        gamma                        - (only with init_layer_scale)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from sarf_jax.nn import scan_orders
from sarf_jax.nn.checks import check_positive_ints
from sarf_jax.nn.conv import DepthwiseConv2d
from sarf_jax.nn.initializers import torch_default, uniform
from sarf_jax.nn.mamba import dt_bias_init
from sarf_jax.ops import resolve_impl, selective_scan

DT_INITS = ("random", "constant")


class PlainMamba2D(nnx.Module):
    """PlainMamba's mixer on (batch, H, W, d_model) grids of any H, W.

    Args (defaults are the official constructor's; the released models use bias=True):
      d_model: width of the input and output.
      d_state: SSM state size N.
      expand: d_inner = expand * d_model.
      dt_rank: rank of the delta projection; "auto" is ceil(d_model / 16).
      dt_min, dt_max, dt_init ("random" | "constant"), dt_scale, dt_init_floor: dt_proj init.
      conv_size: odd kernel size of the depthwise conv2d ('same' padding).
      conv_bias: bias on conv2d.
      bias: bias on in_proj and out_proj.
      init_layer_scale: if not None, the output is multiplied by a learned `gamma` (d_model,)
        initialised to this value.
      dtype: compute dtype of the projections and the convolution (None: the input's).
        Parameters are float32; the scan always runs in float32.
      scan_impl, chunk_size: passed to `sarf_jax.ops.selective_scan`.
    """

    def __init__(
        self,
        d_model: int,
        *,
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
        bias: bool = False,
        init_layer_scale: float | None = None,
        dtype=None,
        scan_impl: str = "auto",
        chunk_size: int | None = None,
        rngs: nnx.Rngs,
    ):
        check_positive_ints("PlainMamba2D", d_model=d_model, d_state=d_state, expand=expand, conv_size=conv_size)
        if conv_size % 2 != 1:
            raise ValueError(f"PlainMamba2D: conv_size must be odd, got {conv_size}")
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        check_positive_ints("PlainMamba2D", **{"dt_rank (or 'auto')": dt_rank})
        if dt_init not in DT_INITS:
            raise ValueError(f"PlainMamba2D: dt_init must be one of {DT_INITS}, got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"PlainMamba2D: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        resolve_impl(scan_impl)
        if chunk_size is not None:
            check_positive_ints("PlainMamba2D", chunk_size=chunk_size)

        self.d_model, self.d_state, self.dt_rank = d_model, d_state, dt_rank
        self.d_inner = d_inner = expand * d_model
        self.dtype = dtype
        self.scan_impl, self.chunk_size = scan_impl, chunk_size

        def linear(fan_in, fan_out, use_bias, kernel_init=None):
            return nnx.Linear(
                fan_in,
                fan_out,
                use_bias=use_bias,
                dtype=dtype,
                param_dtype=jnp.float32,
                kernel_init=kernel_init or torch_default(fan_in),
                bias_init=torch_default(fan_in),
                rngs=rngs,
            )

        self.in_proj = linear(d_model, 2 * d_inner, bias)
        self.conv2d = DepthwiseConv2d(d_inner, conv_size, use_bias=conv_bias, dtype=dtype, rngs=rngs)
        self.x_proj = linear(d_inner, dt_rank + 2 * d_state, False)
        dt_std = dt_scale * dt_rank**-0.5
        dt_kernel_init = uniform(dt_std) if dt_init == "random" else nnx.initializers.constant(dt_std)
        self.dt_proj = linear(dt_rank, d_inner, True, kernel_init=dt_kernel_init)
        self.dt_proj.bias = nnx.Param(dt_bias_init(dt_min, dt_max, dt_init_floor)(rngs.params(), (d_inner,)))
        self.A_log = nnx.Param(
            jnp.log(jnp.broadcast_to(jnp.arange(1, d_state + 1, dtype=jnp.float32), (d_inner, d_state)))
        )
        self.D = nnx.Param(jnp.ones((d_inner,), jnp.float32))
        self.out_proj = linear(d_inner, d_model, bias)
        self.direction_Bs = nnx.Param(0.02 * jax.random.truncated_normal(rngs.params(), -100.0, 100.0, (5, d_state)))
        self.gamma = (
            nnx.Param(jnp.full((d_model,), init_layer_scale, jnp.float32)) if init_layer_scale is not None else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"PlainMamba2D: input must have shape (batch, H, W, d_model={self.d_model}), got {x.shape}"
            )
        h, w = x.shape[1:3]
        state = self.d_state
        x, z = jnp.split(self.in_proj(x), 2, axis=-1)
        x = rearrange(jax.nn.silu(self.conv2d(x)), "b h w e -> b (h w) e")
        z = rearrange(z, "b h w e -> b (h w) e")
        dt, B, C = jnp.split(self.x_proj(x), [self.dt_rank, self.dt_rank + state], axis=-1)
        dt = self.dt_proj(dt)  # bias included here ...

        scans = scan_orders.zigzag(h, w)
        k = len(scans.orders)
        # u[:, t, k] = x at orders[k, t]: the only tensor put into scan order (official quirk).
        u = x[:, scans.orders.T]  # (batch, length, k, channels)
        # B of step t: the raster-t token's B plus the offset of scan k's move at step t.
        B = B[:, :, None, :] + self.direction_Bs[...][scans.directions.T].astype(B.dtype)
        C = jnp.broadcast_to(C[:, :, None, :], B.shape)
        tile = lambda t: jnp.tile(t, k)  # (..., channels) -> (..., k * channels), scan-major
        y = selective_scan(
            rearrange(u, "b l k e -> b l (k e)"),
            tile(dt),
            jnp.tile(-jnp.exp(self.A_log[...]), (k, 1)),
            B,
            C,
            tile(self.D[...]),
            delta_bias=tile(self.dt_proj.bias[...]),  # ... and again here
            delta_softplus=True,
            impl=self.scan_impl,
            chunk_size=self.chunk_size,
        )
        y = rearrange(y, "b l (k e) -> b l k e", k=k)
        # Back to raster order: y_raster[:, p, k] = y[:, inverses[k, p], k]; sum the scans.
        y = jnp.take_along_axis(y, scans.inverses.T[None, :, :, None], axis=1).sum(axis=2)
        out = rearrange(self.out_proj(y * jax.nn.silu(z)), "b (h w) c -> b h w c", h=h, w=w)
        return out if self.gamma is None else out * self.gamma[...].astype(out.dtype)
