"""Serving artifacts with `jax.export`: a model (under a reduction spec) as portable StableHLO.

    python -m sarf_jax.export --workdir DIR --out model.jax [--reduction sarf_tome:keep=0.6] [--batch 8]

    from sarf_jax.export import load
    serve = load("model.jax")          # runs on CPU, GPU or TPU, no sarf_jax model code needed
    logits = serve(images_uint8_nhwc)   # (batch, num_classes) float32

F holds the lowered program for the platforms cpu, cuda and tpu (weights included; selective
scans in the `chunked` XLA form, which lowers everywhere); F.json says what it takes (model,
img_size, in_chans, reduction label, mean/std, batch) and F's sha256.
"""

from sarf_jax.export.artifact import NORMALIZED, PIXELS, ServingModel, load, save
from sarf_jax.export.directory import export_directory
from sarf_jax.export.serving import PLATFORMS, export_model, serving_function

__all__ = [
    "NORMALIZED",
    "PIXELS",
    "PLATFORMS",
    "ServingModel",
    "export_directory",
    "export_model",
    "load",
    "save",
    "serving_function",
]
