"""ViT baseline against an independent implementation (transformers' ViTForImageClassification,
torch CPU) with the same weights, and the DeiT parameter counts / GFLOPs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import ViTConfig, ViTForImageClassification

from sarf_jax import models
from sarf_jax.convert import load_state_dict
from sarf_jax.evaluate import model_gflops, parameter_count


def transformers_to_timm_names(state_dict):
    """transformers (5.x) ViT keys -> timm / DeiT keys, which our ViT uses; q, k, v fused into qkv."""
    renames = [
        ("vit.embeddings.patch_embeddings.projection", "patch_embed.proj"),
        ("vit.embeddings.cls_token", "cls_token"),
        ("vit.embeddings.position_embeddings", "pos_embed"),
        ("vit.layers.", "blocks."),
        ("attention.o_proj", "attn.proj"),
        ("layernorm_before", "norm1"),
        ("layernorm_after", "norm2"),
        ("vit.layernorm", "norm"),
        ("classifier", "head"),
    ]
    out = {}
    for key, value in state_dict.items():
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value.numpy()
    for key in [k for k in out if ".attention.q_proj." in k]:
        prefix, leaf = key.split(".attention.q_proj.")
        parts = [out.pop(f"{prefix}.attention.{name}_proj.{leaf}") for name in "qkv"]
        out[f"{prefix}.attn.qkv.{leaf}"] = np.concatenate(parts, axis=0)
    return out


def test_matches_transformers_vit_with_the_same_weights():
    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        image_size=16,
        patch_size=4,
        num_channels=3,
        num_labels=5,
        qkv_bias=True,
    )
    reference = ViTForImageClassification(config).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    ours = models.create(
        "vit_tiny", num_classes=5, img_size=16, rngs=nnx.Rngs(0), patch_size=4, embed_dim=32, depth=2, num_heads=4
    )
    load_state_dict(ours, transformers_to_timm_names(reference.state_dict()))
    images = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    expected = reference(pixel_values=torch.tensor(images)).logits.detach().numpy()
    np.testing.assert_allclose(ours(jnp.asarray(images.transpose(0, 2, 3, 1))), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name, params, gflops", [("vit_tiny", 5_717_416, 1.3), ("vit_small", 22_050_664, 4.6)])
def test_deit_sizes_have_deit_parameter_counts_and_gflops(name, params, gflops):
    model = nnx.eval_shape(lambda: models.create(name, num_classes=1000, img_size=224, rngs=nnx.Rngs(0)))
    assert parameter_count(model) == params  # DeiT-Ti / DeiT-S (timm)
    assert model_gflops(model, 224) == pytest.approx(gflops, rel=0.05)  # DeiT paper: 1.3 / 4.6 G


def test_mini_is_differentiable_and_rejects_wrong_images():
    model = models.create("vit_mini", num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0))
    grads = nnx.grad(lambda m: m(jnp.ones((2, 28, 28, 1)), train=True).sum())(model)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(nnx.state(grads, nnx.Param)))
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 28, 28, 1\)"):
        model(jnp.ones((2, 32, 32, 1)))
    with pytest.raises(ValueError, match=r"img_size \(30\) must be divisible by patch_size \(4\)"):
        models.create("vit_tiny", num_classes=10, img_size=30, rngs=nnx.Rngs(0), patch_size=4)
