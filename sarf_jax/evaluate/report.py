"""results.json -> results.csv, results.md and accuracy_vs_gflops.png in the same folder."""

from __future__ import annotations

import csv
import json
import pathlib

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
        drop = "" if e.get("top1_drop") is None else f"{0.0 - 100 * e['top1_drop']:+.2f}"
        lines.append(
            f"| {e['weights']} | {e['reduction']} | {100 * e['top1']:.2f} | {100 * e['top5']:.2f} | "
            f"{drop} | {e['gflops']:.4f} | {e['images_per_s']:.0f} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    _plot(entries, png_path)
    return [csv_path, md_path, png_path]


def _plot(entries, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.5, 4.5))
    for weights in sorted({e["weights"] for e in entries}):
        mine = [e for e in entries if e["weights"] == weights]
        for method in sorted({e["method"] for e in mine} - {"none"}):
            points = sorted((e["gflops"], 100 * e["top1"]) for e in mine if e["method"] == method)
            axes.plot(*zip(*points), marker="o", label=f"{method} ({weights})")
        for e in mine:
            if e["method"] == "none":
                axes.scatter([e["gflops"]], [100 * e["top1"]], marker="*", s=160, color="black", zorder=5)
                axes.annotate(
                    f"dense ({weights})",
                    (e["gflops"], 100 * e["top1"]),
                    textcoords="offset points",
                    xytext=(-10, 6),
                    ha="right",
                )
    axes.set_xlabel("GFLOPs per image")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
