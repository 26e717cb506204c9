r"""The paper's budgets on the paper-like minis (`vmamba_paper_mini`, `plainmamba_paper_mini`):
the start of `make reproduce` v2's sweep.

    python eval.py --workdir DIR --sweep configs/sweeps/paper_mini.py --weights ema

`paper_like=hybrid_Np1` gives each site the fraction of tokens that the official VMamba-T table
keeps at its site. On the minis' 14x14 grid those are one-row steps: 14→13→12→11→10 (and →9)
for the first two budgets, 14→12→… for the third. GFLOPs saved (sarf_tome; EViT and ToMe reach
the same grids), as registered: vmamba_paper_mini 27%, 33%, 45%; plainmamba_paper_mini 23%, 31%, 39%.
"""

import ml_collections

METHODS = ("sarf_tome", "sarf_evit", "evit", "tome")
BUDGETS = ("paper_like=hybrid_1p1", "paper_like=hybrid_2p1", "paper_like=hybrid_3p1")


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(reductions=["none"] + [f"{method}:{budget}" for method in METHODS for budget in BUDGETS])
    )
