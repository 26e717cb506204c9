r"""`make reproduce`: the paper's experiment at Fashion-MNIST scale, on this machine, end to end.

1. Train vmamba_mini, plainmamba_mini, vim_mini and vit_mini densely (no reduction) on
   Fashion-MNIST, 14x14 token grids (patch 2), `--steps` steps of batch 64 each (train.py).
2. Run the keep-ratio sweep (configs/sweeps/mini.py) on each, training-free, EMA weights (eval.py).
3. Beyond the paper: continue the `--finetune_model` run for `--finetune_steps` with
   `--finetune_reduction` active, and, as the control, for as many steps with no reduction (more
   training alone also moves accuracy); sweep both again.
4. Collect everything into OUT/reproduce.json, OUT/reproduce.md (tables) and
   OUT/accuracy_vs_gflops.png (one panel per backbone), with the date, machine and timings.

Every step is the user-facing command, printed before it runs; a rerun resumes (train.py restarts
from its checkpoints, eval.py skips finished entries).

    python tools/reproduce.py [--workdir=runs/reproduce] [--out=results] [--data_dir=DIR]
                              [--models=vmamba_mini,vit_mini] [--steps=500] [--report_only]

`--help` lists every flag. A bad flag prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time

from absl import flags

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ("vmamba_mini", "plainmamba_mini", "vim_mini", "vit_mini")
METHODS = ("evit", "tome", "sarf_evit", "sarf_tome")  # table columns, the paper's order


def run(command: list[str]) -> float:
    """Run one command from the repository root, streaming its output; return its wall seconds."""
    print("\n$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def train_command(args, name: str, workdir: pathlib.Path, steps: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "--config",
        "configs/default.py",
        "--workdir",
        str(workdir),
        f"--config.model.name={name}",
        "--config.model.overrides.patch_size=2",
        f"--config.total_steps={steps}",
        "--config.optimizer.lr=2e-3",  # results/reproduce.md's runs (configs/default.py now uses 3e-3)
        f"--config.data.dir={args.data_dir}",
        "--config.progress_bar=False",
        *extra,
    ]


def eval_command(args, workdir: pathlib.Path, reductions: list[str] | None = None) -> list[str]:
    """The sweep file, or (fine-tuned runs) only the listed reductions."""
    chosen = ["--sweep", args.sweep] if reductions is None else [f"--reduction={r}" for r in reductions]
    return [sys.executable, "eval.py", "--workdir", str(workdir), *chosen, "--weights", "ema"]


def final_metrics(workdir: pathlib.Path) -> dict:
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return next(line for line in reversed(lines) if line.get("split") == "final")


def collect_run(workdir: pathlib.Path) -> dict:
    results = json.loads((workdir / "results.json").read_text())
    if not results.get("complete"):
        raise RuntimeError(f"{workdir}/results.json is incomplete")
    return {"train": final_metrics(workdir), "meta": results["meta"], "entries": results["entries"]}


def ema_runs(report: dict) -> dict[str, list[dict]]:
    return {name: run_["entries"] for name, run_ in report["runs"].items()}


def markdown(report: dict) -> str:
    """Top-1 (%) per backbone and schedule, methods side by side at the same grids (matched GFLOPs)."""
    from sarf_jax.evaluate import report as report_lib

    lines = [
        f"Fashion-MNIST test set (10,000 images), EMA weights, {report['machine']}, {report['date']}.",
        f"Dense training: {report['steps']} steps of batch 64; reductions applied training-free.",
        "",
        *report_lib.comparison_table(ema_runs(report), METHODS),
        "",
        "Speed (images/s, batch 250, forward only, same machine):",
        "",
        *report_lib.speed_table(ema_runs(report), METHODS),
        "",
        "Phase timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings_s"].items()),
        f"Total: {report['total_s'] / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: pathlib.Path) -> None:
    """One panel per backbone: top-1 against FLOPs for each method, the dense model as a star."""
    from sarf_jax.evaluate import report as report_lib

    title = f"Training-free token reduction ({report['machine']}, {report['date']})"
    report_lib.plot_accuracy_vs_gflops(ema_runs(report), path, title=title)


def machine() -> str:
    model = (
        next(
            (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
            platform.machine(),
        )
        if os.path.exists("/proc/cpuinfo")
        else platform.machine()
    )
    return f"{os.cpu_count()}-core {model}, CPU only"


def define_flags() -> None:
    flags.DEFINE_string("workdir", "runs/reproduce", "Where the training and evaluation runs go.")
    flags.DEFINE_string("out", "results", "Where reproduce.json, reproduce.md and the plot go (under the repository).")
    flags.DEFINE_string("data_dir", "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX files.")
    flags.DEFINE_list("models", list(MODELS), f"Backbones to train and sweep, a comma-separated subset of {MODELS}.")
    flags.DEFINE_integer("steps", 500, "Dense training steps per backbone.", lower_bound=1)
    flags.DEFINE_string("sweep", "configs/sweeps/mini.py", "Sweep file run on every trained backbone.")
    flags.DEFINE_string("finetune_model", "vmamba_mini", "Backbone fine-tuned with SARF active ('' skips fine-tuning).")
    flags.DEFINE_integer("finetune_steps", 200, "Fine-tuning steps (SARF and the dense control).", lower_bound=1)
    flags.DEFINE_string("finetune_reduction", "sarf_tome:keep=0.35,sites=2", "Reduction active while fine-tuning.")
    flags.DEFINE_bool("report_only", False, "Rewrite the .md and .png from OUT/reproduce.json.")
    flags.register_validator(
        "models",
        lambda names: bool(names) and set(names) <= set(MODELS),
        f"--models must be a non-empty comma-separated subset of {','.join(MODELS)}",
    )
    flags.register_multi_flags_validator(
        ["finetune_model", "models"],
        lambda values: not values["finetune_model"] or values["finetune_model"] in values["models"],
        "--finetune_model must be one of --models (or '' to skip fine-tuning)",
    )


def main(argv) -> None:
    args = flags.FLAGS
    out = ROOT / args.out
    if args.report_only:
        write_report(json.loads((out / "reproduce.json").read_text()), out)
        return
    workdir = pathlib.Path(args.workdir)
    start = time.perf_counter()
    timings, runs = {}, {}
    for name in args.models:
        timings[f"train {name}"] = run(train_command(args, name, workdir / name, args.steps))
        timings[f"sweep {name}"] = run(eval_command(args, workdir / name))
        runs[name] = collect_run(ROOT / workdir / name)
    finetune = {}
    if args.finetune_model:
        name = args.finetune_model
        for label, reduction in (("dense", "none"), ("sarf", args.finetune_reduction)):
            target = workdir / f"{name}_finetune_{label}"
            timings[f"finetune {label}"] = run(
                train_command(
                    args,
                    name,
                    target,
                    args.finetune_steps,
                    f"--config.init_from={workdir / name}",
                    f"--config.reduction={reduction}",
                    "--config.optimizer.lr=5e-4",
                    "--config.optimizer.warmup_steps=20",
                )
            )
            sarf_tome = [e["reduction"] for e in runs[name]["entries"] if e["method"] == "sarf_tome"]
            timings[f"sweep finetune {label}"] = run(eval_command(args, target, ["none", *sarf_tome]))
            finetune[label] = {"reduction": reduction, **collect_run(ROOT / target)}
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "steps": args.steps,
        "command": "make reproduce",
        "sweep": args.sweep,
        "timings_s": timings,
        "total_s": time.perf_counter() - start,
        "runs": runs,
        "finetune": {"model": args.finetune_model, "steps": args.finetune_steps, **finetune},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.json").write_text(json.dumps(report, indent=1) + "\n")
    write_report(report, out)
    print(f"wrote {out}/reproduce.json, reproduce.md, accuracy_vs_gflops.png in {report['total_s'] / 60:.1f} min")


def write_report(report: dict, out: pathlib.Path) -> None:
    (out / "reproduce.md").write_text(markdown(report) + finetune_markdown(report))
    plot(report, out / "accuracy_vs_gflops.png")
    print((out / "reproduce.md").read_text())


def finetune_markdown(report: dict) -> str:
    """How much of the gap to dense does training with SARF active close, against a dense control."""
    from sarf_jax.evaluate import report as report_lib

    finetune = report["finetune"]
    if "sarf" not in finetune:
        return ""
    name = finetune["model"]
    schedules = list(report_lib.by_schedule(report["runs"][name]["entries"])[1])
    lines = [
        "",
        f"Reduction-aware fine-tuning of {name}: {finetune['steps']} more steps from the dense run, "
        f"with `{finetune['sarf']['reduction']}` active (SARF) or no reduction (control); top-1 (%) "
        "with no reduction and with sarf_tome at each schedule:",
        "",
        "| weights | dense | " + " | ".join(f"sarf_tome {s}" for s in schedules) + " |",
        "|---|---|" + "---|" * len(schedules),
    ]
    for label, entries in (
        ("dense-trained", report["runs"][name]["entries"]),
        ("+ dense control", finetune["dense"]["entries"]),
        ("+ SARF fine-tuned", finetune["sarf"]["entries"]),
    ):
        dense, table = report_lib.by_schedule(entries)
        lines.append(
            f"| {label} | {100 * dense['top1']:.2f} | "
            + " | ".join(f"{100 * table[s]['sarf_tome']['top1']:.2f}" for s in schedules)
            + " |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from sarf_jax import cli

    define_flags()
    cli.run(main, "reproduce.py")
