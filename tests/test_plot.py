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


# ------------------------------------------------------------------------- the dashboard (issue 11, item 8)

def run_records(scale: float = 1.0) -> list[dict]:
    records = [{"step": s, "split": "train", "loss": scale * (8.0 - 0.05 * s), "lr": 1e-3 * min(s, 10) / 10,
                "tokens_per_s": 500.0 + s, "grad_norm": 1.0 / s} for s in range(1, 101)]
    records += [{"step": s, "split": "valid", "loss": scale * (7.5 - 0.04 * s), "perplexity": 100.0 / (1 + s),
                 "masked_accuracy": s / 200, "entity_accuracy": s / 300} for s in (0, 25, 50, 75, 100)]
    return records


def test_every_metric_is_read_with_the_latest_record_per_step(tmp_path: Path) -> None:
    from framework.training.plot import read_metric_curves

    metrics = write_jsonl(tmp_path / "m.jsonl", [{"step": 1, "split": "train", "lr": 0.1, "loss": 3.0},
                                                {"step": 1, "split": "train", "lr": 0.2, "loss": None},
                                                {"step": 2, "split": "valid", "entity_accuracy": 0.5}])
    curves = read_metric_curves(metrics)
    assert curves == {("train", "lr"): [(1, 0.2)], ("train", "loss"): [(1, 3.0)],
                      ("valid", "entity_accuracy"): [(2, 0.5)]}


def test_loss_png_is_a_grid_of_panels(tmp_path: Path) -> None:
    """loss.png used to hold the loss alone: the lr, throughput and accuracy curves now have panels of their own."""
    out = plot_losses(write_jsonl(tmp_path / "metrics.jsonl", run_records()), tmp_path / "loss.png")
    height, width = matplotlib.image.imread(out).shape[:2]
    assert width > 1.5 * height  # 3 x 2 panels
    # The entity-accuracy curve (C2, green) exists only in the accuracy panel of the grid.
    assert colour_pixels(out, np.array([0x2C, 0xA0, 0x2C]) / 255) > 50
    # Train curves in four panels (loss, lr, tokens/s, grad norm): far more blue than a single loss line draws.
    single = plot_losses(write_jsonl(tmp_path / "loss_only.jsonl",
                                     [{"step": s, "split": "train", "loss": 8.0 - 0.05 * s} for s in range(1, 101)]),
                         tmp_path / "loss_only.png")
    assert colour_pixels(out, C0) > 2 * colour_pixels(single, C0)


def test_several_runs_overlay_one_colour_each(tmp_path: Path) -> None:
    from framework.training.plot import plot_runs

    runs = []
    for i, name in enumerate(("entity_wwm", "wwm", "span")):
        folder = tmp_path / name
        folder.mkdir()
        write_jsonl(folder / "metrics.jsonl", run_records(1.0 + 0.1 * i))
        runs.append(folder)
    out = plot_runs(runs, tmp_path / "study.png")
    green = np.array([0x2C, 0xA0, 0x2C]) / 255  # C2: the third run
    assert colour_pixels(out, C0) > 100 and colour_pixels(out, C1) > 100 and colour_pixels(out, green) > 100


def test_launch_plot_cli_and_its_error_for_a_folder_without_metrics(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    run.mkdir()
    write_jsonl(run / "metrics.jsonl", run_records())
    (tmp_path / "empty").mkdir()
    ok = subprocess.run([sys.executable, str(root / "launch" / "plot.py"), str(run), str(run / "metrics.jsonl"),
                         "--output", str(tmp_path / "both.png")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "both.png").read_bytes()[:4] == b"\x89PNG"
    bad = subprocess.run([sys.executable, str(root / "launch" / "plot.py"), str(run), str(tmp_path / "empty"),
                          "--output", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and not (tmp_path / "x.png").exists()
    assert f"{tmp_path / 'empty'}: has no metrics.jsonl" in bad.stderr
