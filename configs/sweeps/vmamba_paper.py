r"""The paper's VMamba sweep: budget tables hybrid_1p1 ... hybrid_5p1 for SARF and the baselines.

    python eval.py --workdir DIR --sweep configs/sweeps/vmamba_paper.py

A bare `hybrid_Np1` resolves to the tiny table (depths 2-2-8-2) or the small/base one (2-2-15-2)
by the model's depths. EViT and ToMe are the ViT methods the paper shows collapsing on VMamba;
`random` is a reference point for "no importance at all".
"""

import ml_collections

METHODS = ("sarf_tome", "sarf_evit", "evit", "tome", "random")
SCHEDULES = tuple(f"hybrid_{i}p1" for i in range(1, 6))


def get_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(reductions=["none"] + [f"{method}:{schedule}" for method in METHODS for schedule in SCHEDULES])
    )
