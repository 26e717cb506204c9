"""One configuration for the selective-state-space part of every mixer (`Mamba`, `SS2D`,
`PlainMamba2D`): sizes, the initialisation of Δ, A and D, the convolution, and the scan
implementation, validated here once.

All three official mixers initialise the SSM the same way (mamba_ssm's `Mamba.__init__`, which
VMamba's `mamba_init` and PlainMamba's `PlainMamba2D.__init__` repeat):

    d_inner  = int(expand * d_model)           dt_rank = ceil(d_model / 16) when "auto"
    dt_proj.weight ~ U(-s, s) ("random") or s ("constant"), s = dt_scale / sqrt(dt_rank)
    dt_proj.bias   = softplus⁻¹(max(exp(U(log dt_min, log dt_max)), dt_init_floor))
    A_log[c, n]    = log(n + 1)                D = 1

The mixers differ only in their defaults (`Mamba.SSM_DEFAULTS`, `SS2D.SSM_DEFAULTS`,
`PlainMamba2D.SSM_DEFAULTS`: each the official constructor's) and in what surrounds the scan.
The backbones map their official keyword arguments (e.g. VSSM's `ssm_ratio`, PlainMamba's
`conv_size`) onto one `SSMConfig` that all their blocks share (`model.ssm`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from sarf_jax.nn.checks import check_bools, is_int, is_real
from sarf_jax.nn.initializers import uniform
from sarf_jax.ops.selective_scan import IMPLS

DT_INITS = ("random", "constant")


@dataclasses.dataclass(frozen=True)
class SSMConfig:
    """Hyper-parameters of a selective SSM; the defaults are mamba_ssm's `Mamba`.

    Attributes:
      d_state: state size N.
      expand: d_inner = int(expand * d_model) (VMamba's `ssm_ratio`; may be fractional).
      dt_rank: rank of the Δ projection, or "auto" for ceil(d_model / 16).
      dt_min, dt_max, dt_init_floor: Δ's initial range, through dt_proj's bias.
      dt_init, dt_scale: dt_proj's weight, "random" U(-s, s) or "constant" s, s = dt_scale / sqrt(dt_rank).
      d_conv: kernel size of the depthwise convolution before the scan (PlainMamba's `conv_size`).
      conv_bias: bias on that convolution.
      bias: bias on in_proj and out_proj.
      scan_impl, chunk_size, interpret: passed to `sarf_jax.ops.selective_scan` (impl, chunk_size,
        interpret: False lowers the Pallas kernels for their platform even on a CPU host).
    """

    d_state: int = 16
    expand: float = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    d_conv: int = 4
    conv_bias: bool = True
    bias: bool = False
    scan_impl: str = "auto"
    chunk_size: int | None = None
    interpret: bool | None = None

    def __post_init__(self):
        for name in ("d_state", "d_conv"):
            self._require(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a positive int")
        self._require(is_real(self.expand) and self.expand > 0, "expand", "a number > 0")
        self._require(
            self.dt_rank == "auto" or (is_int(self.dt_rank) and self.dt_rank >= 1),
            "dt_rank",
            "'auto' or a positive int",
        )
        if not (is_real(self.dt_min) and is_real(self.dt_max) and 0 < self.dt_min <= self.dt_max):
            raise ValueError(f"SSMConfig: need 0 < dt_min <= dt_max, got dt_min={self.dt_min}, dt_max={self.dt_max}")
        self._require(self.dt_init in DT_INITS, "dt_init", f"one of {DT_INITS}")
        self._require(is_real(self.dt_scale) and self.dt_scale > 0, "dt_scale", "a number > 0")
        self._require(is_real(self.dt_init_floor) and self.dt_init_floor >= 0, "dt_init_floor", "a number >= 0")
        check_bools("SSMConfig", conv_bias=self.conv_bias, bias=self.bias)
        # the name only: resolving "auto" would ask for the backend, which an import must not do
        self._require(self.scan_impl in IMPLS, "scan_impl", f"one of {IMPLS}")
        self._require(
            self.chunk_size is None or (is_int(self.chunk_size) and self.chunk_size >= 1),
            "chunk_size",
            "None or a positive int",
        )
        self._require(self.interpret is None or isinstance(self.interpret, bool), "interpret", "None, True or False")

    def _require(self, condition: bool, name: str, valid: str) -> None:
        if not condition:
            raise ValueError(f"SSMConfig: {name} must be {valid}, got {getattr(self, name)!r}")

    @classmethod
    def merge(cls, owner: str, defaults: SSMConfig, ssm: SSMConfig | None, fields: dict) -> SSMConfig:
        """`ssm` (or `defaults`) with `fields` replaced: how a mixer takes `ssm=` and/or loose
        keyword arguments. An unknown field name is a ValueError that lists the valid ones."""
        if ssm is not None and not isinstance(ssm, SSMConfig):
            raise ValueError(f"{owner}: ssm must be an SSMConfig or None, got {type(ssm).__name__}")
        valid = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(valid))
        if unknown:
            raise ValueError(f"{owner}: unknown SSM arguments {unknown}; valid: {valid}")
        return dataclasses.replace(ssm or defaults, **fields)

    def check_odd_conv(self, owner: str, minimum: int = 1) -> None:
        """2-D mixers pad their convolution 'same', which needs an odd kernel."""
        if self.d_conv % 2 == 0 or self.d_conv < minimum:
            raise ValueError(f"{owner}: d_conv must be an odd int >= {minimum}, got {self.d_conv}")

    def d_inner(self, d_model: int) -> int:
        """Channels of the scan for a mixer of width d_model."""
        d_inner = int(self.expand * d_model)
        if d_inner < 1:
            raise ValueError(
                f"SSMConfig: expand must make int(expand * d_model) >= 1, got expand={self.expand!r}, d_model={d_model}"
            )
        return d_inner

    def rank(self, d_model: int) -> int:
        """dt_rank with "auto" resolved for a mixer of width d_model."""
        return math.ceil(d_model / 16) if self.dt_rank == "auto" else self.dt_rank

    def dt_kernel_init(self, rank: int):
        """Initialiser of dt_proj's weight (any layout: the value does not depend on it)."""
        std = self.dt_scale * rank**-0.5
        return uniform(std) if self.dt_init == "random" else nnx.initializers.constant(std)

    def dt_bias(self, key: jax.Array, shape) -> jax.Array:
        """dt_proj's bias: softplus of it is log-uniform in [dt_min, dt_max], floored."""
        log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(self.dt_min), math.log(self.dt_max))
        dt = jnp.maximum(jnp.exp(log_dt), self.dt_init_floor)
        return dt + jnp.log(-jnp.expm1(-dt))  # inverse of softplus

    def A_log(self, channels: int) -> jax.Array:
        """(channels, d_state) log(1..N): the S4D-real initialisation of A = -exp(A_log)."""
        return jnp.log(jnp.broadcast_to(jnp.arange(1, self.d_state + 1, dtype=jnp.float32), (channels, self.d_state)))

    def scan_options(self) -> dict:
        """Keyword arguments for `sarf_jax.ops.selective_scan`."""
        return dict(impl=self.scan_impl, chunk_size=self.chunk_size, interpret=self.interpret)
