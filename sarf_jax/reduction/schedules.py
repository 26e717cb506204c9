"""Schedules: at which blocks to reduce, and to what grid — pure functions of the grid sizes.

A block is addressed as (stage, block) with `depths` the number of blocks per stage; single-stage
backbones (PlainMamba, Vim) have one stage. Every schedule answers
`target(depths, stage, block, (H, W)) -> (H', W')` for the grid entering that block, and `trace`
walks a whole backbone (halving the grid between stages, rounding up, as VMamba's stride-2
downsampling of odd grids does) to list every block's grid before and after.

Four kinds, all hashable (a `reduction.Spec` holding one is a static jit argument):

- `PruneTable`, VMamba's format (STORM classification/models/token_reduction/strategies.yml):
  `[[num_prune for each block] for each stage]`; the block's output grid is the square of side
  isqrt(H·W - num_prune), as in the official `TokenReduction.forward`.
- `TargetTable`, PlainMamba's format (plainmamba/.../token_reduction/scheduals.yml):
  `{layer index: target token count}`, a perfect square; other layers keep their grid.
- `KeepSchedule`, generated: `keep=0.6` spread over N sites (`keep=0.6,sites=4`), square targets.
- `PaperLike`, generated: an official table's per-site keep fractions on any grid
  (`paper_like=hybrid_2p1`), so that a small model gets the paper's step sizes.

Named tables: VMamba `hybrid_1p1` … `hybrid_5p1` (tiny, stage 3 of 8 blocks) and `hybrid_1p1_sb` …
`hybrid_5p1_sb` (small/base, 15 blocks); a bare `hybrid_Np1` picks whichever fits the model's
depths. PlainMamba `schedual_1` … `schedual_5` (the official spelling).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from sarf_jax.reduction.methods import check_target

# strategies.yml, `prune_strategy_hybrid_*` (tiny: depths [2, 2, 8, 2]).
_VMAMBA_TINY = {
    "hybrid_1p1": ((0, 220), (0, 53), (0, 25, 0, 23, 0, 21, 0, 19), (0, 0)),
    "hybrid_2p1": ((0, 432), (0, 100), (0, 23, 0, 21, 0, 19, 0, 17), (0, 0)),
    "hybrid_3p1": ((0, 636), (0, 141), (0, 21, 0, 19, 0, 17, 0, 15), (0, 0)),
    "hybrid_4p1": ((0, 832), (0, 176), (0, 19, 0, 17, 0, 15, 0, 13), (0, 0)),
    "hybrid_5p1": ((0, 1200), (0, 160), (0, 17, 0, 15, 0, 13, 0, 11), (0, 0)),
}
# strategies.yml, `prune_strategy_hybrid_*_sb` (small/base: depths [2, 2, 15, 2]). The official
# `hybrid_3p1_sb` stage-3 list has 16 entries, its last (15) at block index 15, which a 15-block
# stage never reaches; it is stored here without that unreachable entry (same behaviour).
_VMAMBA_SMALL_BASE = {
    "hybrid_1p1_sb": ((0, 220), (0, 53), (0, 0, 0, 25, 0, 0, 0, 23, 0, 0, 0, 21, 0, 0, 19), (0, 0)),
    "hybrid_2p1_sb": ((0, 432), (0, 100), (0, 0, 0, 23, 0, 0, 0, 21, 0, 0, 0, 19, 0, 0, 17), (0, 0)),
    "hybrid_3p1_sb": ((0, 636), (0, 141), (0, 0, 0, 21, 0, 0, 0, 19, 0, 0, 0, 17, 0, 0, 0), (0, 0)),
    "hybrid_4p1_sb": ((0, 832), (0, 176), (0, 0, 0, 19, 0, 0, 0, 17, 0, 0, 0, 15, 0, 0, 13), (0, 0)),
    "hybrid_5p1_sb": ((0, 1200), (0, 160), (0, 0, 0, 17, 0, 0, 0, 15, 0, 0, 0, 13, 0, 0, 11), (0, 0)),
}
# scheduals.yml (PlainMamba-L2/L3; layer index -> target token count).
_PLAINMAMBA = {
    "schedual_1": {4: 169, 10: 144, 16: 100, 22: 81},
    "schedual_2": {4: 144, 10: 100, 16: 64, 22: 36},
    "schedual_3": {4: 100, 10: 64, 16: 36, 22: 16},
    "schedual_4": {4: 100, 10: 64, 16: 25, 22: 9},
    "schedual_5": {4: 64, 10: 36, 16: 16, 22: 9},
}
NAMES = (*_VMAMBA_TINY, *_VMAMBA_SMALL_BASE, *_PLAINMAMBA)
KEEP_PATTERN = re.compile(r"keep=(?P<keep>[0-9.]+)(,sites=(?P<sites>[0-9]+))?")
PAPER_LIKE_PATTERN = re.compile(r"paper_like=(?P<table>\w+)")

Depths = tuple[int, ...]
Grid = tuple[int, int]


class Site(NamedTuple):
    stage: int
    block: int
    in_hw: Grid
    out_hw: Grid


def _square_side(tokens: int, hw: Grid, where: str) -> Grid:
    side = math.isqrt(tokens)
    if side > min(hw):
        raise ValueError(
            f"schedule at {where}: a square of {tokens} tokens (side {side}) is not reachable from "
            f"the {hw[0]}×{hw[1]} grid; the target side must be at most {min(hw)}"
        )
    return side, side


@dataclasses.dataclass(frozen=True)
class PruneTable:
    """VMamba format: counts[stage][block] tokens removed; the output is isqrt(H·W - count)²."""

    counts: tuple[tuple[int, ...], ...]

    def check(self, depths: Depths) -> None:
        shape = tuple(len(stage) for stage in self.counts)
        if shape != tuple(depths):
            raise ValueError(
                f"schedule: a VMamba-format table needs one list per stage with one count per block, "
                f"i.e. lengths {tuple(depths)}; got lengths {shape}"
            )

    def target(self, depths: Depths, stage: int, block: int, hw: Grid) -> Grid:
        count = self.counts[stage][block]
        if count == 0:
            return tuple(hw)
        tokens = hw[0] * hw[1]
        if count >= tokens:
            raise ValueError(
                f"schedule at stage {stage}, block {block}: num_prune={count} is not smaller than "
                f"the {hw[0]}×{hw[1]} = {tokens} tokens of the grid (valid: 0 <= num_prune < {tokens})"
            )
        return _square_side(tokens - count, hw, f"stage {stage}, block {block}")


@dataclasses.dataclass(frozen=True)
class TargetTable:
    """PlainMamba format: {flat block index: target token count (a perfect square)}, sorted pairs."""

    tokens: tuple[tuple[int, int], ...]

    def check(self, depths: Depths) -> None:
        blocks = sum(depths)
        late = [layer for layer, _ in self.tokens if layer >= blocks]
        if late:
            raise ValueError(
                f"schedule: layer indices {late} do not exist in a backbone of {blocks} blocks "
                f"(valid: 0 .. {blocks - 1})"
            )

    def target(self, depths: Depths, stage: int, block: int, hw: Grid) -> Grid:
        layer = sum(depths[:stage]) + block
        tokens = dict(self.tokens).get(layer)
        if tokens is None or tokens == hw[0] * hw[1]:
            return tuple(hw)
        if tokens > hw[0] * hw[1]:
            raise ValueError(
                f"schedule at layer {layer}: target {tokens} tokens is more than the "
                f"{hw[0]}×{hw[1]} = {hw[0] * hw[1]} tokens of the grid"
            )
        return _square_side(tokens, hw, f"layer {layer}")


def candidate_blocks(depths: Depths) -> list[tuple[int, int]]:
    """Blocks a generated schedule may reduce at: every block but the first and, for hierarchical
    backbones, none in the last stage (its grid is already tiny), as in the official tables."""
    stages = range(len(depths) - 1) if len(depths) > 1 else range(1)
    return [(s, b) for s in stages for b in range(depths[s]) if (s, b) != (0, 0)]


def _square_keeping(fraction: float, hw: Grid, where: str) -> Grid:
    """The square grid that keeps about `fraction` of hw's tokens: side round(sqrt(fraction·H·W)),
    clamped to what every method can reach (at least ceil(H/2) and ceil(W/2), since SARF-ToMe
    merges at most one token per pair; at most min(H, W))."""
    height, width = hw
    low, high = max(height - height // 2, width - width // 2), min(height, width)
    if low > high:
        raise ValueError(
            f"{where}: no square target is reachable from the {height}×{width} grid "
            f"(side would need {low} <= side <= {high})"
        )
    side = min(max(round(math.sqrt(fraction * height * width)), low), high)
    return side, side


@dataclasses.dataclass(frozen=True)
class KeepSchedule:
    """Generated: `sites` blocks each keep keep**(1/sites) of their tokens, as a square grid.

    The sites are the first of the `candidate_blocks` and then every len(candidates)/sites-th one
    (VMamba: block 1 of stage 0, like the official `hybrid_*` tables). Each site's grid is
    `_square_keeping(q)` with q = keep**(1/sites): it keeps about q of its incoming tokens, so
    about `keep` of the tokens remain after the last site (less on small grids, where the rounding
    of the side compounds).
    """

    keep: float
    sites: int | None = None  # None: 4, or every candidate block of a backbone with fewer

    def __post_init__(self):
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"schedule: keep must be in (0, 1], got {self.keep}")
        if self.sites is not None and self.sites < 1:
            raise ValueError(f"schedule: sites must be >= 1, got {self.sites}")

    def site_blocks(self, depths: Depths) -> tuple[tuple[int, int], ...]:
        candidates = candidate_blocks(depths)
        sites = min(4, len(candidates)) if self.sites is None else self.sites
        if not 1 <= sites <= len(candidates):
            raise ValueError(
                f"schedule: sites={sites} but a backbone with depths {tuple(depths)} has "
                f"{len(candidates)} candidate blocks (valid: 1 .. {len(candidates)})"
            )
        count = len(candidates)
        return tuple(candidates[i * count // sites] for i in range(sites))

    def check(self, depths: Depths) -> None:
        self.site_blocks(depths)

    def target(self, depths: Depths, stage: int, block: int, hw: Grid) -> Grid:
        blocks = self.site_blocks(depths)
        if (stage, block) not in blocks:
            return tuple(hw)
        return _square_keeping(
            self.keep ** (1.0 / len(blocks)), hw, f"schedule {self.name} at stage {stage}, block {block}"
        )

    @property
    def name(self) -> str:
        return f"keep={self.keep}" + ("" if self.sites is None else f",sites={self.sites}")


# The grids the official tables were written for: VMamba-T/S/B and PlainMamba-L1/L2/L3 at 224 px.
_OFFICIAL_FIRST_GRID = {"vmamba": (56, 56), "plainmamba": (14, 14)}


@dataclasses.dataclass(frozen=True)
class PaperLike:
    """Generated: an official table's per-site keep fractions, applied to any backbone and grid.

    `paper_like=hybrid_2p1` reads what each site of the official table keeps on the grid it was
    written for (VMamba-T at 224 px: 56→52 keeps 86%, 26→24 85%, then 12→11→10→9→8 in stage 2),
    and gives each site the square grid that keeps that fraction of the grid it actually sees
    (`_square_keeping`). On a backbone with the table's own depths the sites stay where the table
    puts them, so at 224 px it is the official table; elsewhere they go, in order, to the
    `candidate_blocks` spread as evenly as `KeepSchedule` spreads its sites, and a backbone with
    fewer candidates than the table has sites takes the first ones only.
    """

    table: str

    def __post_init__(self):
        if self.table not in (*NAMES, *(name[: -len("_sb")] for name in _VMAMBA_SMALL_BASE)):
            raise ValueError(
                f"schedule: paper_like needs an official table name, got {self.table!r}; valid: {_valid_names()}"
            )

    @property
    def name(self) -> str:
        return f"paper_like={self.table}"

    def _official(self) -> list[tuple[Depths, tuple[Site, ...]]]:
        """(depths, reducing sites) of every official table this name stands for."""
        if self.table in _PLAINMAMBA:
            return [((24,), _reducing(trace(self.table, (24,), _OFFICIAL_FIRST_GRID["plainmamba"])))]
        names = [self.table] if self.table in _VMAMBA_SMALL_BASE else [self.table, self.table + "_sb"]
        tables = [_VMAMBA_TINY.get(name) or _VMAMBA_SMALL_BASE[name] for name in names]
        first = _OFFICIAL_FIRST_GRID["vmamba"]
        return [(tuple(map(len, t)), _reducing(trace(PruneTable(t), tuple(map(len, t)), first))) for t in tables]

    def fractions(self) -> tuple[float, ...]:
        """What each official site keeps of its incoming tokens, in order."""
        sites = self._official()[0][1]
        return tuple(_tokens(site.out_hw) / _tokens(site.in_hw) for site in sites)

    def site_fractions(self, depths: Depths) -> dict[tuple[int, int], float]:
        """(stage, block) -> kept fraction, for a backbone with `depths`."""
        for official_depths, sites in self._official():
            if official_depths == tuple(depths):
                return {(site.stage, site.block): _tokens(site.out_hw) / _tokens(site.in_hw) for site in sites}
        fractions, candidates = self.fractions(), candidate_blocks(depths)
        count, used = len(candidates), min(len(fractions), len(candidates))
        if not used:
            raise ValueError(f"schedule {self.name}: a backbone with depths {tuple(depths)} has no candidate block")
        return {candidates[i * count // used]: fractions[i] for i in range(used)}

    def check(self, depths: Depths) -> None:
        self.site_fractions(depths)

    def target(self, depths: Depths, stage: int, block: int, hw: Grid) -> Grid:
        fraction = self.site_fractions(depths).get((stage, block))
        if fraction is None:
            return tuple(hw)
        return _square_keeping(fraction, hw, f"schedule {self.name} at stage {stage}, block {block}")


def _tokens(hw: Grid) -> int:
    return hw[0] * hw[1]


def _reducing(sites: tuple[Site, ...]) -> tuple[Site, ...]:
    return tuple(site for site in sites if site.out_hw != site.in_hw)


Schedule = PruneTable | TargetTable | KeepSchedule | PaperLike


def _valid_names() -> str:
    return (
        ", ".join(NAMES)
        + ", hybrid_1p1 .. hybrid_5p1 (tiny or _sb by depths), keep=<ratio>[,sites=<N>], paper_like=<table name>"
    )


def parse(schedule) -> str | Schedule:
    """Validate a schedule given as a name, a VMamba table, a PlainMamba table or `keep=...`.

    Returns a hashable form: a known table name as is (it is resolved against the backbone's depths
    by `resolve`), a `PruneTable`, a `TargetTable`, a `KeepSchedule` or a `PaperLike`.
    """
    if isinstance(schedule, (PruneTable, TargetTable, KeepSchedule, PaperLike)):
        return schedule
    if isinstance(schedule, str):
        match = KEEP_PATTERN.fullmatch(schedule)
        if match:
            return KeepSchedule(float(match["keep"]), int(match["sites"]) if match["sites"] else None)
        match = PAPER_LIKE_PATTERN.fullmatch(schedule)
        if match:
            return PaperLike(match["table"])
        if schedule in NAMES:
            return schedule
        raise ValueError(f"schedule: unknown name {schedule!r}; valid: {_valid_names()}")
    if isinstance(schedule, Mapping):
        items = []
        for layer, tokens in schedule.items():
            if not (isinstance(layer, int) and layer >= 0 and isinstance(tokens, int) and tokens > 0):
                raise ValueError(
                    f"schedule: a PlainMamba-format table maps layer index (int >= 0) to target "
                    f"tokens (int > 0); got {layer!r}: {tokens!r}"
                )
            if math.isqrt(tokens) ** 2 != tokens:
                raise ValueError(
                    f"schedule: layer {layer} targets {tokens} tokens, which is not a square grid; "
                    f"targets must be perfect squares (e.g. {math.isqrt(tokens) ** 2})"
                )
            items.append((layer, tokens))
        return TargetTable(tuple(sorted(items)))
    if isinstance(schedule, Sequence) and all(isinstance(s, Sequence) for s in schedule):
        counts = tuple(tuple(stage) for stage in schedule)
        bad = [c for stage in counts for c in stage if not (isinstance(c, int) and c >= 0)]
        if bad:
            raise ValueError(f"schedule: VMamba-format counts must be ints >= 0; got {bad}")
        return PruneTable(counts)
    raise ValueError(
        f"schedule: expected a name ({_valid_names()}), a VMamba table [[num_prune per block] per "
        f"stage] or a PlainMamba table {{layer: tokens}}; got {schedule!r}"
    )


def resolve(schedule, depths: Sequence[int]) -> Schedule:
    """The concrete schedule for a backbone with `depths` blocks per stage, checked against them."""
    depths = tuple(depths)
    schedule = parse(schedule)
    if isinstance(schedule, str):
        if schedule in _PLAINMAMBA:
            schedule = parse(_PLAINMAMBA[schedule])
        elif schedule in _VMAMBA_SMALL_BASE:
            schedule = PruneTable(_VMAMBA_SMALL_BASE[schedule])
        else:
            tables = (_VMAMBA_TINY[schedule], _VMAMBA_SMALL_BASE[schedule + "_sb"])
            fits = [t for t in tables if tuple(map(len, t)) == depths]
            if not fits:
                raise ValueError(
                    f"schedule {schedule!r} exists for depths (2, 2, 8, 2) (tiny) and (2, 2, 15, 2) "
                    f"(small/base); the backbone has depths {depths}"
                )
            schedule = PruneTable(fits[0])
    schedule.check(depths)
    return schedule


def next_stage_grid(stage: int, hw: Grid, next_stage_hw=None) -> Grid:
    """The grid after the downsample that ends `stage`: `next_stage_hw(stage, hw)` when given,
    else halved rounding up (VMamba's stride-2 3x3 conv / padded patch merging)."""
    if next_stage_hw is not None:
        return tuple(next_stage_hw(stage, hw))
    return (hw[0] + 1) // 2, (hw[1] + 1) // 2


def trace(schedule, depths: Sequence[int], in_hw: Grid, *, method: str | None = None, next_stage_hw=None):
    """Every block's grid before and after reduction, for a backbone whose first stage sees `in_hw`.

    Between stages the grid goes through `next_stage_grid`. With `method`, each reducing site is
    also checked to be reachable by that method.
    """
    depths = tuple(depths)
    schedule = resolve(schedule, depths)
    hw = tuple(in_hw)
    sites = []
    for stage, depth in enumerate(depths):
        if stage > 0:
            hw = next_stage_grid(stage - 1, hw, next_stage_hw)
        for block in range(depth):
            out_hw = tuple(schedule.target(depths, stage, block, hw))
            if method is not None and out_hw != hw:
                check_target(method, hw, out_hw)
            sites.append(Site(stage, block, hw, out_hw))
            hw = out_hw
    return tuple(sites)
