"""What every evaluation command prints and reports: a readable table, one JSON line, the run's W&B project.

Each command of ``launch/`` (``fill_mask.py``, ``evaluate.py``, ``finetune.py``, ``study.py``) ends with
:func:`emit`: a table for people, and with ``--json`` one JSON object on the last line for scripts (the study
reads it). :func:`report_to_wandb` sends the figures to the W&B project of the run that produced the model, so
evaluation and fine-tuning sit on the same dashboard as pretraining; like training, it never fails a command.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence, TextIO

from framework.jsonsafe import json_safe

logger = logging.getLogger(__name__)


def format_value(value: Any) -> str:
    """A cell: floats with 4 significant decimals, ``nan`` as ``-``, everything else as ``str``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text table of ``rows`` (dicts), columns in first-seen order unless given."""
    if not rows:
        return "(no rows)"
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            for key in row:
                seen.setdefault(key, None)
        columns = list(seen)
    cells = [[format_value(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(_width(c), *(_width(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(_pad(c, w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(_pad(v, w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def _width(text: str) -> int:
    """Display width: CJK characters take two columns in a terminal."""
    return sum(2 if ord(ch) >= 0x1100 and not 0x2E80 > ord(ch) >= 0x2000 else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def emit(result: dict[str, Any], tables: Iterable[tuple[str, Sequence[dict[str, Any]]]], as_json: bool,
         stream: TextIO | None = None) -> None:
    """Print ``tables`` (title, rows) for people and, with ``as_json``, ``result`` as one JSON last line."""
    stream = stream or sys.stdout
    for title, rows in tables:
        if title:
            print(title, file=stream)
        print(format_table(rows), file=stream)
        print(file=stream)
    if as_json:
        print(json.dumps(json_safe(result), ensure_ascii=False, allow_nan=False), file=stream)
    stream.flush()


def last_json_line(text: str) -> dict[str, Any]:
    """The last line of a command's output that is a JSON object (what :func:`emit` printed).

    Lines after it are skipped, so log lines that reach a merged stdout/stderr late (shutdown warnings)
    do not hide the result.
    """
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    raise ValueError("no JSON object in the output: expected one on the last line (--json)")


def flatten_metrics(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested result as ``a/b/c`` keys (for dashboards); lists and strings are dropped."""
    out: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def run_folder_of(model_dir: Path) -> Path | None:
    """The training output folder an exported model came from (``OUTPUT/model`` -> ``OUTPUT``), if it is one."""
    parent = Path(model_dir).resolve().parent
    return parent if (parent / "run_config.json").is_file() else None


def report_to_wandb(model_dir: str | Path, split: str, result: dict[str, Any], project: str | None = None,
                    step: int | None = None) -> None:
    """Send ``result``'s numbers to W&B under ``split`` (``eval``, ``finetune/csl-category``...).

    The run is the pretraining run's own when ``model_dir`` is ``OUTPUT/model`` of a run that reported to W&B
    (its ``wandb_run_id`` is resumed), else a new run in ``project`` (default: the run's, else
    ``academic-bert``). Offline without a key or network, never fatal: a failure is one warning.
    """
    from framework.training.reporting import MetricsReporter

    model_dir = Path(model_dir)
    run_dir = run_folder_of(model_dir)
    run_id = None
    run_config: dict[str, Any] = {}
    if run_dir is not None:
        try:
            run_config = json.loads((run_dir / "run_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            run_config = {}
        if (run_dir / "wandb_run_id").is_file():
            run_id = (run_dir / "wandb_run_id").read_text(encoding="utf-8").strip() or None
    report = run_config.get("report", {}) if isinstance(run_config, dict) else {}
    project = project or report.get("project") or "academic-bert"
    out_dir = run_dir if run_dir is not None else model_dir
    try:
        reporter = MetricsReporter(out_dir / "evaluation", "wandb", project, report.get("run_name"),
                                   list(report.get("tags") or []), {"model": str(model_dir)}, True,
                                   wandb_entity=report.get("wandb_entity"), run_id=run_id)
        with reporter:
            reporter.log(step if step is not None else _final_step(run_config), split, flatten_metrics(result))
    except Exception as err:  # noqa: BLE001 - a dashboard must never fail an evaluation
        logger.warning("W&B reporting failed (%s: %s); the figures above are unaffected", type(err).__name__, err)


def _final_step(run_config: dict[str, Any]) -> int:
    try:
        return int(run_config.get("training", {}).get("max_steps") or 0)
    except (TypeError, ValueError, AttributeError):
        return 0
