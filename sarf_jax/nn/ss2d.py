"""VMamba's 2-D selective scan (SS2D) as a Flax NNX module on (batch, H, W, channels) grids.

Order of operations (MzeroMiko/VMamba classification/models/vmamba.py, `SS2Dv2.forwardv2` and
`forward_corev2`; `SS2Dv0.forwardv0` for "v0"):

    in_proj -> [x | z] -> depthwise conv2d -> SiLU -> cross_scan into K = 4 sequences
    -> per direction k: x_proj_weight[k] -> (dt | B | C), delta = dt_projs_weight[k] @ dt
    -> one selective scan over the K·d_inner channels, B/C grouped by direction,
       delta_bias = dt_projs_bias, softplus, D skip = Ds
    -> cross_merge (undo each order, sum) -> out_norm (LayerNorm) -> [· SiLU(z)] -> out_proj

forward_type
  "v05_noz": the released v2/v3 models (VMamba-T/S/B): no z branch (in_proj makes d_inner
             channels), typically d_state 1 and a 3x3 depthwise conv without bias.
  "v0":      the original SS2D (Vanilla-VMamba): in_proj makes x and z, the output is
             LayerNorm(y) · SiLU(z). (The official SS2Dv0 always uses a 3x3 conv with bias;
             sarf_jax.convert.vmamba passes those values for it.)

The four directions and their merge are sarf_jax.ops.cross_scan's: k=0 row-major, k=1
column-major, k=2 reversed row-major, k=3 reversed column-major, any H, W (odd included). With
the GPU kernel the cross-scan is fused into it (see that module).

Parameters keep the official names; K-stacked tensors hold direction k at slice k:

    official key (PyTorch)               here (Flax NNX)                   layout change
    in_proj.weight   (E or 2E, C)        in_proj.kernel   (C, E or 2E)     transpose
    conv2d.weight    (E, 1, k, k)        conv2d.kernel    (k, k, 1, E)     as any Conv2d
    conv2d.bias      (E,)                conv2d.bias                       (when conv_bias)
    x_proj_weight    (K, R+2N, E)        x_proj_weight    (K, R+2N, E)     - ; rows dt | B | C
    dt_projs_weight  (K, E, R)           dt_projs_weight  (K, E, R)        -
    dt_projs_bias    (K, E)              dt_projs_bias    (K, E)           -
    A_logs           (K·E, N)            A_logs           (K·E, N)         -
    Ds               (K·E,)              Ds               (K·E,)           -
    out_norm.weight/bias (E,)            out_norm.scale/bias               -
    out_proj.weight  (C, E)              out_proj.kernel  (E, C)           transpose

C = d_model, E = d_inner = int(expand·C) (VSSM's ssm_ratio), R = dt_rank, N = d_state. The official in_proj /
out_proj are Linear2d (1x1 convolutions on NCHW) when norm_layer is "ln2d" and nn.Linear
otherwise; both store (out, in) and both are a Dense layer on channels-last grids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sarf_jax.nn.checks import check_positive_ints
from sarf_jax.nn.conv import DepthwiseConv2d
from sarf_jax.nn.initializers import torch_default
from sarf_jax.nn.norm import LayerNorm
from sarf_jax.nn.ssm_config import SSMConfig
from sarf_jax.ops.cross_scan import DIRECTIONS, cross_selective_scan

FORWARD_TYPES = ("v05_noz", "v0")


class SS2D(nnx.Module):
    """VMamba's SS2D mixer on (batch, H, W, d_model) grids of any H, W.

    Args:
      d_model: channels C of the input and output.
      ssm: the SSM's sizes, initialisation and scan implementation (default `SSM_DEFAULTS`, the
        official SS2D's: d_state 1, expand (VMamba's ssm_ratio) 1, a 3x3 conv without bias, no
        in/out_proj bias). d_conv must be odd; bias must be False (the official module has none).
      forward_type: "v05_noz" or "v0" (see the module docstring).
      proj_init: initialiser of the in_proj / out_proj kernels (default PyTorch's Linear init;
        VSSM re-initialises them with trunc_normal(0.02)).
      dtype: compute dtype of projections and conv (None: the input's). Parameters are float32;
        the scan takes its inputs in that dtype and computes in float32 (selective_scan's
        contract); its output, in that dtype, is merged and normalised (out_norm) in float32.
      **ssm_fields: `SSMConfig` fields that replace those of `ssm`.

    Initialised like the official module on its own (mamba_init "v0", see `SSMConfig`; PyTorch
    defaults elsewhere).
    """

    SSM_DEFAULTS = SSMConfig(d_state=1, expand=1.0, d_conv=3, conv_bias=False)

    def __init__(
        self,
        d_model: int,
        *,
        ssm: SSMConfig | None = None,
        forward_type: str = "v05_noz",
        proj_init=None,
        dtype=None,
        rngs: nnx.Rngs,
        **ssm_fields,
    ):
        check_positive_ints("SS2D", d_model=d_model)
        self.ssm = ssm = SSMConfig.merge("SS2D", self.SSM_DEFAULTS, ssm, ssm_fields)
        if forward_type not in FORWARD_TYPES:
            raise ValueError(f"SS2D: forward_type must be one of {FORWARD_TYPES}, got {forward_type!r}")
        ssm.check_odd_conv("SS2D", minimum=3)
        if ssm.bias:
            raise ValueError("SS2D: ssm.bias must be False (the official in_proj / out_proj have no bias)")

        self.d_model, self.d_state = d_model, ssm.d_state
        self.d_inner = d_inner = ssm.d_inner(d_model)
        self.dt_rank = dt_rank = ssm.rank(d_model)
        self.forward_type = forward_type
        self.gated = forward_type == "v0"
        self.dtype = dtype

        def linear(fan_in, fan_out):
            return nnx.Linear(
                fan_in,
                fan_out,
                use_bias=False,
                dtype=dtype,
                param_dtype=jnp.float32,
                kernel_init=proj_init or torch_default(fan_in),
                rngs=rngs,
            )

        K = DIRECTIONS
        self.in_proj = linear(d_model, 2 * d_inner if self.gated else d_inner)
        self.conv2d = DepthwiseConv2d(d_inner, ssm.d_conv, use_bias=ssm.conv_bias, dtype=dtype, rngs=rngs)
        self.x_proj_weight = nnx.Param(torch_default(d_inner)(rngs.params(), (K, dt_rank + 2 * ssm.d_state, d_inner)))
        self.dt_projs_weight = nnx.Param(ssm.dt_kernel_init(dt_rank)(rngs.params(), (K, d_inner, dt_rank)))
        self.dt_projs_bias = nnx.Param(ssm.dt_bias(rngs.params(), (K, d_inner)))
        self.A_logs = nnx.Param(ssm.A_log(K * d_inner))
        self.Ds = nnx.Param(jnp.ones((K * d_inner,), jnp.float32))
        self.out_norm = LayerNorm(d_inner, epsilon=1e-5, use_fast_variance=False, param_dtype=jnp.float32, rngs=rngs)
        self.out_proj = linear(d_inner, d_model)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.d_model:
            raise ValueError(f"SS2D: input must have shape (batch, H, W, d_model={self.d_model}), got {x.shape}")
        x = self.in_proj(x)
        if self.gated:
            x, z = jnp.split(x, 2, axis=-1)
        y = self.out_norm(self.scan(jax.nn.silu(self.conv2d(x))))
        if self.gated:
            y = y * jax.nn.silu(z.astype(y.dtype))
        return self.out_proj(y)

    def scan(self, x: jax.Array) -> jax.Array:
        """The four-direction selective scan of a (batch, H, W, d_inner) grid, merged, float32.

        u goes to the scan in the compute dtype (not up-cast here: the scan computes in float32
        whatever it is given, and a bfloat16 u is half the bytes to read)."""
        R, N = self.dt_rank, self.d_state
        # x_proj of every direction at every grid position: one matmul over the grid instead of
        # a batched one over the 4x larger cross-scanned grid (same products).
        x_dbl = jnp.einsum("bhwd,kcd->bhwkc", x, self.x_proj_weight[...].astype(x.dtype))
        dt, B, C = jnp.split(x_dbl, [R, R + N], axis=-1)
        return cross_selective_scan(
            x,
            dt,
            self.dt_projs_weight[...].astype(dt.dtype),
            -jnp.exp(self.A_logs[...]),
            B,
            C,
            self.Ds[...],
            self.dt_projs_bias[...].reshape(-1),
            **self.ssm.scan_options(),
        )
