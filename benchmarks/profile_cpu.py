"""Where a model's CPU time goes: XLA op time per kind of work, from a `jax.profiler` trace.

For each model and pass (forward; forward + backward), the jitted function is compiled, run a few
times inside `jax.profiler.trace` (into a temporary folder), and every XLA op event of its module
is charged to one kind:

  scan            anything traced inside `selective_scan` (its discretisation, layouts, readout)
  depthwise_conv  the named regions `depthwise_conv2d` / `causal_depthwise_conv1d`
  reduction       token-reduction plans (code under sarf_jax/reduction/; with --reduction SPEC)
  matmul          dots and convolutions (XLA's own or a library call), with whatever XLA fused
                  into them (often the LayerNorm before a projection)
  norm            LayerNorm / RMSNorm (flax's normalization module) not fused into a matmul
  layout          transposes, copies, concatenations, pads, slices, gathers: data movement only
  elementwise     other fused loops (activations, residual adds, ...)
  other           control flow (while-loop bookkeeping), custom calls, anything unmatched

An op's kind comes from the optimised HLO (`compiled.as_text()`): its opcodes (those inside a
fusion included) and the Python call stack that XLA keeps for it (op_name metadata and the
module's StackFrames table). Times are each op's own time (nested ops, such as a while loop's
body, are subtracted from their parent), averaged per step. Ops can run concurrently on the
thread pool, so their sum (`op_ms`) may exceed the wall time (`wall_ms`).

    .venv/bin/python benchmarks/profile_cpu.py                      # vmamba_tiny 224 px b8, vmamba_mini
    .venv/bin/python benchmarks/profile_cpu.py --models vmamba_tiny --img-size 64 --batch 2
    .venv/bin/python benchmarks/profile_cpu.py --models vmamba_tiny --reduction sarf_tome:hybrid_2p1

Each op's multiply-accumulates (dots and convolutions, those inside a fusion included) are counted
from the HLO's shapes, so every row also says how fast the ops that hold them ran: `dot_conv_ms`,
their own time whatever their kind (a fusion of SS2D's merge with the projection after it is charged
to scan), and `dot_conv_gmac_per_s`, every MAC over that time. The rest of the time is what two
models of equal MACs differ by beyond their matmuls' speed (benchmarks/RESULTS.md, tenth session).

Prints one JSON line per (model, pass): machine, date, model, pass, per kind ms, % and GMAC.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from sarf_jax import models, reduction
from sarf_jax.analysis import machine_info
from sarf_jax.ops import compiler_options

KINDS = ("scan", "depthwise_conv", "reduction", "norm", "matmul", "layout", "elementwise", "other")
# name -> (img_size, in_chans, batch): the configurations the CPU results quote
CONFIGS = {
    "vmamba_tiny": (224, 3, 8),
    "vit_small": (224, 3, 8),  # the baseline of models.py's --rate-vs row
    "vmamba_mini": (28, 1, 64),
    "vmamba_paper_mini": (28, 1, 64),
    "plainmamba_paper_mini": (28, 1, 64),
}
DEFAULT_MODELS = ("vmamba_tiny", "vmamba_mini")
LAYOUT_OPCODES = {
    "transpose", "copy", "concatenate", "pad", "slice", "dynamic-slice", "dynamic-update-slice", "reshape",
    "bitcast", "broadcast", "gather", "reverse", "iota", "constant", "parameter", "tuple", "get-tuple-element",
    "copy-start", "copy-done", "bitcast-convert",
}  # fmt: skip
MATMUL_OPCODES = {"dot", "convolution"}
CONTROL_OPCODES = {"while", "conditional", "call", "custom-call", "rng", "rng-bit-generator", "sort"}
NORM_FUNCTIONS = ("LayerNorm.", "RMSNorm.", "_compute_stats", "_normalize")

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?\s([a-z][\w\-]*)\((.*)$")
_SHAPE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = [a-z]\w*\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+) .*\{\s*$")


# --- the optimised HLO: each op's opcodes and call stack ---------------------------------


def _stack_tables(lines):
    """{frame id: (file, function)} chains from the FileNames / FunctionNames / FileLocations /
    StackFrames tables XLA prints before the computations (empty if this jax prints none)."""
    tables, current = collections.defaultdict(dict), None
    for line in lines:
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = line
        elif current and (match := re.match(r"^(\d+) (.*)$", line)):
            tables[current][int(match[1])] = match[2]
        elif current and line.strip() and not line[0].isdigit():
            current = None
    strip = lambda s: s.strip().strip('"')
    files, functions = tables["FileNames"], tables["FunctionNames"]
    locations = {}
    for key, text in tables["FileLocations"].items():
        fields = dict(re.findall(r"(\w+)=(\d+)", text))
        locations[key] = (
            strip(files.get(int(fields["file_name_id"]), "")),
            strip(functions.get(int(fields["function_name_id"]), "")),
        )
    frames = {}
    for key, text in tables["StackFrames"].items():
        fields = dict(re.findall(r"(\w+)=(\d+)", text))
        # parent ids are printed one above the frame's own listing id (0 = no parent)
        frames[key] = (locations.get(int(fields["file_location_id"]), ("", "")), int(fields["parent_frame_id"]) - 1)
    return frames


def _call_stack(frames, frame_id):
    """[(file, function), ...] from the op's frame up to the outermost one."""
    stack, seen = [], set()
    while frame_id in frames and frame_id not in seen:
        seen.add(frame_id)
        location, frame_id = frames[frame_id]
        stack.append(location)
    return stack


def parse_hlo(text: str) -> dict[str, dict]:
    """{op name: {"opcodes": set, "op_names": [...], "stacks": [[(file, function)], ...], "macs": int}}
    for every instruction. A fusion's (or call's) entry also holds the opcodes, names and stacks of
    the computation it calls; a fusion's MACs are those of every dot and convolution it fuses."""
    lines = text.splitlines()
    frames = _stack_tables(lines)
    shapes = {m[1]: [int(d) for d in m[2].split(",") if d] for line in lines if (m := _SHAPE.match(line))}
    ops, computations, computation = {}, collections.defaultdict(list), None
    for line in lines:
        if (match := _COMPUTATION.match(line)) and " = " not in line:
            computation = match[1]
            continue
        if computation is None or not (match := _INSTRUCTION.match(line)):
            continue
        name, opcode, rest = match.groups()
        op_name = re.search(r'op_name="([^"]*)"', rest)
        frame = re.search(r"stack_frame_id=(\d+)", rest)
        ops[name] = {
            "opcodes": {opcode},
            "op_names": [op_name[1]] if op_name else [],
            "stacks": [_call_stack(frames, int(frame[1]))] if frame else [],
            "macs": _macs(opcode, shapes.get(name), rest, shapes),
            "calls": re.findall(r"calls=%?([\w.\-]+)", rest) if opcode in ("fusion", "call") else [],
        }
        computations[computation].append(name)

    def fused_macs(name):  # a call's body ops run (and are timed) as ops of their own: fusions only
        op = ops[name]
        inner = [i for c in op["calls"] for i in computations.get(c, ())] if "fusion" in op["opcodes"] else []
        return op["macs"] + sum(fused_macs(i) for i in inner)

    macs = {name: fused_macs(name) for name in ops}
    for name, op in ops.items():
        op["macs"] = macs[name]
        for called in op.pop("calls"):
            for inner in computations.get(called, ()):
                for key in ("opcodes", "op_names", "stacks"):
                    op[key] = op[key] | ops[inner][key] if key == "opcodes" else op[key] + ops[inner][key]
    return ops


def _macs(opcode: str, out_shape, rest: str, shapes: dict) -> int:
    """Multiply-accumulates of one dot or convolution instruction (0 for anything else), from the
    shapes of its output and operands."""
    operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
    if out_shape is None or len(operands) < 2 or any(o not in shapes for o in operands[:2]):
        return 0
    outputs = math.prod(out_shape)
    if opcode == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
        lhs = shapes[operands[0]]
        return outputs * math.prod(lhs[int(d)] for d in contracting[1].split(",") if d) if contracting else 0
    if opcode == "convolution":  # per output: the kernel's window x input features (of its group)
        kernel, labels = shapes[operands[1]], re.search(r"dim_labels=\w+_(\w+)->", rest)
        out_feature = labels[1].index("o") if labels else len(kernel) - 1
        return outputs * math.prod(kernel) // kernel[out_feature]
    return 0


def classify(op: dict | None) -> str:
    """The kind (one of KINDS) of one parsed HLO op; None (an event without an HLO op) is other."""
    if op is None:
        return "other"
    names = " ".join(op["op_names"])
    files = {file for stack in op["stacks"] for file, _ in stack}
    functions = {function for stack in op["stacks"] for _, function in stack}
    if "selective_scan" in names or any("selective_scan" in f for f in functions):
        return "scan"
    if "depthwise_conv" in names or any("depthwise_conv" in f for f in functions):
        return "depthwise_conv"
    if any(os.sep + os.path.join("sarf_jax", "reduction") + os.sep in f for f in files):
        return "reduction"
    opcodes = op["opcodes"]
    if opcodes & MATMUL_OPCODES or "dot_general" in names or "conv_general_dilated" in names:
        return "matmul"  # before norm: XLA fuses a LayerNorm into the matmul that reads it
    if any(
        f.startswith(NORM_FUNCTIONS) or ".".join(f.split(".")[-2:-1]) in ("LayerNorm", "RMSNorm") for f in functions
    ):
        return "norm"
    if opcodes <= LAYOUT_OPCODES:
        return "layout"
    if opcodes & CONTROL_OPCODES:
        return "other"
    return "elementwise"


# --- the trace: each op's own time -------------------------------------------------------


def _self_times(events):
    """[(name, own ns)] of (start, end, name) events of one thread, nested ones subtracted."""
    result, open_events = [], []  # open_events: [start, end, name, children ns]
    for start, end, name in sorted(events, key=lambda e: (e[0], -e[1])):
        while open_events and open_events[-1][1] <= start:
            done = open_events.pop()
            result.append((done[2], done[1] - done[0] - done[3]))
        if open_events:
            open_events[-1][3] += end - start
        open_events.append([start, end, name, 0])
    result.extend((e[2], e[1] - e[0] - e[3]) for e in reversed(open_events))
    return result


def op_times(trace_dir: str, module: str) -> tuple[dict[str, float], float, dict[str, int]]:
    """({op name: own ns summed over the trace}, ns of the outermost op events, {op name: how many
    times it ran}) of `module`."""
    from jax.profiler import ProfileData

    paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise RuntimeError(f"profile_cpu: no .xplane.pb written under {trace_dir}")
    times, outermost, runs = collections.Counter(), 0.0, collections.Counter()
    for plane in ProfileData.from_file(paths[0]).planes:
        for line in plane.lines:
            events = []
            for event in line.events:
                with warnings.catch_warnings():  # this jax's event stats warn when converted
                    warnings.simplefilter("ignore", DeprecationWarning)
                    stats = dict(event.stats)
                if stats.get("hlo_module") == module and "hlo_op" in stats:
                    events.append((event.start_ns, event.start_ns + event.duration_ns, stats["hlo_op"]))
            for name, own in _self_times(events):
                times[name] += own
                runs[name] += 1
            outermost += sum(end - start for start, end, _ in _outermost(events))
    return dict(times), outermost, dict(runs)


def _outermost(events):
    """Events not nested in another one of the same thread."""
    kept, reach = [], float("-inf")
    for start, end, name in sorted(events, key=lambda e: (e[0], -e[1])):
        if start >= reach:
            kept.append((start, end, name))
            reach = end
    return kept


def profile(fn, args, *, steps: int, warmup: int = 2) -> dict:
    """Compile jax.jit(fn) (with sarf_jax's compiler options), run it `steps` times under the
    profiler; per-kind ms per step."""
    compiled = jax.jit(fn, compiler_options=compiler_options()).lower(*args).compile()
    text = compiled.as_text()
    module = re.match(r"HloModule ([\w.\-]+)", text)[1]
    ops = parse_hlo(text)
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            start = time.perf_counter()
            for _ in range(steps):
                jax.block_until_ready(compiled(*args))
            wall = (time.perf_counter() - start) / steps
        times, outermost, runs = op_times(trace_dir, module)
    per_kind, gmac = dict.fromkeys(KINDS, 0.0), dict.fromkeys(KINDS, 0.0)
    mac_ms = 0.0  # own time of the ops that hold a dot or convolution, whatever their kind
    for name, ns in times.items():
        kind, macs = classify(ops.get(name)), ops[name]["macs"] if name in ops else 0
        per_kind[kind] += ns / steps / 1e6
        gmac[kind] += macs * runs[name] / steps / 1e9
        mac_ms += ns / steps / 1e6 if macs else 0.0
    total = sum(per_kind.values())
    return {
        "wall_ms": 1e3 * wall,
        "op_ms": total,
        "outermost_op_ms": outermost / steps / 1e6,
        "ms": per_kind,
        "percent": {kind: 100 * ms / total if total else 0.0 for kind, ms in per_kind.items()},
        "gmac": gmac,  # multiply-accumulates per step (each op's MACs times how often it ran)
        "dot_conv_ms": mac_ms,
        "dot_conv_gmac_per_s": sum(gmac.values()) / (mac_ms / 1e3) if mac_ms else 0.0,
    }


# --- the models ---------------------------------------------------------------------------


def model_passes(name, *, img_size, in_chans, batch, spec=None, overrides=None):
    """{"forward": (fn, args), "forward_backward": (fn, args)} of a fresh model, float32."""
    model = models.create(
        name, num_classes=10, img_size=img_size, in_chans=in_chans, rngs=nnx.Rngs(0), **(overrides or {})
    )
    graphdef, state = nnx.split(model)
    params, rest = nnx.split(model, nnx.Param, ...)[1:]
    images = jax.random.normal(jax.random.key(0), (batch, img_size, img_size, in_chans))
    labels = jnp.arange(batch) % 10
    call = (lambda m, x, **kw: m(x, reduction=spec, **kw)) if spec is not None else (lambda m, x, **kw: m(x, **kw))

    def forward(state, images):
        return call(nnx.merge(graphdef, state), images)

    def loss(params, rest, images, labels):
        logits = call(nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest)), images, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return {"forward": (forward, (state, images)), "forward_backward": (jax.grad(loss), (params, rest, images, labels))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), choices=list(CONFIGS))
    parser.add_argument("--img-size", type=int, default=None, help="instead of the model's configuration")
    parser.add_argument("--batch", type=int, default=None, help="instead of the model's configuration")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps per pass")
    parser.add_argument(
        "--passes", nargs="*", default=["forward", "forward_backward"], choices=["forward", "forward_backward"]
    )
    parser.add_argument("--reduction", default=None, metavar="SPEC", help="a reduction spec, e.g. sarf_tome:hybrid_2p1")
    parser.add_argument(
        "--override", action="append", default=[], metavar="KEY=VALUE", help="constructor argument (Python literal)"
    )
    args = parser.parse_args(argv)
    import ast

    overrides = {k: ast.literal_eval(v) for k, _, v in (text.partition("=") for text in args.override)}
    spec = reduction.parse_spec(args.reduction) if args.reduction else None
    info = machine_info()
    for name in args.models:
        img_size, in_chans, batch = CONFIGS[name]
        img_size, batch = args.img_size or img_size, args.batch or batch
        passes = model_passes(name, img_size=img_size, in_chans=in_chans, batch=batch, spec=spec, overrides=overrides)
        for pass_name in args.passes:
            fn, fn_args = passes[pass_name]
            row = profile(fn, fn_args, steps=args.steps)
            print(json.dumps({
                "bench": "profile", **info, "model": name, "pass": pass_name, "img_size": img_size,
                "in_chans": in_chans, "batch": batch, "reduction": args.reduction, "overrides": args.override,
                "images_per_s": batch / (row["wall_ms"] / 1e3), **row,
            }), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
