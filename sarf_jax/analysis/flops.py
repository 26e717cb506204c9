"""FLOPs as the visual-Mamba papers count them, read off the model's jaxpr.

Convention (fvcore, as used by the official VMamba / Vim / PlainMamba FLOP tables):
- a multiply-accumulate counts 1: matrix products (dot_general) and convolutions;
- a selective scan counts 9·B·L·D·N, plus B·L·D for the D skip and B·L·D for z gating
  (state-spaces/mamba issue #110; VMamba's `flops_selective_scan_fn`);
- elementwise operations, activations, softmax and normalisation layers count 0. (fvcore charges
  LayerNorm 5 per element; that is < 1% of every model here, and the official numbers that include
  it are quoted with two digits.)

Scans and depthwise convolutions are jit regions named `selective_scan_core` (or
`selective_scan_pallas`, or `fused_scan_pallas` for VMamba's and PlainMamba's fused layouts),
`causal_depthwise_conv1d` and `depthwise_conv2d`; the counter charges them by rule instead of
looking inside.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.extend import core as jax_core


def _selective_scan_flops(invars) -> int:
    u, _, A = invars[:3]  # u: (batch, length, groups, per_group); A: (groups, per_group, state)
    elements = math.prod(u.aval.shape)
    extras = sum(1 for v in invars[5:])  # D and/or z, each one operation per element
    return 9 * elements * A.aval.shape[-1] + extras * elements


def _pallas_selective_scan_flops(invars) -> int:
    u, A = invars[:2]  # u: (batch, length, channels); A: (channels, state); then delta, B, C, bias
    elements = math.prod(u.aval.shape)
    extras = len(invars) - 6  # D and/or z
    return 9 * elements * A.aval.shape[-1] + extras * elements


def _shared_u_scan_flops(invars) -> int:
    u, A = invars[:2]  # u: (batch, length, d_inner) read by every group; A: (groups * d_inner, state); D given
    elements = math.prod(u.aval.shape[:-1]) * A.aval.shape[0]
    return 9 * elements * A.aval.shape[-1] + elements


def _causal_conv_flops(invars) -> int:
    x, kernel = invars[:2]
    return math.prod(x.aval.shape) * kernel.aval.shape[0]


def _depthwise_conv2d_flops(invars) -> int:
    x, kernel = invars[:2]  # x: (batch, H, W, channels); kernel: (k, k, 1, channels)
    return math.prod(x.aval.shape) * kernel.aval.shape[0] * kernel.aval.shape[1]


REGION_RULES = {
    "selective_scan_core": _selective_scan_flops,
    "selective_scan_pallas": _pallas_selective_scan_flops,
    "fused_scan_pallas": _shared_u_scan_flops,
    "causal_depthwise_conv1d": _causal_conv_flops,
    "depthwise_conv2d": _depthwise_conv2d_flops,
}


def _dot_general_flops(eqn) -> int:
    (contracting, _), _ = eqn.params["dimension_numbers"]
    lhs_contracting = contracting
    lhs_shape = eqn.invars[0].aval.shape
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in lhs_contracting)


def _conv_flops(eqn) -> int:
    rhs_shape = eqn.invars[1].aval.shape
    out_features = rhs_shape[eqn.params["dimension_numbers"].rhs_spec[0]]
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs_shape) // out_features


def _sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax_core.Jaxpr):
                yield item


def jaxpr_flops(jaxpr) -> int:
    """FLOPs of one evaluation of `jaxpr` under the convention above."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("jit", "pjit") and eqn.params.get("name") in REGION_RULES:
            total += REGION_RULES[eqn.params["name"]](eqn.invars)
        elif name == "dot_general":
            total += _dot_general_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "scan":
            total += eqn.params["length"] * sum(jaxpr_flops(sub) for sub in _sub_jaxprs(eqn))
        elif name in ("while", "cond"):
            raise ValueError(f"cannot count FLOPs through data-dependent `{name}`")
        else:
            total += sum(jaxpr_flops(sub) for sub in _sub_jaxprs(eqn))
    return total


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of `fn(*args, **kwargs)` (traced abstractly: nothing is computed)."""
    return jaxpr_flops(jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args).jaxpr)


def model_gflops(model, img_size: int, *, in_chans: int = 3, reduction=None) -> float:
    """GFLOPs of one NHWC image through `model` with an optional reduction spec.

    Works on abstract models too (`nnx.eval_shape(lambda: models.create(...))`), so official
    sizes can be counted without allocating their weights.
    """
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    images = jax.ShapeDtypeStruct((1, img_size, img_size, in_chans), np.float32)
    forward = lambda state, x: nnx.merge(graphdef, state)(x, reduction=reduction)
    return count_flops(forward, state, images) / 1e9


def parameter_count(model) -> int:
    """Number of trainable parameters (nnx.Param), concrete or abstract model."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
