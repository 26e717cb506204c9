"""The training state: one pytree that is sharded, checkpointed and donated as a whole.

    {"step": int32, "params": nnx.State (Params), "model_state": nnx.State (BatchStats, ...),
     "opt_state": optax state, "ema": nnx.State (only when config.ema_decay > 0)}

The model's structure (its GraphDef) is kept apart; RNG streams are not part of the state
because every step reseeds them from (seed, step) (see step.py), which makes resume exact.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sarf_jax import models, parallel
from sarf_jax.models import pretrained


@dataclasses.dataclass(frozen=True)
class ModelRecipe:
    """How to build the model: what models.create needs; also written to the workdir's model.json
    for eval. (Not a reduction.Spec.)"""

    name: str
    num_classes: int
    img_size: int
    in_chans: int
    overrides: dict

    def build(self, *, seed: int, dtype: str = "float32") -> nnx.Module:
        extra = {} if dtype == "float32" else {"dtype": jnp.dtype(dtype)}
        return models.create(
            self.name,
            num_classes=self.num_classes,
            img_size=self.img_size,
            in_chans=self.in_chans,
            rngs=nnx.Rngs(params=seed, dropout=seed + 1),
            **self.overrides,
            **extra,
        )


def split_model(model: nnx.Module):
    """(graphdef, params, rng_state, model_state)."""
    return nnx.split(model, nnx.Param, nnx.RngState, ...)


@dataclasses.dataclass
class ModelParts:
    """What the step functions need besides the train state: the model's structure (graphdef), its
    RNG streams, and the train state's shardings and abstract shapes (for restoring checkpoints)."""

    graphdef: nnx.GraphDef
    rng_state: nnx.State
    state_shardings: dict
    abstract_state: dict


def init_train_state(recipe: ModelRecipe, config, tx: optax.GradientTransformation, mesh):
    """(train state placed on the mesh, ModelParts). The parameters are created by a jitted function
    with the sharded layout as its output, so no device ever holds a full unsharded copy."""

    def init():
        _, params, rng_state, model_state = split_model(recipe.build(seed=config.seed, dtype=config.dtype))
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "model_state": model_state,
            "opt_state": tx.init(params),
        }
        if config.ema_decay > 0:
            state["ema"] = jax.tree.map(jnp.copy, params)
        return state, rng_state

    abstract_state, abstract_rngs = jax.eval_shape(init)
    shardings = parallel.param_shardings(abstract_state, mesh)
    rng_shardings = jax.tree.map(lambda _: parallel.replicated(mesh), abstract_rngs)
    state, rng_state = jax.jit(init, out_shardings=(shardings, rng_shardings))()
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: recipe.build(seed=config.seed, dtype=config.dtype)))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
    return state, ModelParts(graphdef, rng_state, shardings, abstract)


def load_initial_params(
    state: dict, parts: ModelParts, directory: str, *, weights: str = "params", img_size: int | None = None
) -> dict:
    """Replace params (and EMA) by the weights of a model directory or a training workdir.

    `weights="ema"` takes a workdir's EMA weights; `img_size` (the configured model's) resizes
    position embeddings, so that a model trained at one resolution continues at another."""
    model = pretrained.load_pretrained(directory, weights=weights, img_size=img_size)
    _, params, _, model_state = split_model(model)
    expected = jax.tree.map(lambda x: (x.shape, x.dtype), state["params"])
    found = jax.tree.map(lambda x: (x.shape, x.dtype), params)
    if jax.tree.structure(expected) != jax.tree.structure(found) or expected != found:
        raise ValueError(
            f"config.init_from={directory!r}: its weights do not fit the configured model "
            "(different variant, overrides or classes)"
        )
    params = jax.device_put(params, parts.state_shardings["params"])
    state = dict(state, params=params)
    if "ema" in state:
        state["ema"] = jax.tree.map(jnp.copy, params)
    if jax.tree.leaves(model_state):
        state["model_state"] = jax.device_put(model_state, parts.state_shardings["model_state"])
    return state
