"""launch/benchmark.py: the subcommands, their help, and a small real run of the masking benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "benchmark.py"


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    """Building the parser (every subcommand's options) must not import torch, transformers, jieba or numpy."""
    code = (
        f"import runpy, sys\nsys.argv = [{str(SCRIPT)!r}, '--help']\n"
        "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'jieba', 'numpy') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    for name in ("masking", "segmentation", "preprocess", "mlm-head"):
        assert name in result.stdout


def test_every_option_has_a_description() -> None:
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(ROOT / "launch"))
    parser = benchmark.build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(subparsers.choices) >= {"masking", "segmentation", "preprocess", "mlm-head"}
    for name, child in subparsers.choices.items():
        for action in child._actions:
            assert action.help and action.help.strip(), (name, action.dest)


def test_old_scripts_are_gone() -> None:
    assert not list((ROOT / "launch").glob("benchmark_*.py"))


def test_masking_benchmark_json(shared_data_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ACADEMIC_BERT_SHARED_DATA": str(shared_data_dir)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "masking", "--examples", "200", "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["benchmark"] == "masking" and data["same_words"] is True
    assert data["settings"]["examples"] == 200 and data["settings"]["repeats"] == 1
    rates = data["examples_per_second"]
    for name in ("transformers_wwm", "transformers_mlm", "token", "wwm", "entity_wwm", "span", "ngram",
                 "token_per_example", "wwm_per_example", "entity_wwm_per_example"):
        assert rates[name] > 0, name
    for key in ("entity_wwm_vs_transformers_wwm", "wwm_vs_transformers_wwm", "token_vs_transformers_wwm",
                "token_vs_transformers_mlm"):
        assert isinstance(data[key], (int, float)) and data[key] > 0, key
    assert set(data["speedup_vs_per_example"]) == set(data["vectorised"]) >= {"token", "wwm", "entity_wwm"}
    assert all(v > 0 for v in data["speedup_vs_per_example"].values())
    assert data["machine"]["cores"] >= 1 and "date" in data["machine"]
    assert "MaskingCollator(entity_wwm)" in result.stdout  # the table for people comes first


@pytest.mark.parametrize("argv", [["masking", "--repeats", "0"], ["nope"]])
def test_bad_arguments_fail_cleanly(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
