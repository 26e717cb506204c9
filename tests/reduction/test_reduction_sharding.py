"""Plans under a batch-sharded mesh (2 CPU devices, in a subprocess so that the device count can be
set before JAX starts): same result as unsharded, output still sharded over the batch, for both
Explicit and Auto mesh axis types."""

import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import functools
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
    from sarf_jax import reduction

    assert jax.device_count() == 2, jax.devices()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 7, 8, 6)), jnp.float32)
    cases = [("sarf_tome", (5, 4), {"merge": "mean"}), ("sarf_evit", (5, 4), {"window": 3}),
             ("random", (5, 4), {}), ("tome", (7, 6), {"tome_prune": False}),
             ("sarf_tome", (7, 8), {})]  # the last: zero budget, the identity plan
    runs = [jax.jit(functools.partial(reduction.reduce_grid, method=method, out_hw=out_hw, **options))
            for method, out_hw, options in cases]
    unsharded = [run(x) for run in runs]
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        mesh = jax.make_mesh((2,), ("data",), axis_types=(axis_type,))
        for (method, _, _), run, expected in zip(cases, runs, unsharded):
            with jax.set_mesh(mesh):
                got = run(jax.device_put(x, NamedSharding(mesh, P("data"))))
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=method)
            assert got.sharding.spec[0] == "data", (method, got.sharding)
    print("ok")
""")


def test_plans_work_under_a_batch_sharded_mesh():
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
