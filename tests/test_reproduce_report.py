"""tools/reproduce.py's tables and plot, from a small hand-made report (no training)."""

import importlib.util
import pathlib
import types

ROOT = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce", ROOT / "tools" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def entries(dense_top1, sarf_top1, evit_top1):
    dense = {
        "weights": "ema",
        "reduction": "none",
        "method": "none",
        "top1": dense_top1,
        "top1_drop": 0.0,
        "gflops": 0.02,
        "images_per_s": 400.0,
    }
    reduced = [
        {
            "weights": "ema",
            "reduction": f"{m}:keep=0.6,sites=1",
            "method": m,
            "top1": t,
            "top1_drop": dense_top1 - t,
            "gflops": 0.015,
            "images_per_s": 500.0,
        }
        for m, t in (("sarf_tome", sarf_top1), ("evit", evit_top1))
    ]
    return [dense, *reduced]


def report():
    run = lambda *top1: {"train": {}, "meta": {}, "entries": entries(*top1), "steps": 4}
    return {
        "date": "2026-11-26",
        "machine": "test machine",
        "timings_s": {"train a": 60.0},
        "total_s": 120.0,
        "runs": {"vmamba_mini": run(0.8, 0.79, 0.5), "vit_mini": run(0.7, 0.69, 0.6)},
        "finetune": {
            "model": "vmamba_mini",
            "steps": 3,
            "dense": {"reduction": "none", "entries": entries(0.81, 0.78, 0.5)},
            "sarf": {"reduction": "sarf_tome:keep=0.6,sites=1", "entries": entries(0.8, 0.8, 0.5)},
        },
    }


def test_tables_put_each_method_in_its_column_with_its_drop():
    text = reproduce.markdown(report()) + reproduce.finetune_markdown(report())
    header = next(line for line in text.splitlines() if line.startswith("| backbone | schedule | GFLOPs"))
    assert header.split("|")[4:-1] == [" dense ", " evit ", " tome ", " sarf_evit ", " sarf_tome "]
    row = next(line for line in text.splitlines() if line.startswith("| vmamba_mini | keep=0.6,sites=1 | 0.0150"))
    assert row.split("|")[3:-1] == [" 0.0150 (25%) ", " 80.00 ", " 50.00 (-30.00) ", " – ", " – ", " 79.00 (-1.00) "]
    assert "| + SARF fine-tuned | 80.00 | 80.00 |" in text and "| + dense control | 81.00 | 78.00 |" in text


def test_plot_has_one_panel_per_backbone(tmp_path):
    reproduce.plot(report(), tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 10_000


def test_dense_training_line_names_the_steps_of_each_backbone():
    assert "vmamba_mini 4 steps, vit_mini 4 steps of batch 64 at 28 px" in reproduce.markdown(report())


def test_finetuning_picks_the_sarf_tome_budget_that_lost_the_most():
    rows = entries(0.8, 0.79, 0.5) + [dict(entries(0.8, 0.6, 0.5)[1], reduction="sarf_tome:keep=0.3", top1_drop=0.2)]
    assert reproduce.most_lost(rows) == "sarf_tome:keep=0.3"


def test_train_command_uses_the_paper_mini_config():
    args = types.SimpleNamespace(steps=None, data_dir="/data")
    command = reproduce.train_command(args, "vmamba_paper_mini", pathlib.Path("w"), "--config.init_from=v")
    assert "configs/paper_mini.py:vmamba_paper_mini" in command and not any("total_steps" in a for a in command)
    assert command[-1] == "--config.init_from=v"
    args.steps = 7
    assert "--config.total_steps=7" in reproduce.train_command(args, "vmamba_paper_mini", pathlib.Path("w"))
    finetune = reproduce.train_command(args, "vmamba_paper_mini", pathlib.Path("w"), steps=3)
    assert [a for a in finetune if "total_steps" in a] == ["--config.total_steps=3"]  # one, the fine-tuning's
