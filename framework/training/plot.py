"""The run dashboard: a small grid of curves against optimizer step, drawn from ``metrics.jsonl``.

Panels: training and validation loss, validation perplexity, masked and entity accuracy, learning rate, real
(non-padding) tokens per second and gradient norm. :func:`plot_losses` draws one run (the trainer's
``OUTPUT/loss.png``: train in blue C0, valid in orange C1); :func:`plot_runs` overlays several (``launch/plot.py
RUN [RUN ...]``, e.g. the masking study's run folders), one colour per run, train solid, valid dashed.

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
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on training nodes
import matplotlib.pyplot as plt  # noqa: E402 - must follow the backend choice

logger = logging.getLogger(__name__)


def read_loss_curves(metrics_jsonl: Path) -> dict[str, list[tuple[int, float]]]:
    """``{split: [(step, loss), ...]}`` sorted by step, keeping the last record of each step.

    Records without a finite ``loss`` (for example a throughput-only record) are ignored.
    """
    # One reader for every metric (read_metric_curves); the loss curves are its "loss" entries.
    return {split: points for (split, key), points in read_metric_curves(metrics_jsonl).items() if key == "loss"}


Curves = dict[tuple[str, str], list[tuple[int, float]]]

# (title, y label, [(split, key, legend label, line style)], log y axis). Only what metrics.jsonl records.
PANELS: tuple[tuple[str, str, tuple[tuple[str, str, str, str], ...], bool], ...] = (
    ("Masked-language-model loss", "MLM loss", (("train", "loss", "train loss", "-"),
                                                ("valid", "loss", "valid loss", "--")), False),
    ("Validation perplexity", "perplexity", (("valid", "perplexity", "perplexity", "--"),), True),
    ("Validation accuracy", "accuracy", (("valid", "masked_accuracy", "masked", "--"),
                                         ("valid", "entity_accuracy", "entity", ":")), False),
    ("Learning rate", "lr", (("train", "lr", "lr", "-"),), False),
    ("Real tokens per second", "tokens/s", (("train", "tokens_per_s", "tokens/s", "-"),), False),
    ("Gradient norm", "grad norm", (("train", "grad_norm", "grad norm", "-"),), False),
)
# One run: the split picks the colour (what the loss plot always did); several: the run does.
_SPLIT_COLOURS = {"train": "C0", "valid": "C1"}
_ENTITY_COLOUR = "C2"  # one run: entity accuracy beside masked accuracy (C1) in the accuracy panel


def read_metric_curves(metrics_jsonl: Path) -> Curves:
    """``{(split, key): [(step, value), ...]}`` for every finite number of every record, latest record per step.

    A resumed step keeps its latest record; a broken line (an interrupted write) is skipped with a warning;
    booleans and non-finite values are not curves.
    """
    metrics_jsonl = Path(metrics_jsonl)
    if not metrics_jsonl.is_file():
        raise FileNotFoundError(f"no metrics file at {metrics_jsonl}; the run writes it as OUTPUT/metrics.jsonl")
    curves: dict[tuple[str, str], dict[int, float]] = {}
    with open(metrics_jsonl, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s:%d is not valid JSON (interrupted write?); skipping it", metrics_jsonl, line_no)
                continue
            step, split = record.get("step"), record.get("split")
            if step is None or split is None:
                continue
            for key, value in record.items():
                if key in ("step", "split") or isinstance(value, bool) or not isinstance(value, (int, float)):
                    continue
                if math.isfinite(value):
                    curves.setdefault((str(split), key), {})[int(step)] = float(value)
    return {name: sorted(points.items()) for name, points in curves.items()}


def plot_losses(metrics_jsonl: Path, out_png: Path) -> Path:
    """Draw one run's dashboard (:data:`PANELS`) into ``out_png`` and return its path.

    Train curves are blue, valid curves orange; a run without validation records has empty validation panels
    saying so. Raises ``ValueError`` when the file holds no loss at all, since an empty plot would hide that
    the run logged nothing.
    """
    return plot_runs([Path(metrics_jsonl)], out_png)


def metrics_file(run: Path) -> Path:
    """``RUN/metrics.jsonl`` for a run folder (or ``run`` itself when it is the file); a clear error otherwise."""
    run = Path(run)
    path = run if run.is_file() else run / "metrics.jsonl"
    if not path.is_file():
        what = "no such folder" if not run.exists() else "has no metrics.jsonl"
        raise FileNotFoundError(f"{run}: {what}; give a run's --output-dir (it writes OUTPUT/metrics.jsonl) or "
                                "the metrics.jsonl itself")
    return path


def _labels(paths: Sequence[Path]) -> list[str]:
    """A run's folder name as its legend label; the longer path where two runs share a name."""
    names = [(p.parent if p.name == "metrics.jsonl" else p).name or str(p) for p in paths]
    return [str(p.parent if p.name == "metrics.jsonl" else p) if names.count(n) > 1 else n
            for n, p in zip(names, paths)]


def plot_runs(runs: Sequence[Path], out_png: Path, labels: Sequence[str] | None = None) -> Path:
    """Overlay the dashboards of ``runs`` (run folders or their ``metrics.jsonl``) in one picture.

    Raises:
        FileNotFoundError: a run without ``metrics.jsonl`` (named).
        ValueError: a run whose metrics hold no finite loss (named).
    """
    paths = [metrics_file(r) for r in runs]
    if not paths:
        raise ValueError("no run to plot")
    labels = list(labels) if labels is not None else _labels(paths)
    all_curves = []
    for path in paths:
        curves = read_metric_curves(path)
        if not any(key == "loss" for _, key in curves):
            raise ValueError(f"{path} holds no record with a finite 'loss'; nothing to plot")
        all_curves.append(curves)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    single = len(paths) == 1

    fig, axes = plt.subplots(2, 3, figsize=(13, 7), dpi=110)
    try:
        for ax, (title, ylabel, series, log_y) in zip(axes.flat, PANELS):
            drawn = False
            for run_index, (curves, label) in enumerate(zip(all_curves, labels)):
                for split, key, what, style in series:
                    points = curves.get((split, key))
                    if not points:
                        continue
                    steps, values = zip(*points)
                    if single:
                        colour = _ENTITY_COLOUR if key == "entity_accuracy" else _SPLIT_COLOURS.get(split, "C7")
                        name = what
                    else:
                        colour, name = f"C{run_index % 10}", f"{label}: {what}" if len(series) > 1 else label
                    # Validation records are few (one per --eval-every): markers show where they were taken.
                    ax.plot(steps, values, linestyle=style, color=colour, label=name,
                            marker="o" if split == "valid" and single else None, markersize=3,
                            linewidth=1.6 if split == "valid" else 1.2)
                    drawn = True
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("optimizer step", fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
            if not drawn:
                ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="0.5")
                continue
            if log_y:
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        fig.suptitle(labels[0] if single else f"{len(paths)} runs", fontsize=11)
        fig.tight_layout()
        fig.savefig(out_png)
    finally:
        plt.close(fig)  # long runs plot repeatedly; unclosed figures leak memory
    return out_png
