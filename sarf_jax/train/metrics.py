"""What a run reports: JSONL metrics and TensorBoard event files in the workdir, and a progress bar.

WORKDIR/metrics.jsonl: one JSON object per line, {"step", "split", <metric>: value, ...}.
WORKDIR/tensorboard/: event files written by tensorboardX (no TensorFlow needed), tags
"<split>/<metric>". Only process 0 writes; the others get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time

from etils import epath


class MetricWriter:
    def __init__(self, workdir, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        SummaryWriter = _summary_writer_class()
        workdir = epath.Path(workdir)
        self.jsonl = (workdir / "metrics.jsonl").open("a")
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"), flush_secs=30)

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self.jsonl.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        self.jsonl.flush()
        for name, value in values.items():
            if math.isfinite(value):
                self.tensorboard.add_scalar(f"{split}/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without importing torch.

    Where torch is installed, tensorboardX imports it at import time, only so that it can accept
    torch tensors; this writer is given Python floats. Importing torch costs several seconds per
    process (~5 s on a 2-core VM), so unless torch is loaded already, the import is made to see it
    as absent, for this one import only."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX catches
    try:
        from tensorboardX import SummaryWriter
    finally:
        if sys.modules.get("torch", False) is None:
            del sys.modules["torch"]
    return SummaryWriter


class ProgressBar:
    """step/total, steps per second, ETA and the latest loss on one refreshing stderr line."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                dynamic_ncols=True,
                mininterval=1.0,
                smoothing=0.1,
                file=sys.stderr,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
            )

    def update(self, steps: int = 1, **postfix) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Throughput:
    """Steps per second between two calls."""

    def __init__(self, step: int):
        self.step, self.time = step, time.perf_counter()

    def __call__(self, step: int) -> float:
        now = time.perf_counter()
        rate = (step - self.step) / max(now - self.time, 1e-9)
        self.step, self.time = step, now
        return rate
