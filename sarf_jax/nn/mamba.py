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

E = expand * d_model (d_inner), R = dt_rank, N = d_state, K = d_conv.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from sarf_jax.nn.checks import check_positive_ints
from sarf_jax.nn.conv import CausalDepthwiseConv1d
from sarf_jax.nn.initializers import torch_default, uniform
from sarf_jax.ops import resolve_impl, selective_scan

BIDIRECTIONAL = (None, "v2")


def dt_bias_init(dt_min: float, dt_max: float, dt_init_floor: float):
    """Bias whose softplus is log-uniform in [dt_min, dt_max] (mamba_simple.py's dt_proj init)."""

    def init(key, shape, dtype=jnp.float32):
        log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(dt_min), math.log(dt_max))
        dt = jnp.maximum(jnp.exp(log_dt), dt_init_floor)
        return (dt + jnp.log(-jnp.expm1(-dt))).astype(dtype)  # inverse of softplus

    return init


class Mamba(nnx.Module):
    """Mamba-1 mixer on (batch, length, d_model) sequences.

    Args:
      d_model: width of the input and output.
      d_state: SSM state size N.
      d_conv: kernel size of the causal depthwise convolution.
      expand: d_inner = expand * d_model.
      dt_rank: rank of the delta projection; "auto" is ceil(d_model / 16).
      dt_min, dt_max, dt_init_floor, dt_scale: initialisation of dt_proj (as mamba_ssm).
      conv_bias: bias on the depthwise convolution (True in Vim and mamba_ssm).
      bias: bias on in_proj and out_proj (False in Vim and mamba_ssm).
      bidirectional: None, or "v2" for Vim's bidirectional layer.
      dtype: compute dtype of the projections and the convolution (None: the input's).
        Parameters are float32; the scan always runs in float32.
      scan_impl, chunk_size: passed to `sarf_jax.ops.selective_scan`.
    """

    def __init__(
        self,
        d_model: int,
        *,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        bidirectional: str | None = None,
        dtype=None,
        scan_impl: str = "auto",
        chunk_size: int | None = None,
        rngs: nnx.Rngs,
    ):
        check_positive_ints("Mamba", d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)
        if dt_rank == "auto":
            dt_rank = math.ceil(d_model / 16)
        check_positive_ints("Mamba", **{"dt_rank (or 'auto')": dt_rank})
        if bidirectional not in BIDIRECTIONAL:
            raise ValueError(f"Mamba: bidirectional must be one of {BIDIRECTIONAL}, got {bidirectional!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"Mamba: need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        resolve_impl(scan_impl)  # validates the name now rather than at the first call
        if chunk_size is not None:
            check_positive_ints("Mamba", chunk_size=chunk_size)

        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = d_inner = expand * d_model
        self.dt_rank = dt_rank
        self.bidirectional = bidirectional
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

        def branch():
            """conv1d, x_proj, dt_proj, A_log, D of one scan direction."""
            conv1d = CausalDepthwiseConv1d(d_inner, d_conv, use_bias=conv_bias, dtype=dtype, rngs=rngs)
            x_proj = linear(d_inner, dt_rank + 2 * d_state, use_bias=False)
            dt_proj = linear(dt_rank, d_inner, use_bias=True, kernel_init=uniform(dt_scale * dt_rank**-0.5))
            dt_proj.bias = nnx.Param(dt_bias_init(dt_min, dt_max, dt_init_floor)(rngs.params(), (d_inner,)))
            A_log = nnx.Param(
                jnp.log(jnp.broadcast_to(jnp.arange(1, d_state + 1, dtype=jnp.float32), (d_inner, d_state)))
            )
            D = nnx.Param(jnp.ones((d_inner,), jnp.float32))
            return conv1d, x_proj, dt_proj, A_log, D

        self.in_proj = linear(d_model, 2 * d_inner, use_bias=bias)
        self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D = branch()
        if bidirectional == "v2":
            self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b = branch()
        self.out_proj = linear(d_inner, d_model, use_bias=bias)

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
            impl=self.scan_impl,
            chunk_size=self.chunk_size,
        )
