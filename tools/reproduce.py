r"""`make reproduce`: the paper's experiment at Fashion-MNIST scale, on this machine, end to end.

1. Train the paper-like minis (`vmamba_paper_mini`, `plainmamba_paper_mini`: their heaviest
   stage on a 14x14 grid) densely on Fashion-MNIST with configs/paper_mini.py (train.py).
2. Run the paper-like sweep (configs/sweeps/paper_mini.py: dense, EViT, ToMe, SARF-EViT and
   SARF-ToMe at `paper_like=hybrid_1p1/2p1/3p1`) on each, training-free, EMA weights (eval.py).
3. Beyond the paper: continue the `--finetune_model` run for `--finetune_steps` with a reduction
   active (default: the SARF-ToMe budget that lost the most in step 2), and, as the control, for
   as many steps with no reduction (more training alone also moves accuracy); sweep both again.
4. Collect everything into OUT/reproduce.json, OUT/reproduce.md (tables) and
   OUT/accuracy_vs_gflops.png (one panel per backbone), with the date, machine and timings.

Every step is the user-facing command, printed before it runs; a rerun resumes (train.py restarts
from its checkpoints, eval.py skips finished entries).

    python tools/reproduce.py [--workdir=runs/reproduce] [--out=results] [--data_dir=DIR]
                              [--models=vmamba_paper_mini] [--steps=N] [--report_only]

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
MODELS = ("vmamba_paper_mini", "plainmamba_paper_mini")  # configs/paper_mini.py's
METHODS = ("evit", "tome", "sarf_evit", "sarf_tome")  # table columns, the paper's order


def run(command: list[str]) -> float:
    """Run one command from the repository root, streaming its output; return its wall seconds."""
    print("\n$ " + " ".join(shlex.quote(c) for c in command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - start


def train_command(args, name: str, workdir: pathlib.Path, *extra: str, steps: int | None = None) -> list[str]:
    """train.py with configs/paper_mini.py for `name`; `steps` (else --steps) overrides its steps."""
    steps = steps or args.steps
    return [
        sys.executable,
        "train.py",
        "--config",
        f"configs/paper_mini.py:{name}",
        "--workdir",
        str(workdir),
        f"--config.data.dir={args.data_dir}",
        "--config.progress_bar=False",
        *([f"--config.total_steps={steps}"] if steps else []),
        *extra,
    ]


def training_steps(workdir: pathlib.Path) -> int:
    return json.loads((workdir / "config.json").read_text())["total_steps"]


def most_lost(entries: list[dict], method: str = "sarf_tome") -> str:
    """The reduction of `method` whose top-1 fell the most."""
    return max((e for e in entries if e["method"] == method), key=lambda e: e["top1_drop"])["reduction"]


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
        f"Dense training (configs/paper_mini.py): {describe_training(report)}; reductions applied training-free.",
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


def describe_training(report: dict) -> str:
    steps = ", ".join(f"{name} {run_['steps']} steps" for name, run_ in report["runs"].items())
    return f"{steps} of batch 64 at 28 px"


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
    flags.DEFINE_integer("steps", None, "Dense training steps (default: configs/paper_mini.py's).", lower_bound=1)
    flags.DEFINE_string("sweep", "configs/sweeps/paper_mini.py", "Sweep file run on every trained backbone.")
    flags.DEFINE_string(
        "finetune_model", "vmamba_paper_mini", "Backbone fine-tuned with a reduction active ('' skips fine-tuning)."
    )
    flags.DEFINE_integer("finetune_steps", 500, "Fine-tuning steps (with the reduction, and dense).", lower_bound=1)
    flags.DEFINE_string(
        "finetune_reduction", "auto", "Reduction active while fine-tuning (auto: the SARF-ToMe budget that lost most)."
    )
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
        timings[f"train {name}"] = run(train_command(args, name, workdir / name))
        timings[f"sweep {name}"] = run(eval_command(args, workdir / name))
        runs[name] = collect_run(ROOT / workdir / name)
        runs[name]["steps"] = training_steps(ROOT / workdir / name)
    finetune = {}
    if args.finetune_model:
        name = args.finetune_model
        chosen = most_lost(runs[name]["entries"]) if args.finetune_reduction == "auto" else args.finetune_reduction
        for label, reduction in (("dense", "none"), ("sarf", chosen)):
            target = workdir / f"{name}_finetune_{label}"
            timings[f"finetune {label}"] = run(
                train_command(
                    args,
                    name,
                    target,
                    f"--config.init_from={workdir / name}",
                    "--config.init_from_weights=ema",
                    f"--config.reduction={reduction}",
                    "--config.optimizer.lr=5e-4",
                    "--config.optimizer.warmup_steps=20",
                    steps=args.finetune_steps,
                )
            )
            sarf_tome = [e["reduction"] for e in runs[name]["entries"] if e["method"] == "sarf_tome"]
            timings[f"sweep finetune {label}"] = run(eval_command(args, target, ["none", *sarf_tome]))
            finetune[label] = {"reduction": reduction, **collect_run(ROOT / target)}
    report = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
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
        f"Reduction-aware fine-tuning of {name}: {finetune['steps']} more steps from the dense run's EMA weights, "
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
