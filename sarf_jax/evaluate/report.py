"""Tables and plots of sweep results: one workdir's results.json -> results.csv, results.md and
accuracy_vs_gflops.png, and the cross-backbone comparison tables and panels of `make reproduce`.

An entry is one row of results.json: {"weights", "reduction", "method", "top1", "top1_drop",
"gflops", "images_per_s", ...}; the reduction label is "METHOD:SCHEDULE" ("none" for dense).
"""

from __future__ import annotations

import csv
import json
import pathlib
from collections.abc import Callable

COLUMNS = ("weights", "reduction", "method", "top1", "top5", "top1_drop", "gflops", "images_per_s", "examples")


def write_reports(workdir) -> list[pathlib.Path]:
    """Write the CSV, Markdown and plot views of workdir/results.json; returns their paths."""
    workdir = pathlib.Path(workdir)
    results = json.loads((workdir / "results.json").read_text())
    entries, meta = results["entries"], results.get("meta", {})
    csv_path, md_path, png_path = (workdir / n for n in ("results.csv", "results.md", "accuracy_vs_gflops.png"))
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(entries)
    lines = [
        f"Device {meta.get('device', '?')}, batch {meta.get('batch_size', '?')}, "
        f"{meta.get('img_size', '?')} px{'' if results.get('complete') else ' (INCOMPLETE)'}; accuracy on "
        f"{meta.get('devices', '?')} device(s) in {meta.get('processes', '?')} process(es), images/s on "
        f"{meta.get('images_per_s_devices', '?')}",
        "",
        "| weights | reduction | top-1 | top-5 | Δ top-1 | GFLOPs | images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        lines.append(
            f"| {e['weights']} | {e['reduction']} | {100 * e['top1']:.2f} | {100 * e['top5']:.2f} | "
            f"{drop_text(e)} | {e['gflops']:.4f} | {e['images_per_s']:.0f} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    plot_accuracy_vs_gflops({"": entries}, png_path, series=lambda e: f"{e['method']} ({e['weights']})")
    return [csv_path, md_path, png_path]


def drop_text(entry: dict) -> str:
    """Top-1 change vs dense in points, signed ("-1.30"); "" when unknown."""
    return "" if entry.get("top1_drop") is None else f"{0.0 - 100 * entry['top1_drop']:+.2f}"


def by_schedule(entries: list[dict]) -> tuple[dict, dict]:
    """(the dense entry, {schedule: {method: entry}}) of one set of weights' entries."""
    dense = next(e for e in entries if e["method"] == "none")
    table: dict = {}
    for entry in entries:
        if entry["method"] != "none":
            schedule = entry["reduction"].split(":", 1)[1]
            table.setdefault(schedule, {})[entry["method"]] = entry
    return dense, table


def comparison_table(runs: dict[str, list[dict]], methods) -> list[str]:
    """Markdown rows: per backbone and schedule, top-1 (%) and drop of each method side by side at
    the same grids (matched GFLOPs), with the GFLOPs saving."""
    lines = [
        "| backbone | schedule | GFLOPs (saving) | dense | " + " | ".join(methods) + " |",
        "|---|---|---|---|" + "---|" * len(methods),
    ]
    for name, entries in runs.items():
        dense, table = by_schedule(entries)
        for schedule, row in table.items():
            gflops = row.get("sarf_tome", next(iter(row.values())))["gflops"]
            cells = [f"{100 * row[m]['top1']:.2f} ({drop_text(row[m])})" if m in row else "–" for m in methods]
            lines.append(
                f"| {name} | {schedule} | {gflops:.4f} ({100 * (1 - gflops / dense['gflops']):.0f}%) | "
                f"{100 * dense['top1']:.2f} | " + " | ".join(cells) + " |"
            )
    return lines


def speed_table(runs: dict[str, list[dict]], methods) -> list[str]:
    """Markdown rows: per backbone and schedule, images/s of dense and of each method."""
    lines = ["| backbone | schedule | dense | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for name, entries in runs.items():
        dense, table = by_schedule(entries)
        for schedule, row in table.items():
            cells = [f"{row[m]['images_per_s']:.0f}" if m in row else "–" for m in methods]
            lines.append(f"| {name} | {schedule} | {dense['images_per_s']:.0f} | " + " | ".join(cells) + " |")
    return lines


def plot_accuracy_vs_gflops(
    panels: dict[str, list[dict]],
    path,
    *,
    series: Callable[[dict], str] = lambda e: e["method"],
    title: str | None = None,
) -> None:
    """One panel per key of `panels` (its title): top-1 against FLOPs, a line per series of reduced
    entries, each dense entry a black star. FLOPs in MFLOPs when every entry is under 1 GFLOP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale, unit = (1e3, "MFLOPs") if all(e["gflops"] < 1 for v in panels.values() for e in v) else (1, "GFLOPs")
    figure, axes = plt.subplots(1, len(panels), figsize=(2 + 4.5 * len(panels), 4.3), squeeze=False)
    for axis, (name, entries) in zip(axes[0], panels.items()):
        reduced = [e for e in entries if e["method"] != "none"]
        for label in dict.fromkeys(series(e) for e in reduced):
            points = sorted((scale * e["gflops"], 100 * e["top1"]) for e in reduced if series(e) == label)
            axis.plot(*zip(*points), marker="o", label=label)
        for e in entries:
            if e["method"] == "none":
                axis.scatter([scale * e["gflops"]], [100 * e["top1"]], marker="*", s=170, color="black", zorder=5)
                axis.annotate(
                    f"dense ({e['weights']})",
                    (scale * e["gflops"], 100 * e["top1"]),
                    textcoords="offset points",
                    xytext=(-8, 6),
                    ha="right",
                    fontsize=8,
                )
        axis.set_title(name)
        axis.set_xlabel(f"{unit} per image")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    axes[0][-1].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=115)
    plt.close(figure)
