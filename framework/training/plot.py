"""The loss plot: training and validation loss against optimizer step, from ``metrics.jsonl``.

The metrics file is append-only across restarts, so after a ``--resume`` the steps between the last
checkpoint and the interruption appear twice; the plot keeps the latest record of each (split, step), which
is the one the continued run produced. A truncated last line (a run killed mid-write) is skipped with a
warning rather than failing the plot.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

logger = logging.getLogger(__name__)


def read_loss_curves(metrics_jsonl: Path) -> dict[str, list[tuple[int, float]]]:
    """``{split: [(step, loss), ...]}`` sorted by step, keeping the last record of each step.

    Records without a finite ``loss`` (for example a throughput-only record) are ignored.
    """
    metrics_jsonl = Path(metrics_jsonl)
    if not metrics_jsonl.is_file():
        raise FileNotFoundError(f"no metrics file at {metrics_jsonl}; the run writes it as OUTPUT/metrics.jsonl")
    curves: dict[str, dict[int, float]] = {}
    with open(metrics_jsonl, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is not valid JSON (interrupted write?); skipping it", metrics_jsonl, line_no)
                continue
            loss, step, split = record.get("loss"), record.get("step"), record.get("split")
            if not isinstance(loss, (int, float)) or not math.isfinite(loss) or step is None or split is None:
                continue
            curves.setdefault(str(split), {})[int(step)] = float(loss)
    return {split: sorted(points.items()) for split, points in curves.items()}


def plot_losses(metrics_jsonl: Path, out_png: Path) -> Path:
    """Draw train (line) and valid (line with markers) loss vs step into ``out_png`` and return its path.

    Runs without validation records get the training curve alone. Raises ``ValueError`` when the file holds
    no loss at all, since an empty plot would hide that the run logged nothing.
    """
    curves = read_loss_curves(metrics_jsonl)
    if not any(curves.values()):
        raise ValueError(f"{metrics_jsonl} holds no record with a finite 'loss'; nothing to plot")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    try:
        styles = {"train": dict(color="C0", linewidth=1.2), "valid": dict(color="C1", marker="o", linewidth=1.6)}
        # train first, valid second, then any other split the loop logged, in name order.
        for split in sorted(curves, key=lambda s: (s != "train", s != "valid", s)):
            steps, losses = zip(*curves[split])
            ax.plot(steps, losses, label=f"{split} loss", **styles.get(split, dict(linewidth=1.0)))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("MLM loss")
        ax.set_title("Masked-language-model loss")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_png)
    finally:
        plt.close(fig)  # long runs plot repeatedly; unclosed figures leak memory
    return out_png
