"""`paper_like=<table>`: an official table's per-site keep fractions on any backbone and grid."""

import pytest
from flax import nnx

from sarf_jax import models, reduction
from sarf_jax.reduction import schedules

TABLES = ["hybrid_1p1", "hybrid_2p1", "hybrid_4p1", "hybrid_2p1_sb", "schedual_1", "schedual_3"]
MINIS = ["vim_mini", "vmamba_mini", "plainmamba_mini", "vit_mini", "vmamba_paper_mini", "plainmamba_paper_mini"]
FULL = [("vmamba_tiny", "hybrid"), ("vmamba_small", "hybrid"), ("vmamba_base", "hybrid"), ("plainmamba_l2", "schedual")]


def reducing(sites):
    return [site for site in sites if site.out_hw != site.in_hw]


def abstract_model(name, img_size, in_chans):
    return nnx.eval_shape(
        lambda: models.create(name, num_classes=10, img_size=img_size, in_chans=in_chans, rngs=nnx.Rngs(0))
    )


@pytest.mark.parametrize("name, family", FULL)
@pytest.mark.parametrize("level", [1, 2, 4])
def test_on_the_official_backbone_at_224_it_is_the_official_table(name, family, level):
    table = f"hybrid_{level}p1" if family == "hybrid" else f"schedual_{level}"
    model = abstract_model(name, 224, 3)
    official = model.reduction_sites(reduction.Spec("sarf_tome", table))
    generated = model.reduction_sites(reduction.Spec("sarf_tome", f"paper_like={table}"))
    assert generated == official and reducing(official)


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("name", MINIS)
def test_on_every_mini_each_site_keeps_the_official_fraction_within_one_grid_row(name, table):
    schedule = schedules.PaperLike(table)
    model = abstract_model(name, 28, 1)
    sites = model.reduction_sites(reduction.Spec("sarf_tome", schedule))
    fractions = schedule.fractions()
    assert reducing(sites), "a paper-like schedule reduces somewhere on every mini"
    depths = tuple(sum(1 for s in sites if s.stage == stage) for stage in range(sites[-1].stage + 1))
    placed = schedule.site_fractions(depths)
    assert list(placed.values()) == list(fractions[: len(placed)])  # in the table's order
    for site in sites:
        if (site.stage, site.block) not in placed:
            assert site.out_hw == site.in_hw
            continue
        (height, width), (out_h, out_w) = site.in_hw, site.out_hw
        target = placed[site.stage, site.block] * height * width
        assert abs(out_h * out_w - target) <= width, (site, target)  # one row of the grid


def test_fractions_are_read_off_the_official_grids():
    assert [round(f, 3) for f in schedules.PaperLike("hybrid_2p1").fractions()] == [
        0.862,
        0.852,
        0.84,
        0.826,
        0.81,
        0.79,
    ]
    assert [round(f, 3) for f in schedules.PaperLike("schedual_2").fractions()] == [0.735, 0.694, 0.64, 0.562]


def test_a_long_single_stage_backbone_spreads_the_sites_over_its_blocks():
    sites = schedules.trace("paper_like=hybrid_2p1", (24,), (14, 14), method="sarf_tome")
    assert [(s.block, s.in_hw[0], s.out_hw[0]) for s in reducing(sites)] == [
        (1, 14, 13),
        (4, 13, 12),
        (8, 12, 11),
        (12, 11, 10),
        (16, 10, 9),
        (20, 9, 8),
    ]


def test_spec_text_form_label_and_errors():
    spec = reduction.parse_spec("sarf_evit:paper_like=hybrid_2p1")
    assert spec.schedule == schedules.PaperLike("hybrid_2p1")
    assert reduction.spec_label(spec) == "sarf_evit:paper_like=hybrid_2p1"
    assert hash(spec) == hash(reduction.parse_spec("sarf_evit:paper_like=hybrid_2p1"))
    with pytest.raises(ValueError, match=r"paper_like needs an official table name, got 'hybrid_9p1'; valid: "):
        reduction.parse_spec("sarf_tome:paper_like=hybrid_9p1")


@pytest.mark.parametrize("name", ["vmamba_paper_mini", "plainmamba_paper_mini"])
def test_paper_minis_take_the_papers_steps_on_a_grid_of_at_least_12(name):
    """Each site removes one row and one column (13-21% of the tokens), all in the first stage."""
    sites = abstract_model(name, 28, 1).reduction_sites(reduction.Spec("sarf_tome", "paper_like=hybrid_2p1"))
    steps = [(s.stage, s.in_hw[0], s.out_hw[0]) for s in reducing(sites)]
    assert steps == [(0, 14, 13), (0, 13, 12), (0, 12, 11), (0, 11, 10), (0, 10, 9)] + (
        [(0, 9, 8)] if name.startswith("plainmamba") else []
    )
