"""Adapter for official VMamba checkpoints (MzeroMiko/VMamba classification/models/vmamba.py).

`build` takes the keyword arguments of the official `VSSM(...)` constructor (the factories
`vmamba_tiny_s1l8` etc. and the yacs configs both end there) and returns the equivalent
sarf_jax.models.vmamba.VMamba; `rename` maps official state-dict keys to ours.
"""

from __future__ import annotations

import re

from flax import nnx

from sarf_jax.models.vmamba import VMamba

HEAD_WEIGHT = "classifier.head.weight"  # (renamed) from_official reads num_classes from its rows

# VSSM.__init__'s defaults, for keys a config leaves out.
VSSM_DEFAULTS = dict(
    patch_size=4,
    in_chans=3,
    num_classes=1000,
    depths=[2, 2, 9, 2],
    dims=[96, 192, 384, 768],
    ssm_d_state=16,
    ssm_ratio=2.0,
    ssm_dt_rank="auto",
    ssm_act_layer="silu",
    ssm_conv=3,
    ssm_conv_bias=True,
    ssm_drop_rate=0.0,
    ssm_init="v0",
    forward_type="v2",
    mlp_ratio=4.0,
    mlp_act_layer="gelu",
    mlp_drop_rate=0.0,
    gmlp=False,
    drop_path_rate=0.1,
    patch_norm=True,
    norm_layer="LN",
    downsample_version="v2",
    patchembed_version="v1",
    use_checkpoint=False,
    posembed=False,
    imgsize=224,
)

# SS2Dv2 forward types that differ only in CUDA backend, einsum vs grouped conv1d, and forced
# fp32 casts (vmamba.py FORWARD_TYPES): in float32 they compute the same function.
_V2_FORWARD_TYPES = ("v01", "v02", "v03", "v04", "v05", "v2", "v3")

# option -> values this port implements (the other values change the architecture)
_SUPPORTED = dict(
    ssm_act_layer=("silu",),
    ssm_init=("v0",),
    mlp_act_layer=("gelu",),
    gmlp=(False,),
    norm_layer=("ln", "ln2d"),
    posembed=(False,),
    patchembed_version=("v1", "v2"),
    downsample_version=("v1", "v2", "v3"),
    ssm_drop_rate=(0.0,),
    mlp_drop_rate=(0.0,),
    use_checkpoint=(False, True),  # rematerialisation only; no effect on outputs
)


def _supported_forward_types() -> list[str]:
    return ["v0", *(t + postfix for t in _V2_FORWARD_TYPES for postfix in ("", "_noz"))]


def _unsupported(name: str, value, valid) -> ValueError:
    return ValueError(f"vmamba constructor_kwargs: {name}={value!r} is not supported; supported: {list(valid)}")


def build(constructor_kwargs: dict, rngs: nnx.Rngs) -> VMamba:
    """Our VMamba for `VSSM(**constructor_kwargs)` (norm_layer "ln" or "ln2d": same weights)."""
    unknown = sorted(set(constructor_kwargs) - set(VSSM_DEFAULTS))
    if unknown:
        raise ValueError(
            f"vmamba constructor_kwargs: unknown or unsupported arguments {unknown}; known: {sorted(VSSM_DEFAULTS)}"
        )
    kw = {**VSSM_DEFAULTS, **constructor_kwargs}
    for name, valid in _SUPPORTED.items():
        value = kw[name].lower() if name in ("ssm_act_layer", "mlp_act_layer", "norm_layer") else kw[name]
        if value not in valid:
            raise _unsupported(name, kw[name], valid)
    forward_type = kw["forward_type"]
    if forward_type not in _supported_forward_types():
        raise _unsupported("forward_type", forward_type, _supported_forward_types())
    if forward_type != "v0" and (not isinstance(kw["ssm_conv"], int) or kw["ssm_conv"] < 3 or kw["ssm_conv"] % 2 == 0):
        raise _unsupported("ssm_conv", kw["ssm_conv"], ["odd ints >= 3"])
    if not kw["ssm_ratio"] > 0:
        raise _unsupported("ssm_ratio", kw["ssm_ratio"], ["> 0 (0 drops the SS2D branch)"])

    if forward_type == "v0":
        # SS2Dv0 ignores ssm_conv / ssm_conv_bias: always a 3x3 depthwise conv with bias
        ssm = dict(forward_type="v0", ssm_conv=3, ssm_conv_bias=True)
    elif forward_type.endswith("_noz"):
        ssm = dict(forward_type="v05_noz", ssm_conv=kw["ssm_conv"], ssm_conv_bias=kw["ssm_conv_bias"])
    else:  # z-gated SS2Dv2: LN(y) * SiLU(z), as v0, with the configured conv
        ssm = dict(forward_type="v0", ssm_conv=kw["ssm_conv"], ssm_conv_bias=kw["ssm_conv_bias"])
    return VMamba(
        num_classes=kw["num_classes"],
        img_size=kw["imgsize"],
        in_chans=kw["in_chans"],
        depths=kw["depths"],
        dims=kw["dims"],
        patch_size=kw["patch_size"],
        ssm_d_state=kw["ssm_d_state"],
        ssm_ratio=kw["ssm_ratio"],
        ssm_dt_rank=kw["ssm_dt_rank"],
        mlp_ratio=kw["mlp_ratio"],
        patchembed_version=kw["patchembed_version"],
        downsample_version=kw["downsample_version"],
        patch_norm=kw["patch_norm"],
        drop_path_rate=kw["drop_path_rate"],
        rngs=rngs,
        **ssm,
    )


# official key prefix -> ours; the legacy names are those VSSM._load_from_state_dict renames
_RENAMES = [
    (re.compile(r"^patch_embed\.(0|proj)\."), "patch_embed.conv1."),
    (re.compile(r"^patch_embed\.(2|norm)\."), "patch_embed.norm1."),
    (re.compile(r"^patch_embed\.5\."), "patch_embed.conv2."),
    (re.compile(r"^patch_embed\.7\."), "patch_embed.norm2."),
    (re.compile(r"^(layers\.\d+\.downsample)\.1\."), r"\1.conv."),
    (re.compile(r"^(layers\.\d+\.downsample)\.3\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.ln_1\."), r"\1.norm."),
    (re.compile(r"^(layers\.\d+\.blocks\.\d+)\.self_attention\."), r"\1.op."),
    (re.compile(r"^norm\."), "classifier.norm."),
    (re.compile(r"^head\."), "classifier.head."),
]


def rename(official_key: str) -> str:
    """Official state-dict key -> the key sarf_jax.convert.load_state_dict expects."""
    for pattern, replacement in _RENAMES:
        official_key = pattern.sub(replacement, official_key)
    return official_key
