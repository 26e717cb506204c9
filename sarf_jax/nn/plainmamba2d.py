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

The four scans run as one `sarf_jax.ops.ordered_selective_scan` (group k = scan k, whose B carries
its own direction offsets); the arithmetic is that of four separate calls. With the GPU kernel the
zig-zag orders are read through an index table inside it (see that module).

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

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from sarf_jax.nn import scan_orders
from sarf_jax.nn.checks import check_positive_ints
from sarf_jax.nn.conv import DepthwiseConv2d
from sarf_jax.nn.initializers import torch_default
from sarf_jax.nn.ssm_config import SSMConfig
from sarf_jax.ops.ordered_scan import ordered_selective_scan


class PlainMamba2D(nnx.Module):
    """PlainMamba's mixer on (batch, H, W, d_model) grids of any H, W.

    Args:
      d_model: width of the input and output.
      ssm: the SSM's sizes, initialisation and scan implementation (default `SSM_DEFAULTS`, the
        official constructor's: d_state 16, expand 2, a 7x7 conv (`conv_size`) with bias, no
        in/out_proj bias; the released models use bias=True). d_conv must be odd.
      init_layer_scale: if not None, the output is multiplied by a learned `gamma` (d_model,)
        initialised to this value.
      dtype: compute dtype of the projections and the convolution (None: the input's).
        Parameters are float32; the scan always runs in float32.
      **ssm_fields: `SSMConfig` fields that replace those of `ssm`.
    """

    SSM_DEFAULTS = SSMConfig(d_conv=7)

    def __init__(
        self,
        d_model: int,
        *,
        ssm: SSMConfig | None = None,
        init_layer_scale: float | None = None,
        dtype=None,
        rngs: nnx.Rngs,
        **ssm_fields,
    ):
        check_positive_ints("PlainMamba2D", d_model=d_model)
        self.ssm = ssm = SSMConfig.merge("PlainMamba2D", self.SSM_DEFAULTS, ssm, ssm_fields)
        ssm.check_odd_conv("PlainMamba2D")

        self.d_model, self.d_state = d_model, ssm.d_state
        self.d_inner = d_inner = ssm.d_inner(d_model)
        self.dt_rank = dt_rank = ssm.rank(d_model)
        self.dtype = dtype

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

        self.in_proj = linear(d_model, 2 * d_inner, ssm.bias)
        self.conv2d = DepthwiseConv2d(d_inner, ssm.d_conv, use_bias=ssm.conv_bias, dtype=dtype, rngs=rngs)
        self.x_proj = linear(d_inner, dt_rank + 2 * ssm.d_state, False)
        self.dt_proj = linear(dt_rank, d_inner, True, kernel_init=ssm.dt_kernel_init(dt_rank))
        self.dt_proj.bias = nnx.Param(ssm.dt_bias(rngs.params(), (d_inner,)))
        self.A_log = nnx.Param(ssm.A_log(d_inner))
        self.D = nnx.Param(jnp.ones((d_inner,), jnp.float32))
        self.out_proj = linear(d_inner, d_model, ssm.bias)
        self.direction_Bs = nnx.Param(
            0.02 * jax.random.truncated_normal(rngs.params(), -100.0, 100.0, (5, ssm.d_state))
        )
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
        # B of step t: the raster-t token's B plus the offset of scan k's move at step t.
        B = B[:, :, None, :] + self.direction_Bs[...][scans.directions.T].astype(B.dtype)
        tile = lambda t: jnp.tile(t, k)  # (..., channels) -> (..., k * channels), scan-major
        y = ordered_selective_scan(  # u read in each zig-zag order, the rest by raster step; summed
            x,
            dt,
            jnp.tile(-jnp.exp(self.A_log[...]), (k, 1)),
            B,
            C,
            tile(self.D[...]),
            tile(self.dt_proj.bias[...]),  # ... and again here
            scans.orders,
            **self.ssm.scan_options(),
        )
        out = rearrange(self.out_proj(y * jax.nn.silu(z)), "b (h w) c -> b h w c", h=h, w=w)
        return out if self.gamma is None else out * self.gamma[...].astype(out.dtype)
