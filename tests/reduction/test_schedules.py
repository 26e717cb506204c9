"""Schedules as pure computations of the grid at every block (no model needed)."""

import math

import jax
import jax.numpy as jnp
import pytest

from sarf_jax import reduction
from sarf_jax.reduction import schedules

VMAMBA_TINY, VMAMBA_SMALL_BASE = (2, 2, 8, 2), (2, 2, 15, 2)


def reductions(sites):
    return [(s.stage, s.block, s.in_hw[0], s.out_hw[0]) for s in sites if s.in_hw != s.out_hw]


@pytest.mark.parametrize("name", ["hybrid_2p1", "hybrid_2p1_sb"])
def test_vmamba_small_base_hybrid_2p1_at_224_gives_the_worked_example(name):
    # docs/official_code.md#storm-budgets: stage 0 56²→52², stage 1 26²→24², stage 2 12²→11²→10²→9²→8².
    sites = schedules.trace(name, VMAMBA_SMALL_BASE, (56, 56), method="sarf_tome")
    assert reductions(sites) == [
        (0, 1, 56, 52),
        (1, 1, 26, 24),
        (2, 3, 12, 11),
        (2, 7, 11, 10),
        (2, 11, 10, 9),
        (2, 14, 9, 8),
    ]
    assert [s.in_hw for s in sites if s.block == 0] == [(56, 56), (26, 26), (12, 12), (4, 4)]
    assert len(sites) == sum(VMAMBA_SMALL_BASE)


def test_vmamba_tiny_hybrid_2p1_reduces_at_the_odd_blocks_of_stage_3():
    sites = schedules.trace("hybrid_2p1", VMAMBA_TINY, (56, 56))
    assert reductions(sites) == [
        (0, 1, 56, 52),
        (1, 1, 26, 24),
        (2, 1, 12, 11),
        (2, 3, 11, 10),
        (2, 5, 10, 9),
        (2, 7, 9, 8),
    ]


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("depths, suffix", [(VMAMBA_TINY, ""), (VMAMBA_SMALL_BASE, "_sb")])
def test_every_official_vmamba_table_removes_exactly_its_counts_at_224(level, depths, suffix):
    """At 224 px each official count leaves a perfect square (isqrt never rounds), and every step is
    within reach of SARF-ToMe."""
    table = schedules.resolve(f"hybrid_{level}p1{suffix}", depths)
    for site in schedules.trace(table, depths, (56, 56), method="sarf_tome"):
        count = table.counts[site.stage][site.block]
        assert site.in_hw[0] * site.in_hw[1] - count == site.out_hw[0] * site.out_hw[1]


def test_hybrid_3p1_sb_stops_at_8x8_like_the_official_16_entry_list():
    # The official stage-3 list has a 16th entry (15) that a 15-block stage never reaches.
    sites = schedules.trace("hybrid_3p1", VMAMBA_SMALL_BASE, (56, 56))
    assert reductions(sites)[2:] == [(2, 3, 11, 10), (2, 7, 10, 9), (2, 11, 9, 8)]


@pytest.mark.parametrize(
    "name, sides",
    [
        ("schedual_1", [13, 12, 10, 9]),
        ("schedual_2", [12, 10, 8, 6]),
        ("schedual_3", [10, 8, 6, 4]),
        ("schedual_4", [10, 8, 5, 3]),
        ("schedual_5", [8, 6, 4, 3]),
    ],
)
@pytest.mark.parametrize("layers", [24, 36])  # PlainMamba-L2, -L3
def test_plainmamba_schedules_at_224(name, sides, layers):
    sites = schedules.trace(name, (layers,), (14, 14), method="sarf_tome")
    assert [(s.block, s.out_hw[0]) for s in sites if s.in_hw != s.out_hw] == list(zip((4, 10, 16, 22), sides))


def test_fixture_tables_give_the_fixture_grids(load_fixture):
    _, meta = load_fixture("storm_vmamba")
    depths = (1, 1, 2, 1)
    for method, blocks in meta["block_grids"].items():
        expected = [(b["stage"], b["block"], tuple(b["in_hw"]), tuple(b["out_hw"])) for b in blocks]
        table = meta["budget_table"] if method != "logits_dense" else [[0] * d for d in depths]
        assert [tuple(s) for s in schedules.trace(table, depths, (16, 16))] == expected, method
    _, meta = load_fixture("storm_plainmamba")
    schedule = {int(layer): tokens for layer, tokens in meta["schedule"].items()}
    for method, layers in meta["layer_grids"].items():
        got = schedules.trace(schedule if method != "logits_dense" else {}, (4,), tuple(meta["grid"]))
        assert [s.out_hw for s in got] == [tuple(layer["out_hw"]) for layer in layers], method


def test_generated_keep_schedule_is_a_pure_function_of_the_grid():
    schedule = schedules.parse("keep=0.6,sites=4")
    assert schedule == schedules.KeepSchedule(0.6, 4)
    default = schedules.parse("keep=0.6")  # 4 sites, or every candidate block of a small backbone
    assert default.site_blocks(VMAMBA_TINY) == schedule.site_blocks(VMAMBA_TINY)
    assert default.site_blocks((2, 2, 2)) == ((0, 1), (1, 0), (1, 1))
    assert schedule.site_blocks(VMAMBA_TINY) == ((0, 1), (1, 1), (2, 2), (2, 5))
    assert schedule.site_blocks((24,)) == ((0, 1), (0, 6), (0, 12), (0, 18))
    per_site = 0.6 ** (1 / 4)
    for depths, in_hw in ((VMAMBA_TINY, (56, 56)), ((24,), (14, 14)), ((2, 2, 2, 2), (8, 8))):
        sites = schedules.trace(schedule, depths, in_hw, method="sarf_tome")
        for site in sites:
            (height, width), (out_h, out_w) = site.in_hw, site.out_hw
            assert out_h == out_w or site.in_hw == site.out_hw  # square targets
            if (site.stage, site.block) in schedule.site_blocks(depths):
                side = round(math.sqrt(per_site * height * width))
                assert out_h == min(max(side, height - height // 2), height)
            else:
                assert site.out_hw == site.in_hw
    # About `keep` of the tokens survive the four sites of PlainMamba-L2 at 224 (14² -> 10²).
    assert schedules.trace(schedule, (24,), (14, 14))[-1].out_hw == (10, 10)


def test_spec_is_hashable_and_a_static_jit_argument():
    spec = reduction.Spec("sarf_tome", [[87], [13], [0, 0], [0]])
    same = reduction.Spec("sarf_tome", ((87,), (13,), (0, 0), (0,)))
    assert spec == same and hash(spec) == hash(same)
    assert spec.schedule == schedules.PruneTable(((87,), (13,), (0, 0), (0,)))
    assert reduction.Spec("tome", {2: 25, 0: 49}).schedule == schedules.TargetTable(((0, 49), (2, 25)))
    assert reduction.Spec("sarf_evit", "hybrid_2p1").schedule == "hybrid_2p1"
    assert reduction.Spec("none").schedule is None

    def first_site(x, spec):
        site = schedules.trace(spec.schedule, (1, 1, 2, 1), x.shape[1:3])[0]
        return spec.reducer("vmamba").plan(x, site.out_hw)(x)

    reduce_first_site = jax.jit(first_site, static_argnames="spec")
    x = jnp.ones((1, 16, 16, 2))
    assert reduce_first_site(x, spec=spec).shape == (1, 13, 13, 2)
    assert reduce_first_site(x, spec=same).shape == (1, 13, 13, 2)
    assert reduce_first_site._cache_size() == 1  # equal specs share one compiled function


def test_spec_resolves_tome_prune_per_backbone():
    spec = reduction.Spec("tome", "schedual_2")
    assert spec.reducer("vmamba").tome_prune is True
    assert spec.reducer("plainmamba").tome_prune is False
    assert reduction.Spec("tome", "schedual_2", tome_prune=False).reducer("vmamba").tome_prune is False
    assert reduction.Spec("tome", "schedual_2").reducer("vmamba").metric_source == "mixer_output"
    assert reduction.Spec("sarf_tome", "schedual_2").reducer("vmamba").metric_source == "block_input"
