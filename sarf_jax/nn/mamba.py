"""The Mamba-1 mixer as a Flax NNX module, one-directional or Vim's bidirectional "v2".

Order of operations (mamba_ssm/modules/mamba_simple.py, `Mamba.forward`):
in_proj -> (x | z) -> causal depthwise conv1d -> SiLU -> x_proj -> (dt | B | C) ->
delta = dt @ dt_proj.W (its bias is the scan's delta_bias, with softplus) ->
selective scan with D skip and silu(z) gating -> out_proj.

`bidirectional="v2"` is Vim's layer (hustvl/Vim, mamba-1p1p1/mamba_ssm/modules/mamba_simple.py,
bimamba_type "v2"): in_proj, z and out_proj are shared; the backward branch has its own conv1d,
x_proj, dt_proj, A and D and runs on the flipped sequence (its conv is therefore anti-causal in
the original order); the output is out_proj(0.5 * (y_forward + flip(y_backward))), both branches
gated by the same z. Vim's released models all divide by 2 (`if_divide_out=True`).

Parameter names map one-to-one onto the official state-dict keys:

    official key (PyTorch)          here (Flax NNX)            layout change
    in_proj.weight  (2E, D)         in_proj.kernel  (D, 2E)    transpose
    in_proj.bias                    in_proj.bias               (only with bias=True)
    conv1d.weight   (E, 1, K)       conv1d.kernel   (K, 1, E)  transpose(2, 1, 0)
    conv1d.bias     (E,)            conv1d.bias     (E,)
    x_proj.weight   (R+2N, E)       x_proj.kernel   (E, R+2N)  transpose; columns dt | B | C
    dt_proj.weight  (E, R)          dt_proj.kernel  (R, E)     transpose
    dt_proj.bias    (E,)            dt_proj.bias    (E,)
    A_log           (E, N)          A_log           (E, N)
    D               (E,)            D               (E,)
    out_proj.weight (D, E)          out_proj.kernel (E, D)     transpose
    conv1d_b.*, x_proj_b.*, dt_proj_b.*, A_b_log, D_b: the same, for the backward branch (v2).

E = int(expand * d_model) (d_inner), R = dt_rank, N = d_state, K = d_conv (fields of `SSMConfig`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sarf_jax.nn.checks import check_positive_ints
from sarf_jax.nn.conv import CausalDepthwiseConv1d
from sarf_jax.nn.initializers import torch_default
from sarf_jax.nn.ssm_config import SSMConfig
from sarf_jax.ops import selective_scan

BIDIRECTIONAL = (None, "v2")


class Mamba(nnx.Module):
    """Mamba-1 mixer on (batch, length, d_model) sequences.

    Args:
      d_model: width of the input and output.
      ssm: the SSM's sizes, initialisation and scan implementation (default `SSM_DEFAULTS`,
        mamba_ssm's: d_state 16, d_conv 4, expand 2, conv_bias, no in/out_proj bias).
      bidirectional: None, or "v2" for Vim's bidirectional layer.
      dtype: compute dtype of the projections and the convolution (None: the input's).
        Parameters are float32; the scan always runs in float32.
      **ssm_fields: `SSMConfig` fields that replace those of `ssm` (e.g. d_state=8).
    """

    SSM_DEFAULTS = SSMConfig()

    def __init__(
        self,
        d_model: int,
        *,
        ssm: SSMConfig | None = None,
        bidirectional: str | None = None,
        dtype=None,
        rngs: nnx.Rngs,
        **ssm_fields,
    ):
        check_positive_ints("Mamba", d_model=d_model)
        self.ssm = ssm = SSMConfig.merge("Mamba", self.SSM_DEFAULTS, ssm, ssm_fields)
        if bidirectional not in BIDIRECTIONAL:
            raise ValueError(f"Mamba: bidirectional must be one of {BIDIRECTIONAL}, got {bidirectional!r}")

        self.d_model, self.d_state = d_model, ssm.d_state
        self.d_inner = d_inner = ssm.d_inner(d_model)
        self.dt_rank = dt_rank = ssm.rank(d_model)
        self.bidirectional = bidirectional
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

        def branch():
            """conv1d, x_proj, dt_proj, A_log, D of one scan direction."""
            conv1d = CausalDepthwiseConv1d(d_inner, ssm.d_conv, use_bias=ssm.conv_bias, dtype=dtype, rngs=rngs)
            x_proj = linear(d_inner, dt_rank + 2 * ssm.d_state, use_bias=False)
            dt_proj = linear(dt_rank, d_inner, use_bias=True, kernel_init=ssm.dt_kernel_init(dt_rank))
            dt_proj.bias = nnx.Param(ssm.dt_bias(rngs.params(), (d_inner,)))
            return conv1d, x_proj, dt_proj, nnx.Param(ssm.A_log(d_inner)), nnx.Param(jnp.ones((d_inner,), jnp.float32))

        self.in_proj = linear(d_model, 2 * d_inner, use_bias=ssm.bias)
        self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D = branch()
        if bidirectional == "v2":
            self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b = branch()
        self.out_proj = linear(d_inner, d_model, use_bias=ssm.bias)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"Mamba: input must have shape (batch, length, d_model={self.d_model}), got {x.shape}")
        xz = self.in_proj(x)
        x, z = jnp.split(xz, 2, axis=-1)
        y = self._scan_branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        if self.bidirectional == "v2":
            flip = lambda t: jnp.flip(t, axis=1)
            y_backward = self._scan_branch(
                flip(x), flip(z), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b
            )
            y = 0.5 * (y + flip(y_backward))
        return self.out_proj(y)

    def _scan_branch(self, x, z, conv1d, x_proj, dt_proj, A_log, D):
        """One direction: causal conv -> SiLU -> (dt | B | C) -> selective scan gated by z."""
        x = jax.nn.silu(conv1d(x))
        dt, B, C = jnp.split(x_proj(x), [self.dt_rank, self.dt_rank + self.d_state], axis=-1)
        delta = dt @ dt_proj.kernel[...].astype(dt.dtype)
        return selective_scan(
            x,
            delta,
            -jnp.exp(A_log[...]),
            B,
            C,
            D[...],
            z=z,
            delta_bias=dt_proj.bias[...],
            delta_softplus=True,
            **self.ssm.scan_options(),
        )
