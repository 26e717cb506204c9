r"""The paper's PlainMamba sweep: target tables schedual_1 ... schedual_5 (the official spelling).

    python eval.py --workdir DIR --sweep configs/sweeps/plainmamba_paper.py

The tables name layers 4, 10, 16 and 22 (PlainMamba-L2/L3 depth 24 or 36) and token counts for a
14x14 grid (224 px, patch 16). EViT and ToMe are the ViT methods the paper compares against.
ToMe's bipartite matching removes at most half the tokens at one site, so it cannot reach
schedual_3 (36 -> 16 tokens at layer 22), schedual_4 (64 -> 25 at layer 16) or schedual_5
(196 -> 64 at layer 4); it runs on schedual_1 and schedual_2.
"""

import ml_collections

METHODS = ("sarf_tome", "sarf_evit", "evit", "random")
SCHEDULES = tuple(f"schedual_{i}" for i in range(1, 6))
TOME_SCHEDULES = SCHEDULES[:2]


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            reductions=["none"]
            + [f"{method}:{schedule}" for method in METHODS for schedule in SCHEDULES]
            + [f"tome:{schedule}" for schedule in TOME_SCHEDULES]
        )
    )
