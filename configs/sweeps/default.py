r"""The evaluation that ends `make train`: configs/default.py's model dense and under SARF and the
ViT methods at one paper-like budget, training-free, EMA weights.

    python eval.py --workdir runs/default --sweep configs/sweeps/default.py --weights ema

`paper_like=hybrid_2p1` keeps, at each site, the fraction of tokens that the official VMamba-T
table `hybrid_2p1` keeps at its sites (56→52: 86%, ...); on the default model's 7x7 first stage that is one
site, 7→6 after stage 0's second block. The four methods reach the same grids, so they are
compared at matched GFLOPs.
"""

import ml_collections

METHODS = ("sarf_tome", "sarf_evit", "evit", "tome")
BUDGET = "paper_like=hybrid_2p1"


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(reductions=["none"] + [f"{method}:{BUDGET}" for method in METHODS]))
