"""The jitted train step (a pure function of the train state and a global batch); evaluation is
evaluate.sharded's.

Train step: normalise uint8 images on the device -> smoothed one-hot targets -> mixup/cutmix ->
forward (optionally under a reduction spec) -> cross-entropy -> gradients, accumulated over
`grad_accum_steps` micro-batches with lax.scan -> clip + AdamW -> EMA. A step whose loss or
gradient norm is not finite leaves the state untouched (step counter included), so a bad batch
can never reach a checkpoint; the loop sees the non-finite loss and stops.

Randomness (drop-path, dropout, mixup) comes from fold_in(key(seed), step): a resumed run draws
exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sarf_jax.data import mixup_cutmix, normalize
from sarf_jax.ops import compiler_options
from sarf_jax.parallel import path_string
from sarf_jax.reduction import parse_spec
from sarf_jax.train.state import split_model


def _reseed_policy(path, key, shape):
    """Each RNG stream gets its own key: the step key folded with a hash of the stream's path."""
    return jax.random.fold_in(key, zlib.crc32(path_string(path).encode()) & 0x7FFFFFFF)


def apply_model(parts, params, model_state, images, *, train: bool, key=None, reduction=None):
    """(logits float32, new model_state)."""
    # Fresh Variables owned by this trace: the model mutates its RNG counts and BatchNorm statistics,
    # and nnx refuses to mutate Variables made at an outer trace level (jit around grad).
    fresh = lambda tree: jax.tree.map(lambda x: x, tree)
    model = nnx.merge(parts.graphdef, params, fresh(parts.rng_state), fresh(model_state))
    if key is not None:
        nnx.reseed(model, dropout=key, policy=_reseed_policy)
    logits = model(images, reduction=reduction, train=train)
    return logits.astype(jnp.float32), split_model(model)[3]


def make_train_step(
    parts, config, tx: optax.GradientTransformation, schedule, *, num_classes: int, mean, std, batch_sharding
):
    """jitted (state, batch) -> (state, metrics); the state is donated."""
    accum = config.grad_accum_steps
    base_key = jax.random.key(config.seed)
    grad_fn = _loss_and_grad_fn(parts, parse_spec(config.reduction))

    def train_step(state, batch):
        step_key = jax.random.fold_in(base_key, state["step"])
        labels = batch["label"]
        images, targets = _mixed_inputs(batch, step_key, config, num_classes=num_classes, mean=mean, std=std)
        loss, correct, grads, model_state = _batch_gradients(
            grad_fn, state["params"], state["model_state"], images, targets, labels, step_key, accum
        )
        new_state, grad_norm = _optimizer_step(state, grads, model_state, tx, config.ema_decay)
        new_state = _unless_non_finite(new_state, state, loss, grad_norm)
        metrics = {
            "loss": loss,
            "accuracy": correct / labels.shape[0],
            "grad_norm": grad_norm,
            "lr": schedule(state["step"]),
        }
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(parts.state_shardings, batch_sharding),
        out_shardings=(parts.state_shardings, None),
        donate_argnums=0,
        compiler_options=compiler_options(),
    )


def _loss_and_grad_fn(parts, reduction):
    """(params, model_state, images, targets, key) -> ((loss, (logits, model_state)), grads): the
    logits count correct predictions and the model state carries BatchNorm statistics forward."""

    def loss_fn(params, model_state, images, targets, key):
        logits, model_state = apply_model(parts, params, model_state, images, train=True, key=key, reduction=reduction)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        return loss, (logits, model_state)

    return jax.value_and_grad(loss_fn, has_aux=True)


def _mixed_inputs(batch, step_key, config, *, num_classes: int, mean, std):
    """(images, targets): uint8 images normalised on the device and smoothed one-hot targets, both
    mixed by mixup/cutmix with the step's stream 0."""
    data = config.data
    images = normalize(batch["image"], mean, std)
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes), config.label_smoothing)
    return mixup_cutmix(
        jax.random.fold_in(step_key, 0),
        images,
        targets,
        mixup_alpha=data.mixup_alpha,
        cutmix_alpha=data.cutmix_alpha,
        switch_prob=data.mix_switch_prob,
    )


def _batch_gradients(grad_fn, params, model_state, images, targets, labels, step_key, accum: int):
    """(mean loss, correct predictions, mean gradients, new model_state) of the whole batch: one
    pass with the step's stream 1, or `accum` micro-batches."""
    if accum == 1:
        (loss, (logits, model_state)), grads = grad_fn(
            params, model_state, images, targets, jax.random.fold_in(step_key, 1)
        )
        return loss, jnp.sum(jnp.argmax(logits, -1) == labels), grads, model_state
    return _accumulated_gradients(grad_fn, params, model_state, images, targets, labels, step_key, accum)


def _micro_batches(x, accum: int):
    """(accum, rows / accum, ...): micro-batch i = rows i, i + accum, ...: each device keeps its own
    rows (no resharding)."""
    return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)


def _accumulated_gradients(grad_fn, params, model_state, images, targets, labels, step_key, accum: int):
    """`_batch_gradients` over `accum` micro-batches, one at a time (lax.scan), so that only one
    micro-batch's activations are alive; micro-batch i draws the step's stream 1 + i."""

    def body(carry, inputs):
        grads_sum, loss_sum, correct_sum, model_state = carry
        index, images, targets, labels = inputs
        (loss, (logits, model_state)), grads = grad_fn(
            params, model_state, images, targets, jax.random.fold_in(step_key, 1 + index)
        )
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        correct_sum = correct_sum + jnp.sum(jnp.argmax(logits, -1) == labels)
        return (grads_sum, loss_sum + loss, correct_sum, model_state), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    carry = (zeros, jnp.float32(0), jnp.int32(0), model_state)
    inputs = (jnp.arange(accum), *(_micro_batches(x, accum) for x in (images, targets, labels)))
    (grads, loss, correct, model_state), _ = jax.lax.scan(body, carry, inputs)
    grads = jax.tree.map(lambda g: g / accum, grads)
    return loss / accum, correct, grads, model_state


def _optimizer_step(state, grads, model_state, tx: optax.GradientTransformation, ema_decay: float):
    """(the state after one optimizer update and EMA update, the gradient norm before clipping)."""
    params = state["params"]
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    new_state = {
        "step": state["step"] + 1,
        "params": new_params,
        "model_state": model_state,
        "opt_state": opt_state,
    }
    if "ema" in state:
        new_state["ema"] = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, state["ema"], new_params)
    return new_state, grad_norm


def _unless_non_finite(new_state, state, loss, grad_norm):
    """`new_state`, or `state` itself (step counter included) when the loss or the gradient norm is
    not finite: a bad batch never reaches a checkpoint."""
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    return jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
