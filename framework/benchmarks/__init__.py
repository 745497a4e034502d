"""Benchmarks behind ``launch/benchmark.py``: one module per benchmark, one shared timing helper.

``python launch/benchmark.py NAME [options] [--json]`` runs benchmark ``NAME`` of :data:`BENCHMARKS`. Each
module there provides:

* ``DESCRIPTION``: one line for ``--help``;
* ``add_arguments(parser)``: its options, every one with a ``help`` text;
* ``run(args) -> dict``: run it and return a JSON-ready result (machine, settings, figures);
* ``tables(result) -> list[(title, rows)]``: what people read (rows are dicts, one per table line).

The command prints the tables and, with ``--json``, the result as one JSON object on the last line
(:func:`framework.evaluation.output.emit`, the same format as the evaluation commands). Modules are imported
only when their benchmark runs (``--help`` stays fast), so they must not import ``torch``, ``transformers`` or
``jieba`` at module level: do that inside ``run``.

Adding a benchmark (``vocab``, say) is one module ``framework/benchmarks/vocab.py`` with those four names and
one line in :data:`BENCHMARKS`; tests and docs/benchmarks.md list the figures. Time several candidates with
:func:`framework.benchmarks.timing.alternating_medians` and record :func:`framework.benchmarks.timing.machine`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BENCHMARKS: dict[str, str] = {
    "masking": "framework.benchmarks.masking",
    "segmentation": "framework.benchmarks.segmentation",
    "preprocess": "framework.benchmarks.preprocess",
    "mlm-head": "framework.benchmarks.mlm_head",
    "hot-path": "framework.benchmarks.hot_path",
    "train": "framework.benchmarks.train",
    "terms": "framework.benchmarks.terms",
}
"""Subcommand name -> module implementing it (see the module docstring for what a module provides)."""


def load(name: str) -> ModuleType:
    """The module of benchmark ``name`` (imported now)."""
    try:
        path = BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}") from None
    return importlib.import_module(path)
