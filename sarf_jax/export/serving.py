"""The function an artifact computes: images -> (normalise) -> model under a reduction -> logits.

Lowered with `jax.export` for every platform in PLATFORMS at once, so the same file serves on CPU,
GPU and TPU. The weights are constants of the lowered program: the artifact needs no checkpoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import export as jax_export

from sarf_jax.data.pipeline import normalize

PLATFORMS = ("cpu", "cuda", "tpu")
BATCH_SYMBOL = "b"


def input_spec(batch: int | None, img_size: int, in_chans: int) -> jax.ShapeDtypeStruct:
    """float32 NHWC images: `batch` of them, or a symbolic batch size (any b >= 1) when None."""
    size = jax_export.symbolic_shape(BATCH_SYMBOL)[0] if batch is None else batch
    return jax.ShapeDtypeStruct((size, img_size, img_size, in_chans), jnp.float32)


def serving_function(model: nnx.Module, *, reduction=None, mean=None, std=None):
    """images -> float32 logits in inference mode; with `mean`/`std`, images are [0, 255] pixels
    normalised exactly as training did (sarf_jax.data.pipeline.normalize)."""
    graphdef, state = nnx.split(model)

    def serve(images: jax.Array) -> jax.Array:
        if mean is not None:
            images = normalize(images, mean, std)
        logits = nnx.merge(graphdef, state)(images, reduction=reduction, train=False)
        return logits.astype(jnp.float32)

    return serve


def export_model(
    model: nnx.Module,
    *,
    img_size: int,
    in_chans: int,
    reduction=None,
    batch: int | None = None,
    mean=None,
    std=None,
    platforms=PLATFORMS,
) -> jax_export.Exported:
    """`jax.export` of `serving_function(model, ...)` for `input_spec(batch, img_size, in_chans)`."""
    serve = serving_function(model, reduction=reduction, mean=mean, std=std)
    return jax_export.export(jax.jit(serve), platforms=platforms)(input_spec(batch, img_size, in_chans))
