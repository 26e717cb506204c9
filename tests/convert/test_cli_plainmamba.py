"""The converter of python -m sarf_jax.convert on a PlainMamba checkpoint in mmcv's format (meta +
state_dict with backbone. / head.fc. keys and the EMA hook's ema_* buffers) -> model directory ->
same logits. (The command line itself is tested on Vim in test_cli.py.)"""

import jax.numpy as jnp
import numpy as np
import torch
from conftest import official_state_dict, read_fixture

from sarf_jax.convert.__main__ import convert
from sarf_jax.models.pretrained import load_pretrained

# The fixture's backbone: L1's layout (one stem conv block, dwconv after layer 0) at width 64, 4 layers.
FIXTURE_SIZE = dict(img_size=64, overrides=dict(embed_dim=64, depth=4))


def test_converts_an_mmcv_plainmamba_checkpoint_to_the_same_logits(tmp_path):
    arrays, _ = read_fixture("plainmamba")
    weights = {k: torch.tensor(v) for k, v in official_state_dict(arrays).items()}
    buffers = ("running_mean", "running_var", "num_batches_tracked")  # the EMA hook copies parameters only
    ema = {"ema_" + k.replace(".", "_"): v.clone() for k, v in weights.items() if not k.endswith(buffers)}
    path = tmp_path / "l1.pth"
    torch.save(
        {
            "meta": {
                "mmcv_version": "1.7.0",
                "epoch": 300,
                "config": "model = dict(type='ImageClassifier')",
                "CLASSES": ["a", "b"],
            },
            "state_dict": {**weights, **ema},
            "optimizer": {"state": {}, "param_groups": []},
        },
        path,
    )
    out = tmp_path / "converted"
    convert("plainmamba_l1", path, out, **FIXTURE_SIZE)
    model, info = load_pretrained(out, with_info=True)
    assert info["num_classes"] == 10
    images = jnp.asarray(arrays["input"].transpose(0, 2, 3, 1))
    np.testing.assert_allclose(model(images), arrays["logits"], atol=1e-4, rtol=0)
