"""Vim adapter for from_official: the official VisionMamba's keyword arguments -> VisionMamba here.

Only the released configuration is supported (bimamba v2, middle class token, RMSNorm with a
float32 residual, absolute position embedding, no RoPE); any other flag raises, naming it.
Our attribute tree mirrors the official one, so keys need no renaming.
"""

from __future__ import annotations

from flax import nnx

from sarf_jax.models.vim import VisionMamba

HEAD_WEIGHT = "head.weight"  # from_official reads num_classes from its rows when kwargs leave it out

# Official flags that must have these values (the released models' settings).
REQUIRED = {
    "rms_norm": True,
    "residual_in_fp32": True,
    "if_abs_pos_embed": True,
    "if_rope": False,
    "if_rope_residual": False,
    "bimamba_type": "v2",
    "if_cls_token": True,
    "if_divide_out": True,
    "use_middle_cls_token": True,
    "if_bidirectional": False,
    "use_double_cls_token": False,
    "drop_rate": 0.0,
    "norm_epsilon": 1e-5,
    "flip_img_sequences_ratio": -1,
}
# Official arguments with no effect on the function computed: fused_add_norm only picks the
# Triton kernel for the same add-then-norm; final_pool_type is bypassed by the middle class token.
NO_EFFECT = {
    "fused_add_norm",
    "final_pool_type",
    "if_devide_out",
    "device",
    "dtype",
    "ssm_cfg",
    "initializer_cfg",
    "pt_hw_seq_len",
}
PASSED_ON = {
    "img_size": "img_size",
    "patch_size": "patch_size",
    "stride": "stride",
    "embed_dim": "embed_dim",
    "depth": "depth",
    "d_state": "d_state",
    "channels": "in_chans",
    "num_classes": "num_classes",
    "drop_path_rate": "drop_path_rate",
}
DEFAULTS = {
    "img_size": 224,
    "patch_size": 16,
    "stride": 16,
    "embed_dim": 192,
    "depth": 24,
    "d_state": 16,
    "channels": 3,
    "num_classes": 1000,
    "drop_path_rate": 0.0,
}


def build(constructor_kwargs: dict, rngs: nnx.Rngs) -> VisionMamba:
    unknown = sorted(set(constructor_kwargs) - set(REQUIRED) - NO_EFFECT - set(PASSED_ON))
    if unknown:
        raise ValueError(f"vim: unsupported constructor arguments {unknown}")
    for name, required in REQUIRED.items():
        if name in constructor_kwargs and constructor_kwargs[name] != required:
            raise ValueError(
                f"vim: only {name}={required!r} (the released models' setting) is "
                f"supported, got {constructor_kwargs[name]!r}"
            )
    kwargs = {ours: constructor_kwargs.get(theirs, DEFAULTS[theirs]) for theirs, ours in PASSED_ON.items()}
    return VisionMamba(**kwargs, rngs=rngs)


def rename(key: str) -> str:
    return key
