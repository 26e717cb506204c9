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


def create(name: str, *, num_classes: int, img_size: int, in_chans: int = 3, rngs: nnx.Rngs,
           **overrides) -> nnx.Module:
    """Build the registered variant `name` for `img_size` x `img_size` x `in_chans` images.

    `overrides` replace entries of the variant's row (e.g. `depth=2`, `drop_path_rate=0.1`).
    """
    constructor, kwargs = _lookup(name)
    return constructor(**{**kwargs, **overrides}, num_classes=num_classes, img_size=img_size,
                       in_chans=in_chans, rngs=rngs)
