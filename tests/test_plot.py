"""framework.training.plot: the loss curves read from metrics.jsonl and the PNG drawn from them."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from framework.training.plot import plot_losses, read_loss_curves

# matplotlib's default colour cycle: train is drawn in C0 (blue), valid in C1 (orange).
C0, C1 = np.array([0x1F, 0x77, 0xB4]) / 255, np.array([0xFF, 0x7F, 0x0E]) / 255


def write_jsonl(path: Path, records: list[dict], tail: str = "") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write(tail)
    return path


def colour_pixels(png: Path, colour: np.ndarray) -> int:
    """How many pixels of the image are (almost exactly) the given RGB colour."""
    image = matplotlib.image.imread(png)[..., :3]
    return int((np.abs(image - colour).max(axis=-1) < 0.02).sum())


def test_train_and_valid_curves(tmp_path: Path) -> None:
    records = [{"step": s, "split": "train", "loss": 8.0 - 0.05 * s, "lr": 1e-4} for s in range(1, 101)]
    records += [{"step": s, "split": "valid", "loss": 7.5 - 0.04 * s, "perplexity": 1.0} for s in (25, 50, 75, 100)]
    metrics = write_jsonl(tmp_path / "metrics.jsonl", records)
    out = plot_losses(metrics, tmp_path / "plots" / "loss.png")
    assert out == tmp_path / "plots" / "loss.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert colour_pixels(out, C0) > 100 and colour_pixels(out, C1) > 100


def test_valid_less_run_plots_train_only(tmp_path: Path) -> None:
    records = [{"step": s, "split": "train", "loss": 5.0 / s} for s in range(1, 30)]
    out = plot_losses(write_jsonl(tmp_path / "m.jsonl", records), tmp_path / "loss.png")
    assert colour_pixels(out, C0) > 100 and colour_pixels(out, C1) == 0


def test_resumed_steps_keep_the_latest_record_and_bad_lines_are_skipped(tmp_path: Path, caplog) -> None:
    records = [
        {"step": 1, "split": "train", "loss": 4.0},
        {"step": 2, "split": "train", "loss": 3.0},
        {"step": 3, "split": "train", "loss": 9.9},  # logged before the kill ...
        {"step": 2, "split": "valid", "loss": 3.5},
        {"step": 3, "split": "train", "loss": 2.0},  # ... and again by the resumed run
        {"step": 4, "split": "train", "loss": float("nan")},
        {"step": 5, "split": "train", "tokens_per_s": 100.0},
    ]
    metrics = write_jsonl(tmp_path / "m.jsonl", records, tail='{"step": 6, "split": "tr')
    curves = read_loss_curves(metrics)
    assert curves == {"train": [(1, 4.0), (2, 3.0), (3, 2.0)], "valid": [(2, 3.5)]}
    assert "m.jsonl:8" in caplog.text


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        plot_losses(tmp_path / "missing.jsonl", tmp_path / "x.png")
    empty = write_jsonl(tmp_path / "empty.jsonl", [{"step": 1, "split": "train", "lr": 0.1}])
    with pytest.raises(ValueError, match="empty.jsonl"):
        plot_losses(empty, tmp_path / "x.png")
