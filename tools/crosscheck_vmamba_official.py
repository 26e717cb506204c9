"""Cross-check sarf_jax's VMamba against the official PyTorch VSSM on configurations no fixture
covers (odd grids, "v0" SS2D with Vanilla-VMamba's v1 stem / PatchMerging2D / no MLP,
z-gated v05, v2 downsample, "ln" layout). A development tool, not part of the test suite.

Needs torch, triton (imported by the official csm_triton.py) and a checkout of
MzeroMiko/VMamba (read at 2ed52ead062a); timm and fvcore are replaced by minimal stand-ins
(DropPath is the identity in eval; trunc_normal_ only initialises), and the official
`torch.cuda.device(...)` context in csm_triton is made a no-op so that CPU tensors take the
official pure-torch CrossScanF / CrossMergeF and selective_scan_torch.

    python tools/crosscheck_vmamba_official.py /path/to/VMamba/classification/models
"""

from __future__ import annotations

import contextlib
import sys
import types

import jax.numpy as jnp
import numpy as np
import torch

from sarf_jax.convert import from_official


def import_official(models_dir: str):
    timm_layers = types.ModuleType("timm.models.layers")

    class DropPath(torch.nn.Module):
        def __init__(self, drop_prob=0.0):
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x):
            return x

    timm_layers.DropPath = DropPath
    timm_layers.trunc_normal_ = lambda t, std=1.0, a=-2.0, b=2.0: torch.nn.init.trunc_normal_(t, std=std, a=a, b=b)
    fvcore_nn = types.ModuleType("fvcore.nn")
    for name in ("FlopCountAnalysis", "flop_count_str", "flop_count", "parameter_count"):
        setattr(fvcore_nn, name, None)
    sys.modules.update(
        {
            "timm": types.ModuleType("timm"),
            "timm.models": types.ModuleType("timm.models"),
            "timm.models.layers": timm_layers,
            "fvcore": types.ModuleType("fvcore"),
            "fvcore.nn": fvcore_nn,
        }
    )
    torch.cuda.device = lambda *args, **kwargs: contextlib.nullcontext()
    sys.path.insert(0, models_dir)
    import vmamba

    return vmamba


def perturbed(model: torch.nn.Module, generator: torch.Generator) -> torch.nn.Module:
    """Move every tensor away from its default, as the shared fixtures do."""
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.add_(0.05 * torch.randn(tensor.shape, generator=generator))
            if "A_logs" in name:
                tensor.add_(0.5 * torch.randn(tensor.shape, generator=generator))
            if "dt_projs_bias" in name:
                tensor.add_(0.3 * torch.randn(tensor.shape, generator=generator))
    return model.eval()


def main(models_dir: str) -> None:
    vmamba = import_official(models_dir)
    base = dict(
        depths=[1, 1, 2],
        dims=16,
        num_classes=7,
        ssm_dt_rank="auto",
        ssm_act_layer="silu",
        ssm_drop_rate=0.0,
        ssm_init="v0",
        mlp_act_layer="gelu",
        mlp_drop_rate=0.0,
        gmlp=False,
        patch_norm=True,
        use_checkpoint=False,
        posembed=False,
        drop_path_rate=0.1,
        imgsize=52,
    )
    released = dict(
        base,
        ssm_d_state=1,
        ssm_ratio=1.0,
        ssm_conv=3,
        ssm_conv_bias=False,
        forward_type="v05_noz",
        mlp_ratio=4.0,
        norm_layer="ln2d",
        downsample_version="v3",
        patchembed_version="v2",
    )
    vanilla = dict(
        base,
        ssm_d_state=4,
        ssm_ratio=2.0,
        ssm_conv=3,
        ssm_conv_bias=True,
        forward_type="v0",
        mlp_ratio=0.0,
        norm_layer="ln",
        downsample_version="v1",
        patchembed_version="v1",
    )
    cases = {
        "v05_noz, ln2d, v2 stem, v3 downsample": released,
        "v05_noz, ln": dict(released, norm_layer="ln"),
        "v05_noz, v2 downsample": dict(released, downsample_version="v2"),
        "v05 (z-gated), conv bias": dict(released, forward_type="v05", ssm_conv_bias=True),
        "v0 (Vanilla-VMamba: v1 stem, PatchMerging2D, no MLP)": vanilla,
    }
    for label, kwargs in cases.items():
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(1)
        model = perturbed(vmamba.VSSM(**kwargs), generator)
        images = torch.randn(2, 3, 52, 52, generator=generator)  # grids 13 -> 7 -> 4 (v1: 13 -> 7 -> 4)
        with torch.no_grad():
            expected = model(images).numpy()
        ours = from_official("vmamba", kwargs, {k: v.numpy() for k, v in model.state_dict().items()})
        logits = np.asarray(ours(jnp.asarray(images.numpy().transpose(0, 2, 3, 1))))
        print(
            f"{label}: images 52x52, max abs logit error {np.abs(logits - expected).max():.2e} "
            f"(logits up to {np.abs(expected).max():.2f})"
        )


if __name__ == "__main__":
    main(sys.argv[1])
