"""Speed and memory of the selective scan and the Mamba mixer, with their PyTorch peers.

Prints one JSON object per line:
  {"bench": "scan", ...}   every selective_scan impl, and mambapy's pscan (torch) on the same math;
                           the `pallas` row runs the kernel in interpret mode on a CPU
                           ("interpret": true): a correctness path whose time says nothing about
                           the kernel (benchmarks/scan_gpu.py times it on an accelerator);
  {"bench": "mixer", ...}  sarf_jax.nn.Mamba and transformers' MambaMixer (torch CPU, its
                           pure-PyTorch path) with the same sizes, timed in alternation;
  {"bench": "summary", ...} the ratios the foundation issue sets targets for, as measured here;
  {"bench": "layer", ...}  with --layers: `chunked` at the VMamba-T stage shapes and a Vim-S layer
                           (batch 8, float32), forward and forward + backward.
Times are medians over --repeats runs after a warm-up; compile time and XLA temp bytes come from
`jax.jit(...).lower(...).compile()` and `compiled.memory_analysis()`.

    .venv/bin/python benchmarks/scan.py            # the issue's shapes
    .venv/bin/python benchmarks/scan.py --quick    # tiny shapes, a smoke run
    .venv/bin/python benchmarks/scan.py --only mixer layers   # the mixer and the model layers only
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sarf_jax.analysis import machine_info, median_seconds
from sarf_jax.nn import Mamba
from sarf_jax.ops import compiler_options, selective_scan
from sarf_jax.ops.scan_chunked import default_chunk_size
from sarf_jax.ops.selective_scan import resolve_impl

SCAN_IMPLS = ("reference", "associative", "chunked", "pallas")
MIXER_BLOCK = 3  # calls of each function per round of the mixer comparison (the first not kept)
# name -> (batch, length, channels, state, groups): VMamba-T's four stages at 224 px (channels =
# d_inner x K = 4 directions, B/C grouped by direction, no z) and one Vim-S layer (z gated)
LAYERS = {
    "vmamba_t_stage0": (8, 3136, 384, 1, 4),
    "vmamba_t_stage1": (8, 784, 768, 1, 4),
    "vmamba_t_stage2": (8, 196, 1536, 1, 4),
    "vmamba_t_stage3": (8, 49, 3072, 1, 4),
    "vim_s": (8, 197, 768, 16, None),
}


def machine() -> dict:
    import torch

    return {**machine_info(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def median_ms(fn, repeats: int) -> float:
    return 1e3 * median_seconds(fn, repeats)


def compiled_jax(fn, *args):
    """(compiled, compile seconds, XLA temp bytes) of jax.jit(fn) for these arguments, with the
    compiler options sarf_jax's own steps use."""
    lowered = jax.jit(fn, compiler_options=compiler_options()).lower(*args)
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    return compiled, compile_s, compiled.memory_analysis().temp_size_in_bytes


def interleaved_ms(fns: dict, repeats: int, block: int = MIXER_BLOCK) -> dict:
    """Median ms of each fn, called in turn after one warm-up round: each round calls every fn
    `block` times in a row and keeps all but the first of them. On a shared machine load then
    hits every fn alike, so their ratios hold; and each kept call runs warm, as repeated calls
    do. (A call straight after the other framework's pays for cold caches and parked threads:
    on the 2-core VM nn.Mamba's forward took 26-40 ms right after torch's backward and 7-9 ms on
    the next calls; `first_call_ms` reports those first calls.)"""
    times = {name: [] for name in fns}
    first = {name: [] for name in fns}
    for round_index in range(repeats + 1):
        for name, fn in fns.items():
            for call in range(block):
                start = time.perf_counter()
                fn()
                if round_index:
                    (times[name] if call else first[name]).append(time.perf_counter() - start)
    median = lambda t: 1e3 * float(np.median(t))
    return {name: median(t or first[name]) for name, t in times.items()}, {n: median(t) for n, t in first.items()}


def time_jax(fn, args, repeats):
    compiled, compile_s, temp = compiled_jax(fn, *args)
    ms = median_ms(lambda: jax.block_until_ready(compiled(*args)), repeats)
    return ms, compile_s, temp


def scan_inputs(batch, length, channels, state, dtype, seed=0, *, groups=None, gated=True):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
    bc_shape = (batch, length, state) if groups is None else (batch, length, groups, state)
    return dict(
        u=normal(batch, length, channels),
        delta=normal(batch, length, channels) * 0.5,
        A=-jnp.exp(jnp.asarray(rng.standard_normal((channels, state)), jnp.float32) * 0.5),
        B=normal(*bc_shape),
        C=normal(*bc_shape),
        D=jnp.ones((channels,), jnp.float32),
        z=normal(batch, length, channels) if gated else None,
        delta_bias=jnp.asarray(rng.uniform(-4, -2, channels), jnp.float32),
    )


def bench_layer(name, impl, repeats, chunk_size=None):
    """One model layer's scan (LAYERS[name]), float32: forward and forward + backward ms."""
    batch, length, channels, state, groups = LAYERS[name]
    inputs = {k: v for k, v in scan_inputs(batch, length, channels, state, jnp.float32, groups=groups,
                                            gated=groups is None).items() if v is not None}  # fmt: skip
    names, args = tuple(inputs), tuple(inputs.values())
    forward = lambda *a: selective_scan(**dict(zip(names, a)), delta_softplus=True, impl=impl, chunk_size=chunk_size)
    cotangent = jnp.ones((batch, length, channels), jnp.float32)
    grads = lambda *a: jax.grad(lambda *b: jnp.sum(forward(*b) * cotangent), argnums=tuple(range(len(a))))(*a)
    fwd_ms, _, _ = time_jax(forward, args, repeats)
    fb_ms, _, fb_temp = time_jax(grads, args, repeats)
    return {
        "bench": "layer",
        "layer": name,
        "impl": resolve_impl(impl),
        "chunk_size": chunk_size or default_chunk_size(state),
        "shape": dict(zip(("batch", "length", "channels", "state", "groups"), LAYERS[name])),
        "forward_ms": fwd_ms,
        "forward_backward_ms": fb_ms,
        "temp_bytes_forward_backward": fb_temp,
    }


def bench_scan(impl, shape, dtype, repeats):
    inputs = scan_inputs(*shape, dtype)
    names = tuple(inputs)

    def forward(*args):
        return selective_scan(**dict(zip(names, args)), delta_softplus=True, impl=impl)

    cotangent = jnp.ones(shape[:3], dtype)

    def forward_backward(*args):
        return jax.grad(
            lambda *a: jnp.sum(forward(*a) * cotangent).astype(jnp.float32), argnums=tuple(range(len(args)))
        )(*args)

    args = tuple(inputs.values())
    fwd_ms, fwd_compile, fwd_temp = time_jax(forward, args, repeats)
    fb_ms, fb_compile, fb_temp = time_jax(forward_backward, args, repeats)
    batch, length, channels, state = shape
    one_state_tensor = 4 * batch * length * channels * state
    pallas = resolve_impl(impl).startswith("pallas")
    return {
        "bench": "scan",
        "impl": impl,
        "resolved_impl": resolve_impl(impl),
        "interpret": pallas and jax.default_backend() == "cpu",
        "chunk_size": default_chunk_size(shape[3]) if resolve_impl(impl) == "chunked" else None,
        "shape": dict(zip(("batch", "length", "channels", "state"), shape)),
        "dtype": jnp.dtype(dtype).name,
        "forward_ms": fwd_ms,
        "forward_backward_ms": fb_ms,
        "compile_s": fwd_compile + fb_compile,
        "temp_bytes_forward": fwd_temp,
        "temp_bytes_forward_backward": fb_temp,
        "temp_forward_backward_per_state_tensor": fb_temp / one_state_tensor,
    }


def bench_mambapy_scan(shape, repeats):
    """mambapy's parallel scan with the same discretisation and readout, in torch (CPU)."""
    import torch
    from mambapy.pscan import pscan

    inputs = {k: torch.tensor(np.asarray(v, np.float32)) for k, v in scan_inputs(*shape, jnp.float32).items()}

    def forward(u, delta, A, B, C, D, z, delta_bias):
        delta = torch.nn.functional.softplus(delta + delta_bias)
        decay = torch.exp(delta.unsqueeze(-1) * A)
        drive = (delta * u).unsqueeze(-1) * B.unsqueeze(2)
        states = pscan(decay, drive)
        y = (states @ C.unsqueeze(-1)).squeeze(-1) + D * u
        return y * torch.nn.functional.silu(z)

    def run_forward():
        with torch.no_grad():
            forward(**inputs)

    def run_forward_backward():
        args = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
        forward(**args).sum().backward()

    return {
        "bench": "scan",
        "impl": "mambapy.pscan (torch)",
        "shape": dict(zip(("batch", "length", "channels", "state"), shape)),
        "dtype": "float32",
        "forward_ms": median_ms(run_forward, repeats),
        "forward_backward_ms": median_ms(run_forward_backward, repeats),
    }


def bench_mixer(batch, length, d_model, repeats):
    """sarf_jax.nn.Mamba vs transformers' MambaMixer, both computing input and parameter grads."""
    import torch
    from transformers import MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer

    config = MambaConfig(
        hidden_size=d_model,
        state_size=16,
        expand=2,
        conv_kernel=4,
        time_step_rank="auto",
        use_bias=False,
        use_conv_bias=True,
        hidden_act="silu",
    )
    mixer = MambaMixer(config, layer_idx=0).eval()
    x_np = np.random.default_rng(0).standard_normal((batch, length, d_model)).astype(np.float32)
    x_torch = torch.tensor(x_np)

    def torch_forward():
        with torch.no_grad():
            mixer(x_torch)

    def torch_forward_backward():
        mixer.zero_grad()
        x = x_torch.clone().requires_grad_(True)
        mixer(x).sum().backward()

    model = Mamba(d_model, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    x = jnp.asarray(x_np)

    def forward(params, x):
        return nnx.merge(graphdef, params)(x)

    def forward_backward(params, x):
        return jax.grad(lambda p, x: jnp.sum(forward(p, x)), argnums=(0, 1))(params, x)

    forward_c, fwd_compile, _ = compiled_jax(forward, params, x)
    forward_backward_c, fb_compile, _ = compiled_jax(forward_backward, params, x)
    ms, first_ms = interleaved_ms(
        {
            "jax_forward": lambda: jax.block_until_ready(forward_c(params, x)),
            "jax_forward_backward": lambda: jax.block_until_ready(forward_backward_c(params, x)),
            "torch_forward": torch_forward,
            "torch_forward_backward": torch_forward_backward,
        },
        repeats,
    )
    shape = {"batch": batch, "length": length, "d_model": d_model, "d_state": 16, "expand": 2}
    return [
        {
            "bench": "mixer",
            "impl": "sarf_jax.nn.Mamba",
            "scan_impl": resolve_impl("auto"),
            "shape": shape,
            "forward_ms": ms["jax_forward"],
            "forward_backward_ms": ms["jax_forward_backward"],
            "first_call_ms": {"forward": first_ms["jax_forward"], "forward_backward": first_ms["jax_forward_backward"]},
            "calls_per_round": MIXER_BLOCK,
            "compile_s": fwd_compile + fb_compile,
        },
        {
            "bench": "mixer",
            "impl": "transformers.MambaMixer (torch)",
            "shape": shape,
            "forward_ms": ms["torch_forward"],
            "forward_backward_ms": ms["torch_forward_backward"],
            "first_call_ms": {
                "forward": first_ms["torch_forward"],
                "forward_backward": first_ms["torch_forward_backward"],
            },
            "calls_per_round": MIXER_BLOCK,
        },
    ]


def run_only(benches, mixer_shape, repeats):
    """The chosen benches' rows, without the summary (it needs every scan impl)."""
    if "layers" in benches:
        for name in LAYERS:
            print(json.dumps(bench_layer(name, "chunked", repeats)), flush=True)
    if "mixer" in benches:
        rows = bench_mixer(*mixer_shape, repeats)
        for row in rows:
            print(json.dumps(row), flush=True)
        ours, theirs = rows
        ratio = {
            "bench": "mixer_ratio",
            "forward_speedup_vs_transformers": theirs["forward_ms"] / ours["forward_ms"],
            "forward_backward_speedup_vs_transformers": theirs["forward_backward_ms"] / ours["forward_backward_ms"],
        }
        print(json.dumps(ratio), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks the script runs")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", nargs="*", choices=("mixer", "layers"), default=None,
                        help="run these benches only (default: every impl, the mixer and the summary)")  # fmt: skip
    parser.add_argument("--layers", action="store_true", help="also time `chunked` at the LAYERS shapes")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 10)
    scan_shape = (1, 20, 16, 4) if args.quick else (4, 196, 384, 16)
    mixer_shape = (1, 20, 32) if args.quick else (4, 197, 192)

    info = machine()
    print(json.dumps({"bench": "machine", **info}), flush=True)
    if args.only is not None:
        run_only(args.only, mixer_shape, repeats)
        return
    if args.layers:
        run_only(["layers"], mixer_shape, repeats)
    rows = []
    for impl in ("auto", *SCAN_IMPLS):
        rows.append(bench_scan(impl, scan_shape, jnp.float32, repeats))
        print(json.dumps(rows[-1]), flush=True)
    rows.append(bench_scan("auto", scan_shape, jnp.bfloat16, repeats))
    print(json.dumps(rows[-1]), flush=True)
    rows.append(bench_mambapy_scan(scan_shape, repeats))
    print(json.dumps(rows[-1]), flush=True)
    for row in bench_mixer(*mixer_shape, repeats):
        rows.append(row)
        print(json.dumps(row), flush=True)

    by_impl = {(r["bench"], r["impl"], r.get("dtype")): r for r in rows}
    auto = by_impl["scan", "auto", "float32"]
    ours, theirs = (
        by_impl["mixer", "sarf_jax.nn.Mamba", None],
        by_impl["mixer", "transformers.MambaMixer (torch)", None],
    )
    print(
        json.dumps(
            {
                "bench": "summary",
                "date": info["date"],
                "cpu": info["cpu"],
                "cores": info["cores"],
                "mixer_forward_speedup_vs_transformers": theirs["forward_ms"] / ours["forward_ms"],
                "mixer_forward_backward_speedup_vs_transformers": theirs["forward_backward_ms"]
                / ours["forward_backward_ms"],
                "auto_temp_forward_backward_per_state_tensor": auto["temp_forward_backward_per_state_tensor"],
                "auto_temp_vs_associative": auto["temp_bytes_forward_backward"]
                / by_impl["scan", "associative", "float32"]["temp_bytes_forward_backward"],
                "auto_forward_backward_speedup_vs_reference": by_impl["scan", "reference", "float32"][
                    "forward_backward_ms"
                ]
                / auto["forward_backward_ms"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
