"""Every family's training-step gradient traces with the batch split over an explicit mesh
(`jax.make_mesh`'s default axis type, under `jax.set_mesh`), dense and with SARF active: what a
JAX project that imports these modules into its own explicitly sharded code does. Arrays the
models make themselves (the class token, the scan's zero states) must take the batch's sharding.
A subprocess, since it needs two CPU devices."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 2)
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from sarf_jax import models, reduction

    FAMILIES = {"vim_mini": dict(depth=2), "vmamba_mini": dict(depths=(1, 1, 1)),
                "plainmamba_mini": dict(depth=2), "vit_mini": dict(depth=2)}
    mesh = jax.make_mesh((2,), ("data",))
    replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    for name, overrides in FAMILIES.items():
        model = models.create(name, num_classes=10, img_size=28, in_chans=1, rngs=nnx.Rngs(0), **overrides)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        for spec in (None, reduction.parse_spec("sarf_tome:keep=0.6,sites=1")):
            def loss(params, rest, images):
                model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
                return jnp.mean(model(images, train=True, reduction=spec))
            with jax.set_mesh(mesh):
                images = jax.device_put(jnp.ones((4, 28, 28, 1)), batch)
                args = (jax.device_put(params, replicated), jax.device_put(rest, replicated), images)
                jax.jit(jax.grad(loss)).trace(*args)
    print("OK")
""")


def test_training_step_traces_with_the_batch_split_over_an_explicit_mesh():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
