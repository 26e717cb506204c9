"""AdamW with linear warm-up and cosine decay, gradient clipping and the official recipes'
weight-decay exclusions.

No weight decay on (timm's optimizer factory as the Vim / VMamba / PlainMamba scripts call it,
plus their `no_weight_decay()` sets and mamba_ssm's `_no_weight_decay` flags):
- every parameter with at most one dimension (norm scales and biases, biases, D, layer scales),
- any bias (e.g. VMamba's stacked `dt_projs_bias`),
- A_log (and Vim's A_b_log, VMamba's A_logs), D / D_b / Ds,
- position embeddings and class tokens.
"""

from __future__ import annotations

import re

import jax
import optax

from sarf_jax.parallel import path_string

NO_DECAY = re.compile(r"(^|/)(A(_b)?_log|A_logs|D(_b)?|Ds|pos_embed|cls_token|dist_token)$|bias$")


def decays(path: str, ndim: int) -> bool:
    """Whether the parameter at `path` gets weight decay."""
    return ndim > 1 and not NO_DECAY.search(path)


def weight_decay_mask(params):
    """Tree of bools shaped like `params`: True where AdamW applies weight decay."""
    return jax.tree_util.tree_map_with_path(lambda path, x: decays(path_string(path), x.ndim), params)


def learning_rate_schedule(optimizer_config, total_steps: int) -> optax.Schedule:
    """0 -> lr linearly over warmup_steps, then cosine to min_lr at total_steps."""
    warmup = min(optimizer_config.warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optimizer_config.lr,
        warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1),
        end_value=optimizer_config.min_lr,
    )


def make_optimizer(optimizer_config, total_steps: int) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) (when > 0), then AdamW with the decay mask."""
    adamw = optax.adamw(
        learning_rate_schedule(optimizer_config, total_steps),
        b1=optimizer_config.b1,
        b2=optimizer_config.b2,
        eps=optimizer_config.eps,
        weight_decay=optimizer_config.weight_decay,
        mask=weight_decay_mask,
    )
    if optimizer_config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(optimizer_config.grad_clip), adamw)
    return adamw
