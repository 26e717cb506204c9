"""The Pallas selective scan against `chunked` and `reference` on an accelerator, in bfloat16.

One script for a GPU session (it runs in a few minutes; the same script works on a TPU): for the
Vim-S layer and the VMamba-T stage-0 scan it checks that the compiled kernel agrees with
`reference`, then times forward and forward + backward of `pallas`, `chunked` and `reference`,
and reports the bandwidth achieved against the device's memory bandwidth. One JSON object per line:

  {"bench": "device", ...}        the accelerator, its assumed peak bandwidth, versions, date
  {"bench": "scan_accel", ...}    one (layer, impl): ms, bytes moved, GB/s, fraction of peak,
                                  max error of y and of each gradient against `reference`
  {"bench": "summary", ...}       per layer: pallas forward % of roofline, speed-up over
                                  chunked (forward, forward + backward), and whether `auto`
                                  should pick pallas (targets of issue 6: forward >= 50% of the
                                  roofline and >= 2x chunked, errors within tolerance)

Bytes moved are the minimum any implementation must move, in the inputs' dtypes: forward reads
u, delta, z, B, C and writes y; forward + backward adds reading u, delta, z, B, C and dy and
writing du, ddelta, dz, dB, dC (the small per-channel parameters are ignored; VMamba has no z).
benchmarks/scan_roofline.py measures the device's own copy bandwidth and exp rate instead of a
data-sheet peak, and times the scans without per-call dispatch.

    python benchmarks/scan_gpu.py                  # batch 32 (training-sized)
    python benchmarks/scan_gpu.py --batch 2        # the latency case
    python benchmarks/scan_gpu.py --quick          # tiny shapes: checks that the script runs
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from scan import median_ms  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

from sarf_jax.ops import selective_scan  # noqa: E402
from sarf_jax.ops.selective_scan import resolve_impl  # noqa: E402

IMPLS = ("pallas", "chunked", "reference")
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
LAYERS = {  # (length, channels, state, groups, gated: with z)
    "vim_s": (197, 768, 16, None, True),  # Vim-S: 14x14 patches + class token, d_inner 768, d_state 16
    # VMamba-T (vmamba_tiny: dims 96, ssm_ratio 1.0, forward_type v05_noz) stage 0: a 56x56 grid,
    # d_inner 96 x K=4 directions in one scan, N=1, B/C grouped by direction, no z in the scan
    "vmamba_t": (3136, 384, 1, 4, False),
}
QUICK_LAYERS = {"vim_s": (13, 256, 16, None, True), "vmamba_t": (40, 256, 1, 4, False)}

# Peak HBM bandwidth in bytes/s by device_kind prefix (vendor data sheets); --peak-gbps overrides.
PEAK_BANDWIDTH = {
    "NVIDIA H200": 4.8e12,
    "NVIDIA H100 80GB HBM3": 3.35e12,  # SXM
    "NVIDIA H100 NVL": 3.9e12,
    "NVIDIA H100 PCIe": 2.0e12,
    "NVIDIA A100-SXM4-80GB": 2.039e12,
    "NVIDIA A100-SXM4-40GB": 1.555e12,
    "NVIDIA A100 80GB PCIe": 1.935e12,
    "NVIDIA L4": 0.3e12,
    "TPU v4": 1.2e12,
    "TPU v5 lite": 0.819e12,  # v5e
    "TPU v5": 2.765e12,  # v5p
    "TPU v6 lite": 1.64e12,  # v6e
}

# Tolerances for the bf16 agreement check: one bf16 unit of the largest magnitude.
BF16_EPS = float(jnp.finfo(jnp.bfloat16).eps)


def peak_bandwidth(device_kind: str, override_gbps: float | None):
    if override_gbps:
        return override_gbps * 1e9
    for prefix, value in sorted(PEAK_BANDWIDTH.items(), key=lambda kv: -len(kv[0])):
        if device_kind.startswith(prefix):
            return value
    return None


def layer_inputs(batch, length, channels, state, groups, gated=True, seed=0):
    """Random bf16 u, delta, B, C (and z when `gated`) with fp32 A, D, delta_bias; z None otherwise."""
    rng = np.random.default_rng(seed)
    bf16 = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)
    bc = (batch, length, state) if groups is None else (batch, length, groups, state)
    return dict(
        u=bf16(batch, length, channels),
        delta=bf16(batch, length, channels),
        A=-jnp.exp(jnp.asarray(rng.standard_normal((channels, state)) * 0.5, jnp.float32)),
        B=bf16(*bc),
        C=bf16(*bc),
        D=jnp.ones((channels,), jnp.float32),
        z=bf16(batch, length, channels) if gated else None,
        delta_bias=jnp.asarray(rng.uniform(-4, -2, channels), jnp.float32),
    )


def minimum_bytes(inputs):
    size = lambda name: 0 if inputs[name] is None else inputs[name].size * inputs[name].dtype.itemsize
    sequence = sum(size(k) for k in ("u", "delta", "z"))
    bc = size("B") + size("C")
    y = size("u")
    forward = sequence + bc + y
    return forward, forward + (sequence + bc + y) + (sequence + bc)


def functions(impl):
    def forward(*args):
        return selective_scan(**dict(zip(ARG_NAMES, args)), delta_softplus=True, impl=impl)

    def loss(*args):
        return jnp.sum(forward(*args).astype(jnp.float32) ** 2)

    return jax.jit(forward), jax.jit(jax.grad(loss, argnums=tuple(range(len(ARG_NAMES)))))


def max_error(actual, expected):
    actual, expected = (np.asarray(x, np.float32) for x in (actual, expected))
    scale = float(np.abs(expected).max()) or 1.0
    return float(np.abs(actual - expected).max()) / scale


def bench_layer(layer, shape, batch, repeats, peak):
    inputs = layer_inputs(batch, *shape)
    args = tuple(inputs[k] for k in ARG_NAMES)
    forward_bytes, forward_backward_bytes = minimum_bytes(inputs)
    reference_forward, reference_grad = functions("reference")
    expected_y = reference_forward(*args)
    expected_grads = reference_grad(*args)
    rows = {}
    for impl in IMPLS:
        forward, grad = functions(impl)
        start = time.perf_counter()
        y = jax.block_until_ready(forward(*args))
        grads = jax.block_until_ready(grad(*args))
        first_call_s = time.perf_counter() - start
        forward_ms = median_ms(lambda: jax.block_until_ready(forward(*args)), repeats)
        forward_backward_ms = median_ms(lambda: jax.block_until_ready(grad(*args)), repeats)
        errors = {name: max_error(g, e) for name, g, e in zip(ARG_NAMES, grads, expected_grads) if g is not None}
        row = {
            "bench": "scan_accel",
            "layer": layer,
            "impl": impl,
            "resolved_impl": resolve_impl(impl),
            "shape": dict(zip(("batch", "length", "channels", "state", "groups", "gated"), (batch, *shape))),
            "dtype": "bfloat16",
            "first_call_s": first_call_s,
            "forward_ms": forward_ms,
            "forward_backward_ms": forward_backward_ms,
            "forward_bytes": forward_bytes,
            "forward_backward_bytes": forward_backward_bytes,
            "forward_gbps": forward_bytes / forward_ms / 1e6,
            "forward_backward_gbps": forward_backward_bytes / forward_backward_ms / 1e6,
            "forward_roofline_fraction": peak and forward_bytes / (forward_ms * 1e-3) / peak,
            "forward_backward_roofline_fraction": peak and forward_backward_bytes / (forward_backward_ms * 1e-3) / peak,
            "y_max_error_vs_reference": max_error(y, expected_y),
            "grad_max_error_vs_reference": errors,
        }
        rows[impl] = row
        print(json.dumps(row), flush=True)
    return rows


def summary(layer, rows):
    pallas, chunked = rows["pallas"], rows["chunked"]
    # bf16 outputs: a few bf16 units of the largest magnitude (outputs rounded once, sums in fp32)
    agrees = pallas["y_max_error_vs_reference"] <= 4 * BF16_EPS and all(
        e <= 4 * BF16_EPS for e in pallas["grad_max_error_vs_reference"].values()
    )
    roofline = pallas["forward_roofline_fraction"]
    forward_speedup = chunked["forward_ms"] / pallas["forward_ms"]
    return {
        "bench": "summary",
        "layer": layer,
        "pallas_forward_roofline_fraction": roofline,
        "pallas_forward_speedup_vs_chunked": forward_speedup,
        "pallas_forward_backward_speedup_vs_chunked": chunked["forward_backward_ms"] / pallas["forward_backward_ms"],
        "pallas_agrees_with_reference": agrees,
        "auto_should_pick_pallas": bool(agrees and forward_speedup >= 2 and (roofline or 0) >= 0.5),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks that the script runs")
    parser.add_argument("--peak-gbps", type=float, default=None, help="the device's memory bandwidth")
    parser.add_argument("--layers", nargs="+", choices=tuple(LAYERS), default=tuple(LAYERS))
    args = parser.parse_args()
    layers = {name: (QUICK_LAYERS if args.quick else LAYERS)[name] for name in args.layers}
    batch = 2 if args.quick else args.batch
    repeats = 1 if args.quick else args.repeats

    device = jax.devices()[0]
    peak = peak_bandwidth(device.device_kind, args.peak_gbps)
    print(
        json.dumps(
            {
                "bench": "device",
                "platform": device.platform,
                "device_kind": device.device_kind,
                "peak_bandwidth_gbps": peak and peak / 1e9,
                "jax": jax.__version__,
                "date": datetime.date.today().isoformat(),
                "note": "CPU: pallas runs in interpret mode, times are meaningless"
                if device.platform == "cpu"
                else None,
            }
        ),
        flush=True,
    )
    for layer, shape in layers.items():
        rows = bench_layer(layer, shape, batch, repeats, peak)
        print(json.dumps(summary(layer, rows)), flush=True)


if __name__ == "__main__":
    main()
