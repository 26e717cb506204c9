"""The sweeps shipped in configs/sweeps/ parse, and every schedule resolves on the models they are for."""

import importlib

import pytest
from flax import nnx

from sarf_jax import models, reduction

SWEEP_MODELS = {
    "vmamba_paper": [("vmamba_tiny", 224, 3), ("vmamba_base", 224, 3)],
    "plainmamba_paper": [("plainmamba_l3", 224, 3)],
    "mini": [(name, 28, 1) for name in ("vmamba_mini", "plainmamba_mini", "vim_mini", "vit_mini")],
    "default": [("vmamba_mini", 28, 1, {"patch_size": 4})],  # configs/default.py's model
    "paper_mini": [(name, 28, 1) for name in ("vmamba_paper_mini", "plainmamba_paper_mini")],
}


@pytest.mark.parametrize("sweep", sorted(SWEEP_MODELS))
def test_sweep_specs_resolve_on_their_models_and_cover_the_paper_methods(sweep):
    texts = importlib.import_module(f"configs.sweeps.{sweep}").get_config().reductions
    specs = [reduction.parse_spec(text) for text in texts]
    assert specs[0] is None and len(set(texts)) == len(texts)
    assert {"sarf_tome", "sarf_evit", "evit", "tome"} <= {s.method for s in specs[1:]}
    for name, img_size, in_chans, *overrides in SWEEP_MODELS[sweep]:
        kwargs = overrides[0] if overrides else {}
        model = nnx.eval_shape(
            lambda: models.create(
                name, num_classes=10, img_size=img_size, in_chans=in_chans, rngs=nnx.Rngs(0), **kwargs
            )
        )
        for spec in specs[1:]:
            sites = model.reduction_sites(spec)
            assert any(site.out_hw != site.in_hw for site in sites), (name, reduction.spec_label(spec))


@pytest.mark.parametrize("name", ["vmamba_paper_mini", "plainmamba_paper_mini"])
def test_paper_mini_budgets_save_a_fifth_to_under_half_of_the_gflops_in_order(name):
    from sarf_jax.analysis.flops import model_gflops

    texts = importlib.import_module("configs.sweeps.paper_mini").get_config().reductions
    model = nnx.eval_shape(lambda: models.create(name, num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0)))
    dense = model_gflops(model, 28, in_chans=1)
    savings = [
        1 - model_gflops(model, 28, in_chans=1, reduction=reduction.parse_spec(text)) / dense
        for text in texts
        if text.startswith("sarf_tome:")
    ]
    assert len(savings) == 3 and savings == sorted(savings)
    assert 0.2 <= savings[0] and savings[-1] <= 0.46
