"""PlainMamba family adapter for `from_official("plainmamba", constructor_kwargs, state_dict)`.

`constructor_kwargs` are the keyword arguments of the official backbone constructor
`PlainMamba(...)` (ChenhongyiYang/PlainMamba, mmcls/plain_mamba_dev/models/plain_mamba/
plain_mamba.py), as the fixtures record them, plus one key of the classifier: `num_classes`
(LinearClsHead's; from_official reads it from head.fc.weight when absent). `arch` ("L1", "L2",
"L3") takes the sizes from the official arch_zoo, as the official constructor does.

State dicts are mmcls ImageClassifier checkpoints: `backbone.*` and `head.fc.*` keys. Keys without
the `backbone.` prefix are accepted too. The `ema_*` buffers that the official
EMACheckpointHook registers on the classifier (L2/L3 training) are dropped.
"""

from __future__ import annotations

from flax import nnx

from sarf_jax.models.plainmamba import PlainMamba

HEAD_WEIGHT = "head.fc.weight"  # from_official reads num_classes from its rows when kwargs leave it out

# plain_mamba.py `arch_zoo`: the sizes an `arch` name stands for.
ARCH_ZOO = {
    "L1": dict(patch_size=16, embed_dims=192, num_layers=24, num_convs_patch_embed=1, layers_with_dwconv=[0]),
    "L2": dict(patch_size=16, embed_dims=384, num_layers=24, num_convs_patch_embed=2, layers_with_dwconv=[]),
    "L3": dict(patch_size=16, embed_dims=448, num_layers=36, num_convs_patch_embed=2, layers_with_dwconv=[]),
}
ARCH_MAMBA_CFG = dict(d_state=16, expand=2, conv_size=7, dt_init="random", conv_bias=True, bias=True)

# The official constructors' defaults: PlainMamba(...) (plus the head's num_classes) and
# PlainMamba2D(...), used for every key the given kwargs leave out.
BACKBONE_DEFAULTS = dict(
    num_classes=1000,
    img_size=224,
    in_channels=3,
    arch=None,
    patch_size=16,
    embed_dims=192,
    num_layers=20,
    num_convs_patch_embed=1,
    with_pos_embed=True,
    out_indices=-1,
    drop_rate=0.0,
    drop_path_rate=0.0,
    norm_cfg={"type": "LN", "eps": 1e-6},
    final_norm=True,
    interpolate_mode="bicubic",
    layer_cfgs={},
    layers_with_dwconv=[],
    init_cfg=None,
    test_cfg={},
    convert_syncbn=False,
    freeze_patch_embed=False,
)
MAMBA_DEFAULTS = dict(
    d_state=16,
    expand=2,
    dt_rank="auto",
    dt_min=0.001,
    dt_max=0.1,
    dt_init="random",
    dt_scale=1.0,
    dt_init_floor=1e-4,
    conv_size=7,
    conv_bias=True,
    bias=False,
    init_layer_scale=None,
    default_hw_shape=None,
)
# init_cfg, test_cfg, convert_syncbn: initialisation and training bookkeeping, no effect on the
# forward pass. default_hw_shape: only caches the scan orders; ours are computed for every grid.


def _fail(name, value, valid):
    raise ValueError(f"plainmamba constructor_kwargs: {name}={value!r} is not supported; valid: {valid}")


def _check_keys(where, given: dict, valid: dict):
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ValueError(f"plainmamba constructor_kwargs: unsupported keys {unknown}{where}; valid: {sorted(valid)}")


def build(constructor_kwargs: dict, rngs: nnx.Rngs) -> PlainMamba:
    """Our PlainMamba classifier for the official constructor's keyword arguments."""
    _check_keys("", constructor_kwargs, BACKBONE_DEFAULTS)
    kw = {**BACKBONE_DEFAULTS, **constructor_kwargs}
    if kw["arch"] is not None:  # the official constructor then ignores the explicit sizes
        if kw["arch"] not in ARCH_ZOO:
            _fail("arch", kw["arch"], f"None or one of {sorted(ARCH_ZOO)}")
        kw.update(ARCH_ZOO[kw["arch"]])
        if isinstance(kw["layer_cfgs"], dict):  # as official: a per-layer list would still win
            kw["layer_cfgs"] = dict(use_rms_norm=False, mamba_cfg=ARCH_MAMBA_CFG)

    layer_cfgs = kw["layer_cfgs"]
    if not isinstance(layer_cfgs, dict):
        _fail("layer_cfgs", layer_cfgs, "one dict for every layer (per-layer lists are not supported)")
    _check_keys(" in layer_cfgs", layer_cfgs, {"use_rms_norm": None, "mamba_cfg": None})
    mamba_cfg = dict(layer_cfgs.get("mamba_cfg", {}))
    _check_keys(" in layer_cfgs['mamba_cfg']", mamba_cfg, MAMBA_DEFAULTS)
    mamba_cfg = {**MAMBA_DEFAULTS, **mamba_cfg}
    del mamba_cfg["default_hw_shape"]

    img_size = kw["img_size"]
    if isinstance(img_size, (list, tuple)):
        if len(img_size) != 2 or img_size[0] != img_size[1]:
            _fail("img_size", img_size, "an int or a square (size, size)")
        img_size = img_size[0]
    norm_cfg = dict(kw["norm_cfg"] or {})
    if norm_cfg.get("type") != "LN" or set(norm_cfg) - {"type", "eps", "requires_grad"}:
        _fail("norm_cfg", kw["norm_cfg"], "{'type': 'LN', 'eps': float}")
    if not _single_output(kw["out_indices"], kw["num_layers"]):
        _fail("out_indices", kw["out_indices"], "-1 or the last layer's index (classification)")
    if kw["interpolate_mode"] != "bicubic":
        _fail("interpolate_mode", kw["interpolate_mode"], "'bicubic'")
    if kw["freeze_patch_embed"]:
        _fail("freeze_patch_embed", kw["freeze_patch_embed"], "False")

    return PlainMamba(
        num_classes=kw["num_classes"],
        img_size=img_size,
        in_chans=kw["in_channels"],
        patch_size=kw["patch_size"],
        embed_dim=kw["embed_dims"],
        depth=kw["num_layers"],
        num_convs_patch_embed=kw["num_convs_patch_embed"],
        layers_with_dwconv=tuple(kw["layers_with_dwconv"]),
        use_rms_norm=layer_cfgs.get("use_rms_norm", False),
        final_norm=kw["final_norm"],
        final_norm_eps=norm_cfg.get("eps", 1e-5),  # nn.LayerNorm's default when the cfg has none
        with_pos_embed=kw["with_pos_embed"],
        drop_rate=kw["drop_rate"],
        drop_path_rate=kw["drop_path_rate"],
        rngs=rngs,
        **mamba_cfg,
    )


def _single_output(out_indices, num_layers):
    indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    return [i + num_layers if i < 0 else i for i in indices] == [num_layers - 1]


def rename(official_key: str) -> str | None:
    """mmcls classifier key -> our key: strip `backbone.`, keep `head.fc.*`, drop `ema_*`."""
    if official_key.startswith("ema_"):
        return None
    return official_key.removeprefix("backbone.")
