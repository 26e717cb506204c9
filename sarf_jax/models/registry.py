"""Named model variants: each family registers a small table of sizes, `create` builds one.

A variant is a constructor plus keyword arguments (dims, depths, d_state, ...); `vmamba_tiny`
and `vmamba_mini` differ only by their row. Every model is called as
`model(images_nhwc, *, reduction=None, train=False) -> logits`.
"""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

_VARIANTS: dict[str, tuple[Callable[..., nnx.Module], dict]] = {}


def register(name: str, constructor: Callable[..., nnx.Module], **variant_kwargs) -> None:
    """Make `create(name, ...)` build `constructor(**variant_kwargs, num_classes=..., ...)`."""
    if name in _VARIANTS:
        raise ValueError(f"model {name!r} is already registered")
    _VARIANTS[name] = (constructor, variant_kwargs)


def list_models() -> list[str]:
    """Names accepted by `create`, sorted."""
    return sorted(_VARIANTS)


def variant_kwargs(name: str) -> dict:
    """The registered keyword arguments of `name` (a copy)."""
    return dict(_lookup(name)[1])


def _lookup(name: str):
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")
    return _VARIANTS[name]


def create(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | None = None,
    in_chans: int | None = None,
    rngs: nnx.Rngs | None = None,
    pretrained=None,
    **overrides,
) -> nnx.Module:
    """Build the registered variant `name` for `img_size` x `img_size` x `in_chans` images.

    `overrides` replace entries of the variant's row (e.g. `depth=2`, `drop_path_rate=0.1`).
    Without `pretrained`, num_classes, img_size and rngs are required (in_chans defaults to 3).

    `pretrained` (a directory from save_pretrained / `python -m sarf_jax.convert`, or a train.py
    workdir) gives the model that directory's weights: `name` must be the one in its model.json,
    num_classes / img_size / in_chans default to model.json's, `img_size` may differ (position
    embeddings are resized), overrides must keep the weights' shapes (see models.pretrained).
    """
    if pretrained is not None:
        from sarf_jax.models.pretrained import create_pretrained  # it imports this module

        return create_pretrained(
            name, pretrained, num_classes=num_classes, img_size=img_size, in_chans=in_chans, rngs=rngs, **overrides
        )
    missing = [
        arg for arg, value in (("num_classes", num_classes), ("img_size", img_size), ("rngs", rngs)) if value is None
    ]
    if missing:
        raise TypeError(f"create({name!r}): missing keyword arguments {missing} (required without pretrained=)")
    constructor, kwargs = _lookup(name)
    return constructor(
        **{**kwargs, **overrides},
        num_classes=num_classes,
        img_size=img_size,
        in_chans=3 if in_chans is None else in_chans,
        rngs=rngs,
    )
