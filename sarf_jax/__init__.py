"""sarf_jax: spatial-aware token reduction for visual state-space models, in JAX / Flax NNX.

Layers, lowest first. A module may import modules of its own layer and of the layers below it,
never of a layer above (tests/test_import_layers.py checks every import, function-level ones
included; docs/architecture.md explains each layer):

    1. ops
    2. nn
    3. analysis
    4. reduction
    5. checkpoints
    6. models
    7. data, parallel, cli
    8. evaluate, convert, export
    9. train

This file and the command lines (train.py, eval.py, tools/, benchmarks/) sit on top.
"""

from sarf_jax import convert, models, nn, ops, reduction

__version__ = "0.1.0"
__all__ = ["convert", "models", "nn", "ops", "reduction", "__version__"]
