r"""Keep-ratio sweep for the *_mini models (14x14 token grids at 28x28): what `make reproduce` runs.

    python eval.py --workdir runs/reproduce/vmamba_mini --sweep configs/sweeps/mini.py

The minis have 4 blocks on a 14x14 grid, too shallow for the paper's gradual tables: the sites
are blocks 1-3 (VMamba: stage 0 block 1, stage 1 blocks 0-1). Three levels: one site after
block 1's mixer (14x14 -> 11x11), two sites (-> 11x11 -> 8x8) and three (-> 11x11 -> 8x8 -> 6x6;
VMamba 14 -> 11, then 6 -> 5 -> 4 after the downsample). Each step keeps at least half the
tokens, so ToMe's bipartite matching reaches every target. Same schedule, same grids: the methods
are compared at matched GFLOPs.
"""

import ml_collections

METHODS = ("sarf_tome", "sarf_evit", "evit", "tome")
SCHEDULES = ("keep=0.6,sites=1", "keep=0.35,sites=2", "keep=0.2")


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(reductions=["none"] + [f"{method}:{schedule}" for method in METHODS for schedule in SCHEDULES])
    )
