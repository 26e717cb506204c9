"""configs/paper_mini.py: a valid training config for both paper-like minis at 28 px, without
augmentation; a bad argument names the valid ones."""

import importlib.util
import pathlib

import pytest

from sarf_jax.train import config as config_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("paper_mini", ROOT / "configs" / "paper_mini.py")
paper_mini = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_mini)


@pytest.mark.parametrize("model", list(paper_mini.RECIPES))
def test_config_trains_the_model_at_28_px_without_augmentation(model):
    config = paper_mini.get_config(model)
    config_lib.validate(config)
    assert (config.model.name, config.data.image_size) == (model, 28)
    assert (config.data.train_crop, config.data.flip, config.label_smoothing) == ("resize", False, 0.0)


def test_make_reproduce_trains_the_models_this_config_has_recipes_for():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "tools" / "reproduce.py")
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    assert reproduce.MODELS == tuple(paper_mini.RECIPES)


@pytest.mark.parametrize("arg", ["vmamba_mini", "vmamba_paper_mini,low"])
def test_bad_argument_names_the_models(arg):
    with pytest.raises(ValueError, match=r"must be one of \('vmamba_paper_mini', 'plainmamba_paper_mini'\)"):
        paper_mini.get_config(arg)
