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
    for name in ("masking", "segmentation", "preprocess", "mlm-head", "hot-path", "train", "terms"):
        assert name in result.stdout


def test_every_option_has_a_description() -> None:
    sys.path.insert(0, str(ROOT / "launch"))
    try:
        import benchmark
    finally:
        sys.path.remove(str(ROOT / "launch"))
    parser = benchmark.build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(subparsers.choices) >= {"masking", "segmentation", "preprocess", "mlm-head", "hot-path", "train", "terms"}
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


@pytest.mark.slow
def test_train_benchmark_json(shared_data_dir: Path, tmp_path: Path) -> None:
    """``train`` at its smallest on real CSL sentences: all six candidates, the headline ratio, checkable MFU."""
    env = {**os.environ, "ACADEMIC_BERT_SHARED_DATA": str(shared_data_dir),
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(tmp_path / "torch-extensions"))}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # a world of its own, whatever an earlier in-process test left in os.environ
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "train", "--preset", "tiny", "--examples", "300", "--vocab-size", "2000",
         "--micro-batch", "16", "--grad-accum", "2", "--seq-len", "96", "--steps", "1", "--rounds", "1",
         "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    rows = data["candidates"]
    assert set(rows) == {f"{l}-{h}" for l in ("padded128", "padded", "packed") for h in ("dense", "sparse")}
    assert data["packed_sparse_vs_padded_dense"] == pytest.approx(
        rows["packed-sparse"]["real_tokens_per_s"] / rows["padded128-dense"]["real_tokens_per_s"])
    for name, row in rows.items():
        assert row["real_tokens_per_s"] > 0 and 0 < row["data_loading_share"] < 1, name
        # MFU is exactly what the table says it is: real tokens/s x FLOPs per real token / peak.
        assert row["mfu"] == pytest.approx(row["real_tokens_per_s"] * data["flops_per_real_token"]["total"] / 1e12
                                           / data["peak_tflops"])
    # Each step sees 32 sentences in every layout; rows of 96 are the fullest when packed, the emptiest padded.
    fill = {name: row["real_token_fraction"] for name, row in rows.items()}
    assert fill["packed-sparse"] > 0.9 > fill["padded-sparse"] > fill["padded128-sparse"]
    assert fill["padded128-sparse"] == pytest.approx(data["mean_sentence_tokens"] / 96, rel=0.05)
    assert all(rows[f"{l}-dense"]["real_token_fraction"] == fill[f"{l}-sparse"] for l in ("padded128", "padded", "packed"))
    assert data["precision"] == "bf16" and data["peak_source"].startswith("measured")
    assert "packed_sparse_vs_padded_dense" in result.stdout and "MFU" in result.stdout


def test_train_benchmark_flops_and_peaks() -> None:
    from framework.benchmarks.train import datasheet_peak, flops_per_real_token, parse_candidates

    # BERT-base, 21,128 tokens, 15% labelled, 64 tokens of context: 6 x 85M encoder weights per token...
    f = flops_per_real_token(768, 12, 3072, 21128, 64.0, 0.15)
    assert f["encoder"] == 6 * 12 * (4 * 768**2 + 2 * 768 * 3072)
    assert f["attention"] == 12 * 12 * 768 * 64.0
    assert f["head"] == pytest.approx(6 * 0.15 * (768**2 + 768 * 21128))
    assert f["total"] == pytest.approx(f["encoder"] + f["attention"] + f["head"])
    assert 500e6 < f["total"] < 700e6
    assert datasheet_peak("NVIDIA H200", "bf16") == 989.4 and datasheet_peak("NVIDIA GeForce RTX 2080 Ti", "fp16") == 53.8
    assert datasheet_peak("NVIDIA V100-SXM2-16GB", "bf16") is None and datasheet_peak("Some CPU", "bf16") is None
    assert parse_candidates("packed-sparse, padded128-dense") == [("packed", "sparse"), ("padded128", "dense")]
    with pytest.raises(SystemExit, match="packed-wide"):
        parse_candidates("packed-wide")


@pytest.mark.parametrize("argv", [["masking", "--repeats", "0"], ["nope"]])
def test_bad_arguments_fail_cleanly(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
