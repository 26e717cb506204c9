"""A training step of every Mamba family, with SARF active, lowers for TPU with the real kernels.

Users train on Cloud TPU, where `scan_impl="pallas"` means the Mosaic kernel. On this CPU host a
model built with `scan_interpret=False` must lower its forward and backward pass (the gradient of
the loss through `sarf_jax.train.step.apply_model`, BatchNorm statistics and drop-path included)
to Mosaic custom calls: that runs the Mosaic lowering's tile checks on the shapes the reduced
grids produce. With the default (`scan_interpret=None`) the same model interprets the kernel on a
CPU host, and its TPU lowering must contain no Mosaic call.
"""

import functools
import re
import types

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from sarf_jax import models, reduction
from sarf_jax.train.state import split_model
from sarf_jax.train.step import apply_model

FAMILIES = {  # tiny overrides: lowering time grows with the number of blocks
    "vim_mini": dict(depth=3),
    "vmamba_mini": dict(depths=(2, 2, 1)),
    "plainmamba_mini": dict(depth=3),
}
SPEC = reduction.parse_spec("sarf_tome:keep=0.6,sites=2")
IMAGES = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
MOSAIC_CALL = "stablehlo.custom_call @tpu_custom_call"


@functools.cache
def tpu_lowered_training_step(name, interpret):
    """(StableHLO text of d(loss)/d(params) for `name` under SPEC lowered for TPU, the token counts
    of the grids SPEC reduces to)."""
    model = models.create(
        name,
        num_classes=10,
        img_size=28,
        in_chans=1,
        rngs=nnx.Rngs(0),
        scan_impl="pallas",
        scan_interpret=interpret,
        **FAMILIES[name],
    )
    graphdef, params, rng_state, model_state = split_model(model)
    parts = types.SimpleNamespace(graphdef=graphdef, rng_state=rng_state)

    def loss(params, model_state, images):
        logits, model_state = apply_model(
            parts, params, model_state, images, train=True, key=jax.random.key(1), reduction=SPEC
        )
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0]), model_state

    step = jax.jit(jax.grad(loss, has_aux=True))
    text = step.trace(params, model_state, IMAGES).lower(lowering_platforms=("tpu",)).as_text()
    reduced = {h * w for site in model.reduction_sites(SPEC) if site.out_hw != site.in_hw for h, w in [site.out_hw]}
    return text, reduced


def kernel_lengths(text):
    """Sequence lengths of the Mosaic calls: u, their first operand, is (batch, length, channels)."""
    return {int(length) for length in re.findall(r"@tpu_custom_call\(.*\} : \(tensor<\d+x(\d+)x", text)}


@pytest.mark.parametrize("name", FAMILIES)
def test_training_step_with_sarf_lowers_to_mosaic_kernels(name):
    text, reduced = tpu_lowered_training_step(name, False)
    assert text.count(MOSAIC_CALL) >= 2
    # the forward kernel that saves tile states (for the backward pass) and the backward kernel
    assert "selective_scan_forward" in text and "selective_scan_backward" in text
    # a kernel scans a grid SARF reduced (Vim adds its class token)
    assert kernel_lengths(text) & (reduced | {n + 1 for n in reduced}), (kernel_lengths(text), reduced)


@pytest.mark.parametrize("name", FAMILIES)
def test_default_interpret_on_a_cpu_host_lowers_no_mosaic_call(name):
    text, _ = tpu_lowered_training_step(name, None)
    assert "tpu_custom_call" not in text
    assert "selective_scan_forward" not in text
