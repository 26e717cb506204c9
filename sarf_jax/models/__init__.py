"""Backbones and the registry of their named variants.

Importing this package registers every family's variants.
"""

from sarf_jax.models import plainmamba, vim, vit, vmamba
from sarf_jax.models.registry import create, list_models, register, variant_kwargs

__all__ = ["create", "list_models", "plainmamba", "register", "variant_kwargs", "vim", "vit", "vmamba"]
