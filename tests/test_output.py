"""framework/evaluation/output.py and framework/jsonsafe.py: tables, the --json line and strict JSON values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from framework.evaluation.output import _width, format_table, last_json_line
from framework.jsonsafe import json_safe


def test_table_aligns_chinese_cells_and_shows_nan_as_dash() -> None:
    text = format_table([{"task": "分类", "accuracy": 0.5}, {"task": "csl-category", "accuracy": math.nan}])
    header, rule, first, second = text.splitlines()
    assert rule.startswith("-" * len("csl-category"))
    # 分类 takes four terminal columns: the value starts in the header's column on screen.
    assert _width(first[: first.index("0.5000")]) == _width(header[: header.index("accuracy")])
    assert second.endswith("-")


def test_last_json_line_skips_trailing_log_lines_and_needs_an_object() -> None:
    out = 'table\n{"a": 1}\n[rank0] shutdown warning\n\n'
    assert last_json_line(out) == {"a": 1}
    with pytest.raises(ValueError):
        last_json_line("no json here\n[1, 2]\n")


def test_json_safe_makes_strict_json() -> None:
    value = json_safe({"x": math.inf, "y": (1, math.nan), "p": Path("a/b"), 3: "k"})
    assert value == {"x": None, "y": [1, None], "p": "a/b", "3": "k"}
    json.dumps(value, allow_nan=False)
