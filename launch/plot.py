"""Draw run dashboards from ``metrics.jsonl``: one run, or several overlaid (one colour per run).

    python launch/plot.py RUN [RUN ...] [--output FILE] [--labels A,B,...]

Each ``RUN`` is a run's ``--output-dir`` (or its ``metrics.jsonl``). The picture is a grid: training and
validation loss, validation perplexity, masked and entity accuracy, learning rate, real tokens per second and
gradient norm against optimizer step. Examples::

    python launch/plot.py runs/demo                                   # -> dashboard.png
    python launch/plot.py runs/study/* --output study.png             # the masking study's runs side by side

A folder without ``metrics.jsonl`` is an error naming it (exit status 2); nothing is drawn then.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    """The ``launch/plot.py`` argument parser."""
    parser = argparse.ArgumentParser(prog="launch/plot.py", description="Plot one or several runs' metrics.jsonl "
                                     "as a dashboard (loss, perplexity, accuracy, lr, tokens/s, grad norm).")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run output folders (or their metrics.jsonl)")
    parser.add_argument("--output", default="dashboard.png", help="the PNG to write (default dashboard.png)")
    parser.add_argument("--labels", help="comma-separated legend labels, one per RUN (default: folder names)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Draw the dashboard; a missing or empty metrics file exits with status 2 and one message."""
    args = build_parser().parse_args(argv)
    from framework.training.plot import plot_runs

    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    if labels is not None and len(labels) != len(args.runs):
        print(f"launch/plot.py: --labels has {len(labels)} names for {len(args.runs)} runs", file=sys.stderr)
        return 2
    try:
        out = plot_runs([Path(r) for r in args.runs], Path(args.output), labels)
    except (FileNotFoundError, ValueError) as exc:
        print(f"launch/plot.py: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
