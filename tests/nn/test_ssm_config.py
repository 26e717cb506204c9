"""SSMConfig: one validation and one initialisation for every mixer's SSM, shared by the backbones."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from flax import nnx

from sarf_jax import models
from sarf_jax.nn import SS2D, Mamba, PlainMamba2D, SSMConfig


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(d_state=0), r"SSMConfig: d_state must be a positive int, got 0"),
        (dict(d_state=True), r"d_state must be a positive int, got True"),
        (dict(d_conv=2.0), r"d_conv must be a positive int, got 2.0"),
        (dict(expand=0), r"expand must be a number > 0, got 0"),
        (dict(dt_rank="full"), r"dt_rank must be 'auto' or a positive int, got 'full'"),
        (dict(dt_min=0.2, dt_max=0.1), r"need 0 < dt_min <= dt_max, got dt_min=0.2, dt_max=0.1"),
        (dict(dt_init="zeros"), r"dt_init must be one of \('random', 'constant'\)"),
        (dict(dt_scale=-1.0), r"dt_scale must be a number > 0"),
        (dict(dt_init_floor=-1e-4), r"dt_init_floor must be a number >= 0"),
        (dict(conv_bias=1), r"conv_bias must be True or False, got 1"),
        (dict(scan_impl="triton"), r"impl must be one of"),
        (dict(chunk_size=0), r"chunk_size must be None or a positive int, got 0"),
        (dict(interpret="yes"), r"interpret must be None, True or False"),
    ],
)
def test_bad_fields_name_the_field_and_the_valid_range(fields, message):
    with pytest.raises(ValueError, match=message):
        SSMConfig(**fields)


def test_mixers_take_a_config_or_loose_fields_onto_their_official_defaults():
    rngs = lambda: nnx.Rngs(0)
    assert Mamba(32, rngs=rngs()).ssm == SSMConfig()
    assert SS2D(32, rngs=rngs()).ssm == SSMConfig(d_state=1, expand=1.0, d_conv=3, conv_bias=False)
    assert PlainMamba2D(32, rngs=rngs()).ssm == SSMConfig(d_conv=7)
    config = SSMConfig(d_state=4, expand=1.5, d_conv=5)
    layer = SS2D(32, ssm=config, chunk_size=4, rngs=rngs())
    assert layer.ssm == dataclasses.replace(config, chunk_size=4)
    assert (layer.d_inner, layer.dt_rank) == (48, 2)
    assert layer.A_logs.shape == (4 * 48, 4) and layer.conv2d.kernel.shape[:2] == (5, 5)
    with pytest.raises(ValueError, match="Mamba: ssm must be an SSMConfig or None, got dict"):
        Mamba(32, ssm={"d_state": 4}, rngs=rngs())


def test_initialisation_is_mambas():
    config = SSMConfig(dt_min=0.01, dt_max=0.05, dt_init_floor=0.0)
    bias = np.asarray(config.dt_bias(jax.random.key(0), (4096,)))
    dt = np.log1p(np.exp(bias))  # softplus undoes the initialiser's inverse
    assert dt.min() >= 0.01 * (1 - 1e-5) and dt.max() <= 0.05 * (1 + 1e-5)
    assert abs(np.log(dt).mean() - (np.log(0.01) + np.log(0.05)) / 2) < 0.02  # log-uniform
    floored = np.log1p(np.exp(np.asarray(SSMConfig(dt_init_floor=0.05).dt_bias(jax.random.key(0), (512,)))))
    assert floored.min() >= 0.05 * (1 - 1e-5)
    np.testing.assert_allclose(np.exp(config.A_log(3)), np.tile(np.arange(1, 17), (3, 1)), rtol=1e-6)
    rank = 8
    constant = SSMConfig(dt_init="constant", dt_scale=2.0).dt_kernel_init(rank)(jax.random.key(0), (rank, 4))
    np.testing.assert_allclose(constant, 2.0 / math.sqrt(rank), rtol=1e-6)
    uniform = np.asarray(SSMConfig().dt_kernel_init(rank)(jax.random.key(0), (rank, 512)))
    assert np.abs(uniform).max() <= 1 / math.sqrt(rank) and np.abs(uniform).max() > 0.9 / math.sqrt(rank)


@pytest.mark.parametrize(
    "name, overrides, mixer, expected",
    [
        ("vim_mini", dict(d_state=4, chunk_size=16), lambda m: m.layers[0].mixer, SSMConfig(d_state=4, chunk_size=16)),
        (
            "vmamba_mini",
            dict(ssm_ratio=2.0, ssm_d_state=2, scan_impl="reference"),
            lambda m: m.layers[1].blocks[0].op,
            SSMConfig(d_state=2, expand=2.0, d_conv=3, conv_bias=False, scan_impl="reference"),
        ),
        (
            "plainmamba_mini",
            dict(conv_size=3, dt_init="constant", scan_interpret=True),
            lambda m: m.layers[-1].mamba,
            SSMConfig(d_state=8, expand=1, d_conv=3, dt_init="constant", bias=True, interpret=True),
        ),
    ],
)
def test_backbones_map_their_official_arguments_onto_one_shared_config(name, overrides, mixer, expected):
    model = nnx.eval_shape(
        lambda: models.create(name, num_classes=3, img_size=28, in_chans=1, rngs=nnx.Rngs(0), **overrides)
    )
    assert model.ssm == expected
    assert mixer(model).ssm == model.ssm


def test_backbone_reports_a_bad_ssm_argument_before_building():
    with pytest.raises(ValueError, match=r"SSMConfig: need 0 < dt_min <= dt_max"):
        models.create("plainmamba_mini", num_classes=3, img_size=28, in_chans=1, rngs=nnx.Rngs(0), dt_min=1.0)
