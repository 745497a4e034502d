"""The corpus pipeline end to end on real CSL data, its guarantees, and the command line."""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from framework.data.cleaning import clean_text, has_cjk
from framework.data.corpus import (
    DROP_REASONS,
    NoSentencesError,
    PreprocessConfig,
    PreprocessResult,
    demo_corpus_path,
    preprocess,
)
from framework.data.lexicon import load_lexicon, normalize_keyword
from framework.data.readers import BadInputError
from framework.data.sentences import split_sentences

ROOT = Path(__file__).resolve().parents[1]
_STRAY_SPACE_RE = re.compile(r"(?<![0-9A-Za-z\u00c0-\u024f]) | (?![0-9A-Za-z\u00c0-\u024f])")


def _run(inputs: list[Path], out: Path, **overrides: object) -> PreprocessResult:
    settings: dict = {"progress": False, "workers": 1, **overrides}
    return preprocess(PreprocessConfig(inputs=inputs, output=out, **settings))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def csl_runs(tmp_path_factory: pytest.TempPathFactory, csl_tsv: Path, csl_jsonl: Path) -> dict[str, PreprocessResult]:
    """csl-dev.tsv with one worker, csl-dev.jsonl with two workers and small chunks (many work units)."""
    root = tmp_path_factory.mktemp("csl")
    return {
        "tsv": _run([csl_tsv], root / "tsv", workers=1),
        "jsonl": _run([csl_jsonl], root / "jsonl", workers=2, chunk_bytes=40_000),
    }


@pytest.mark.parametrize("which", ["tsv", "jsonl"])
def test_csl_invariants(which: str, csl_runs: dict[str, PreprocessResult], csl_papers: list[dict]) -> None:
    result = csl_runs[which]
    train, valid = _lines(result.train), _lines(result.valid)
    stats = json.loads(result.stats_path.read_text(encoding="utf-8"))
    assert stats == json.loads(json.dumps(result.stats))

    # Every line: 10-128 characters, some Chinese, no stray whitespace; no line twice.
    for line in train + valid:
        assert 10 <= len(line) <= 128 and has_cjk(line), line
        assert line == line.strip() and not _STRAY_SPACE_RE.search(line) and "\t" not in line, line
    assert len(set(train + valid)) == len(train) + len(valid)

    # No paper in both train and valid (judged by the sentences only that paper has).
    owners: dict[str, set[int]] = {}
    for i, paper in enumerate(csl_papers):
        for raw in [paper["title"], *split_sentences(paper["abstract"])]:
            owners.setdefault(clean_text(raw), set()).add(i)
    in_train: set[int] = set()
    in_valid: set[int] = set()
    for lines, sides in ((train, in_train), (valid, in_valid)):
        for line in lines:
            if len(owners[line]) == 1:
                sides |= owners[line]
    assert in_valid and not in_train & in_valid

    # Every usable keyword is in keywords.txt, with its count.
    expected = Counter(w for p in csl_papers for w in map(normalize_keyword, p["keywords"]) if w)
    assert load_lexicon(result.keywords) == dict(expected)

    # The counts add up.
    assert stats["papers_read"] == 1000 and stats["bad_rows_total"] == 0
    assert stats["papers_train"] + stats["papers_valid"] + stats["papers_without_sentences"] == 1000
    assert stats["papers_valid"] >= 1
    assert stats["sentences_train"] == len(train) and stats["sentences_valid"] == len(valid)
    assert stats["sentences_kept"] == len(train) + len(valid)
    assert stats["sentences_seen"] == stats["sentences_kept"] + sum(stats["drops"].values())
    assert set(stats["drops"]) == set(DROP_REASONS)
    assert stats["sentences_seen"] == sum(1 + len(split_sentences(p["abstract"])) for p in csl_papers)
    assert stats["drops"]["duplicate"] == sum(n - 1 for n in Counter(
        clean_text(r) for p in csl_papers for r in [p["title"], *split_sentences(p["abstract"])]
        if 10 <= len(clean_text(r)) <= 128 and has_cjk(clean_text(r))
    ).values())
    assert stats["keywords"]["distinct"] == len(expected)
    assert stats["input_bytes"] == Path(stats["inputs"][0]["path"]).stat().st_size
    assert stats["seconds"] > 0 and stats["sentences_per_second"] > 0 and stats["characters_per_second"] > 0
    assert 4000 < stats["sentences_kept"] < 5000
    assert not list(result.output.glob(".*"))  # no temporary files left


def test_same_output_for_any_format_and_worker_count(csl_runs: dict[str, PreprocessResult]) -> None:
    tsv, jsonl = csl_runs["tsv"], csl_runs["jsonl"]
    assert (tsv.stats["workers"], jsonl.stats["workers"]) == (1, 2)
    for name in ("train.txt", "valid.txt", "keywords.txt"):
        assert (tsv.output / name).read_bytes() == (jsonl.output / name).read_bytes(), name


def test_split_is_seeded_and_keeps_one_valid_paper(tmp_path: Path) -> None:
    demo = demo_corpus_path()
    a = _run([demo], tmp_path / "a", seed=1, valid_fraction=0.2)
    b = _run([demo], tmp_path / "b", seed=1, valid_fraction=0.2)
    c = _run([demo], tmp_path / "c", seed=2, valid_fraction=0.2)
    assert a.valid.read_bytes() == b.valid.read_bytes()
    assert a.valid.read_bytes() != c.valid.read_bytes()
    assert 10 <= a.stats["papers_valid"] <= 40  # about 20% of 120 papers
    tiny = _run([demo], tmp_path / "tiny", valid_fraction=1e-9)
    assert tiny.stats["papers_valid"] == 1 and tiny.stats["papers_train"] == 119
    assert len(_lines(tiny.valid)) == tiny.stats["sentences_valid"] > 0


def test_dedup_off_and_extra_lexicon(tmp_path: Path, csl_tsv: Path) -> None:
    extra = tmp_path / "extra.txt"
    extra.write_text("平方和优化 10\n全新术语\n", encoding="utf-8")
    twice = _run([csl_tsv, csl_tsv], tmp_path / "twice", extra_lexicons=[extra])
    once = _run([csl_tsv], tmp_path / "once")
    assert twice.stats["sentences_kept"] == once.stats["sentences_kept"]
    # The second copy repeats every sentence the first kept or dropped as a duplicate.
    assert twice.stats["drops"]["duplicate"] == 2 * once.stats["drops"]["duplicate"] + once.stats["sentences_kept"]
    lexicon = load_lexicon(twice.keywords)
    assert lexicon["平方和优化"] == 2 * load_lexicon(once.keywords)["平方和优化"] + 10
    assert lexicon["全新术语"] == 1
    assert twice.stats["keywords"]["extra_lexicon_entries"] == 2
    kept_all = _run([csl_tsv, csl_tsv], tmp_path / "nodedup", dedup=False)
    assert kept_all.stats["drops"]["duplicate"] == 0
    assert kept_all.stats["sentences_kept"] == 2 * (once.stats["sentences_kept"] + once.stats["drops"]["duplicate"])


def test_bad_rows_skipped_and_counted_or_fatal(tmp_path: Path, csl_tsv: Path) -> None:
    rows = csl_tsv.read_bytes().splitlines(keepends=True)[:40]
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"".join(rows[:10]) + b"a\tb\n" + "标题\t摘要.\t关键词\t学科\t门类\n".encode("gbk") + b"".join(rows[10:]))
    result = _run([bad], tmp_path / "skip")
    assert result.stats["bad_rows"] == {"field_count": 1, "invalid_utf8": 1}
    assert result.stats["papers_read"] == 40
    with pytest.raises(BadInputError, match=r"bad\.tsv:11: 2 tab-separated fields.*--on-bad-row skip"):
        _run([bad], tmp_path / "error", on_bad_row="error")
    assert not (tmp_path / "error" / "train.txt").exists()
    assert not list((tmp_path / "error").glob(".*"))  # temporary files removed


def test_input_without_sentences_is_an_error(tmp_path: Path) -> None:
    english = tmp_path / "english.jsonl"
    english.write_text(
        "".join(json.dumps({"title": f"An English title {i}", "abstract": "Only Latin text here.", "keywords": ["x"]})
                + "\n" for i in range(5)),
        encoding="utf-8",
    )
    with pytest.raises(NoSentencesError, match=r"english\.jsonl: no sentence survived.*'no_cjk': 10"):
        _run([english], tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"min_chars": 50, "max_chars": 20}, "--max-chars 20 is below --min-chars 50"),
        ({"valid_fraction": 0.0}, "--valid-fraction 0.0: must be above 0"),
        ({"format": "xml"}, "--format 'xml' is unknown"),
        ({"on_bad_row": "ignore"}, "--on-bad-row 'ignore'"),
        ({"inputs": ["/nonexistent/papers.tsv"]}, "--input /nonexistent/papers.tsv: no such file"),
        ({"extra_lexicons": ["/nonexistent/dict.txt"]}, "--extra-lexicon /nonexistent/dict.txt"),
        ({"inputs": [ROOT / "tests"]}, f"--input {ROOT / 'tests'} is a directory: give the files in it"),
    ],
)
def test_config_validation_says_what_to_change(tmp_path: Path, overrides: dict, message: str) -> None:
    config = PreprocessConfig(output=tmp_path / "out", **overrides)
    with pytest.raises(ValueError, match=re.escape(message)):
        config.validate()


def test_non_empty_output_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _run([], out)  # the demo corpus
    assert first.stats["papers_read"] == 120
    with pytest.raises(ValueError, match="is not empty: choose a new folder or pass --overwrite"):
        _run([], out)
    again = _run([], out, overwrite=True, seed=7)
    assert sorted(p.name for p in out.iterdir()) == ["keywords.txt", "stats.json", "train.txt", "valid.txt"]
    assert again.stats["config"]["seed"] == 7


@pytest.mark.slow
def test_cli(tmp_path: Path, csl_jsonl: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, str(ROOT / "launch" / "preprocess.py"), "--input", str(csl_jsonl), "--output", str(out),
           "--workers", "2", "--valid-fraction", "0.05", "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sentences" in done.stdout and "sentences/s" in done.stdout
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["config"]["workers"] == 2 and stats["config"]["valid_fraction"] == 0.05
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    # --input repeated adds files (it does not replace the earlier ones).
    titles = csl_jsonl.parent / "csl-benchmark" / "cls_ctg" / "dev.tsv"
    both = subprocess.run(cmd[:-1] + ["--overwrite", "--input", str(titles), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 0, both.stderr
    stats_both = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats_both["papers_read"] == stats["papers_read"] + 1000


@pytest.mark.slow
def test_cli_builds_the_segmented_dataset(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    spec = importlib.util.spec_from_file_location("launch_preprocess", ROOT / "launch" / "preprocess.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "seg"
    args = ["--output", str(out), "--workers", "1", "--tokenizer", str(tiny_tokenizer_dir), "--no-progress", "--quiet"]
    assert cli.main(args) == 0
    from framework.data.segmented import build_segmented_dataset

    for name in ("train.txt", "valid.txt"):  # built by the CLI: reopening finds the cache
        dataset = build_segmented_dataset(out / name, tiny_tokenizer_dir, [out / "keywords.txt"], progress=False)
        assert len(dataset) == len(_lines(out / name))
    assert len(list((out / "segmented").iterdir())) == 2


def test_many_inputs_of_different_formats(tmp_path: Path, shared_data_dir: Path, csl_keywords: list[str]) -> None:
    inputs = [
        shared_data_dir / "csl-dev.tsv",
        shared_data_dir / "csl-benchmark" / "cls_ctg" / "train.tsv",  # 8,000 further titles
        shared_data_dir / "fewclue" / "csldcp" / "unlabeled.json",  # 2,991 abstracts, no keywords
    ]
    result = _run(inputs, tmp_path / "mixed", text_fields=["content"], workers=2)
    stats = result.stats
    assert [i["format"] for i in stats["inputs"]] == ["csl", "csl-task", "jsonl"]
    assert stats["papers_read"] == 1000 + 8000 + 2991 and stats["bad_rows_total"] == 0
    assert stats["input_bytes"] == sum(p.stat().st_size for p in inputs)
    assert stats["sentences_kept"] > 4564 + 7500 + 10000
    assert set(load_lexicon(result.keywords)) == {normalize_keyword(k) for k in csl_keywords}  # csl-dev's only


def test_an_empty_input_among_others_is_counted_and_the_run_goes_on(tmp_path: Path, csl_tsv: Path) -> None:
    rows = csl_tsv.read_bytes().splitlines(keepends=True)[:40]
    good = tmp_path / "good.tsv"
    good.write_bytes(b"".join(rows))
    empties = [tmp_path / "empty.tsv", tmp_path / "blank.csv", tmp_path / "empty.tsv.gz"]
    empties[0].write_bytes(b"")
    empties[1].write_bytes(b"\n\n")
    empties[2].write_bytes(gzip.compress(b""))
    result = _run([empties[0], good, *empties[1:]], tmp_path / "out")
    assert result.stats["papers_read"] == 40 and result.stats["bad_rows"] == {"empty_file": 3}
    with pytest.raises(NoSentencesError, match=r"every input is empty"):
        _run(empties, tmp_path / "none")


def test_truncated_gzip_input_keeps_its_rows(tmp_path: Path, csl_tsv: Path) -> None:
    whole = gzip.compress(csl_tsv.read_bytes())
    broken = tmp_path / "csl.tsv.gz"
    broken.write_bytes(whole[: len(whole) // 2])
    result = _run([broken], tmp_path / "out")
    assert result.stats["bad_rows"] == {"corrupt_gzip": 1} and 100 < result.stats["papers_read"] < 1000
    with pytest.raises(BadInputError, match=r"csl\.tsv\.gz:\d+: the compressed stream is truncated"):
        _run([broken], tmp_path / "error", on_bad_row="error")
