"""launch/preview_masking.py on real CSL sentences: human and JSON output, errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import preview_masking  # noqa: E402


def run_preview(*argv: str) -> tuple[int, str, str]:
    """Run the tool in-process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = preview_masking.main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def paper(csl_papers: list[dict]) -> dict:
    """A real paper whose title contains one of its keywords."""
    return next(p for p in csl_papers if any(k in p["title"] for k in p["keywords"] if len(k) >= 3))


def test_json_fields_are_consistent(paper: dict, tiny_tokenizer_dir: Path) -> None:
    code, out, _ = run_preview(
        "--strategy", "entity_wwm", "--masking-args", '{"mask_prob": 0.4, "entity_prob": 1.0}',
        "--keywords", ",".join(paper["keywords"]), "--text", paper["title"], "--samples", "4", "--seed", "7",
        "--tokenizer", str(tiny_tokenizer_dir), "--json",
    )
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["sample"] for r in records] == [0, 1, 2, 3]
    for r in records:
        tokens = r["tokens"]
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert r["entities"], "the title's keyword must be found as an entity"
        words = r["words"]
        assert words[0][0] == 1 and words[-1][1] == len(tokens) - 1
        assert all(a[1] == b[0] for a, b in zip(words, words[1:]))  # words partition the sentence
        assert all(e in words for e in r["entities"])  # entities are whole words
        assert len(r["input_tokens"]) == len(r["labels"]) == len(tokens) - r["deleted"]
        predicted = [label for label in r["labels"] if label is not None]
        assert predicted and all(label in tokens for label in predicted)
        assert r["args"]["entity_prob"] == 1.0 and r["strategy"] == "entity_wwm"
    # samples are epochs: they differ
    assert len({json.dumps(r["labels"]) for r in records}) > 1


def test_human_output_marks_entities_and_masks(csl_papers: list[dict], tmp_path: Path) -> None:
    texts = [p["title"] for p in csl_papers[:3]]
    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    lexicon = tmp_path / "keywords.txt"
    lexicon.write_text("".join(f"{k} 3\n" for p in csl_papers[:3] for k in p["keywords"]), encoding="utf-8")
    # No --tokenizer: a vocabulary is built from the text itself.
    code, out, _ = run_preview("--strategy", "wwm", "--input", str(source), "--lexicon", str(lexicon),
                               "--samples", "2", "--masking-args", "mask_prob: 0.5")
    assert code == 0
    assert out.count("sentence ") == 3 and out.count("  sample ") == 6
    assert "【" in out and "[MASK]" in out and "predicted)" in out


def test_same_seed_same_output(paper: dict, tiny_tokenizer_dir: Path) -> None:
    argv = ["--text", paper["abstract"][:120], "--tokenizer", str(tiny_tokenizer_dir), "--json", "--seed", "3"]
    assert run_preview(*argv)[1] == run_preview(*argv)[1]
    assert run_preview(*argv)[1] != run_preview(*argv[:-1], "4")[1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--strategy", "nope", "--text", "基于深度学习的方法"], "unknown masking strategy 'nope'; available: token"),
        (["--masking-args", '{"mask_probability": 0.2}', "--text", "基于深度学习的方法"], "accepted options"),
        (["--input", "/no/such/file.txt"], "no such file"),
        (["--lexicon", "/no/such/keywords.txt", "--text", "基于深度学习的方法"], "no such lexicon file"),
    ],
)
def test_bad_input_fails_with_one_clear_line(argv: list[str], message: str, tiny_tokenizer_dir: Path) -> None:
    code, out, err = run_preview(*argv, "--tokenizer", str(tiny_tokenizer_dir))
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_runs_as_a_script(tiny_tokenizer_dir: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "preview_masking.py"), "--strategy", "span", "--samples", "1",
         "--text", "提出了一种基于卷积神经网络的图像识别方法。", "--tokenizer", str(tiny_tokenizer_dir), "--json"],
        capture_output=True, text=True, timeout=120, cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["strategy"] == "span"
