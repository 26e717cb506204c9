"""`describe(model, spec, img_size)`: what a reduction spec does to a model, site by site."""

from __future__ import annotations

from sarf_jax.analysis.flops import model_gflops


def describe(model, spec, img_size: int, *, in_chans: int | None = None) -> str:
    """A table of every reducing block (grid before -> after, tokens kept) and the GFLOPs saved.

    `model` is any sarf_jax backbone (concrete or from nnx.eval_shape); nothing is computed, the
    FLOPs are counted on the traced program (sarf_jax.analysis.flops).
    """
    in_chans = in_chans if in_chans is not None else getattr(model, "in_chans", 3)
    sites = model.reduction_sites(spec) or ()
    lines = [
        f"{type(model).__name__} at {img_size} px, reduction {spec}",
        f"{'stage':>5} {'block':>5}  {'grid before':>11} -> {'after':<9} {'kept':>6}",
    ]
    for site in sites:
        if site.out_hw == site.in_hw:
            continue
        kept = site.out_hw[0] * site.out_hw[1] / (site.in_hw[0] * site.in_hw[1])
        before = f"{site.in_hw[0]}x{site.in_hw[1]}"
        after = f"{site.out_hw[0]}x{site.out_hw[1]}"
        lines.append(f"{site.stage:>5} {site.block:>5}  {before:>11} -> {after:<9} {kept:>6.1%}")
    if len(lines) == 2:
        lines.append("  (no block changes its grid)")
    dense = model_gflops(model, img_size, in_chans=in_chans)
    reduced = model_gflops(model, img_size, in_chans=in_chans, reduction=spec)
    lines.append(f"GFLOPs {dense:.3f} -> {reduced:.3f} ({1 - reduced / dense:.1%} fewer)")
    return "\n".join(lines)
