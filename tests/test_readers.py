"""Readers: every input layout of the shared data, generic named-field files, .gz, and bad input."""

from __future__ import annotations

import csv
import gzip
import json
import logging
from pathlib import Path

import pytest

from framework.data.readers import (
    BadInputError,
    BadRowLog,
    FieldSpec,
    Paper,
    detect_format,
    iter_chunks,
    read_papers,
)


def _key(paper: Paper) -> tuple:
    return paper.title, paper.abstract, paper.keywords, paper.discipline, paper.category


def test_csl_tsv_and_jsonl_give_the_same_papers(csl_tsv: Path, csl_jsonl: Path, csl_papers: list[dict]) -> None:
    assert detect_format(csl_tsv) == "csl" and detect_format(csl_jsonl) == "jsonl"
    from_tsv = list(read_papers(csl_tsv))
    from_jsonl = list(read_papers(csl_jsonl))
    assert len(from_tsv) == len(csl_papers) == 1000
    assert [_key(p) for p in from_tsv] == [_key(p) for p in from_jsonl]
    first = from_tsv[0]
    assert first.keywords == tuple(csl_papers[0]["keywords"])
    assert (first.source, first.line, first.paper_id) == (str(csl_tsv), 1, "csl-dev.tsv:1")
    assert from_tsv[-1].line == 1000


def test_csl_task_files_map_to_papers(shared_data_dir: Path, csl_papers: list[dict]) -> None:
    bench = shared_data_dir / "csl-benchmark"
    # The readers strip the fields.
    csl_papers = [{k: v.strip() if isinstance(v, str) else v for k, v in p.items()} for p in csl_papers]
    for task in ("cls_ctg", "cls_dcp", "kg", "ts"):
        assert detect_format(bench / task / "dev.tsv") == "csl-task"
    ctg = list(read_papers(bench / "cls_ctg" / "dev.tsv"))
    assert [(p.title, p.category) for p in ctg] == [(p["title"], p["category"]) for p in csl_papers]
    assert all(p.abstract == "" and p.keywords == () for p in ctg)
    dcp = list(read_papers(bench / "cls_dcp" / "dev.tsv"))
    assert [(p.abstract, p.discipline) for p in dcp] == [(p["abstract"], p["discipline"]) for p in csl_papers]
    ts = list(read_papers(bench / "ts" / "dev.tsv"))
    assert [(p.title, p.abstract) for p in ts] == [(p["title"], p["abstract"]) for p in csl_papers]
    kg = list(read_papers(bench / "kg" / "dev.tsv"))
    assert [p.keywords for p in kg] == [tuple(p["keywords"]) for p in csl_papers]
    # The input is abstract + " " + title; the cut is recovered wherever the abstract ends a sentence (998 rows).
    exact = sum((k.title, k.abstract) == (p["title"], p["abstract"]) for k, p in zip(kg, csl_papers))
    assert exact >= 995
    assert len(list(read_papers(bench / "cls_ctg" / "train.tsv"))) == 8000


def test_fewclue_json_lines_with_named_fields(shared_data_dir: Path) -> None:
    path = shared_data_dir / "fewclue" / "csl" / "train_0.json"
    assert detect_format(path) == "jsonl"  # .json, but one object a line
    papers = list(read_papers(path, text_fields=["abst"], keywords_field="keyword"))
    assert len(papers) == 32
    assert papers[0].title == "" and papers[0].abstract.startswith("无线传感器网络")
    assert papers[0].keywords[0] == "无线传感器网络"
    unlabeled = list(read_papers(shared_data_dir / "fewclue" / "csldcp" / "unlabeled.json", text_fields=["content"]))
    assert len(unlabeled) == 2991 and all(p.keywords == () for p in unlabeled)


def test_gzip_is_transparent(tmp_path: Path, csl_tsv: Path) -> None:
    gz = tmp_path / "csl.tsv.gz"
    gz.write_bytes(gzip.compress(csl_tsv.read_bytes()))
    assert detect_format(gz) == "csl"
    assert [_key(p) for p in read_papers(gz)] == [_key(p) for p in read_papers(csl_tsv)]


def _renamed(papers: list[dict]) -> list[dict]:
    return [{"name": p["title"], "summary": p["abstract"], "tags": ";".join(p["keywords"])} for p in papers[:50]]


def test_generic_json_csv_tsv_with_user_fields(tmp_path: Path, csl_papers: list[dict]) -> None:
    rows = _renamed(csl_papers)
    (tmp_path / "a.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    with open(tmp_path / "a.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", "summary", "tags"])
        writer.writeheader()
        writer.writerows(rows)
    with open(tmp_path / "a.tsv", "w", encoding="utf-8") as f:
        f.write("name\tsummary\ttags\n")
        f.writelines(f"{r['name']}\t{r['summary']}\t{r['tags']}\n" for r in rows)
    expected = [(p["title"].strip() + "\n" + p["abstract"].strip(), tuple(p["keywords"])) for p in csl_papers[:50]]
    for name, fmt in (("a.json", "json"), ("a.csv", "csv"), ("a.tsv", "tsv")):
        assert detect_format(tmp_path / name, ["name", "summary"]) == fmt
        papers = list(read_papers(tmp_path / name, text_fields=["name", "summary"], keywords_field="tags"))
        assert [(p.abstract, p.keywords) for p in papers] == expected, name
        chunks = list(iter_chunks(tmp_path / name, fmt, FieldSpec(("name", "summary"), "tags"), chunk_bytes=20_000))
        assert len(chunks) > 1 and sum(c.nbytes for c in chunks) == (tmp_path / name).stat().st_size, name
    # A field called "title" becomes the title (one sentence), the others the abstract.
    (tmp_path / "b.jsonl").write_text(json.dumps({"title": "题目", "body": "正文."}) + "\n", encoding="utf-8")
    (paper,) = read_papers(tmp_path / "b.jsonl", text_fields=["title", "body"])
    assert (paper.title, paper.abstract, paper.keywords) == ("题目", "正文.", ())


def _bad_csl_file(path: Path, csl_tsv: Path) -> None:
    good = csl_tsv.read_bytes().splitlines(keepends=True)[:3]
    path.write_bytes(
        good[0]
        + b"only\tfour\tfields\there\n"  # line 2
        + "标题\t摘要.\t关键词\t学科\t门类\n".encode("gbk")  # line 3: not UTF-8
        + "标题\t摘要.\t\t学科\t门类\n".encode("utf-8")  # line 4: empty keyword list
        + "\t\t关键词\t学科\t门类\n".encode("utf-8")  # line 5: no title, no abstract
        + b"\n"
        + good[1]
        + good[2]
    )


def test_bad_rows_are_skipped_counted_and_logged(
    tmp_path: Path, csl_tsv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bad.tsv"
    _bad_csl_file(path, csl_tsv)
    log = BadRowLog(log_first=2)
    with caplog.at_level(logging.WARNING, logger="framework.data.readers"):
        papers = list(read_papers(path, fmt="csl", bad_rows=log))
    assert [p.line for p in papers] == [1, 7, 8]
    assert dict(log.counts) == {"field_count": 1, "invalid_utf8": 1, "empty_keywords": 1, "missing_field": 1}
    messages = [r.getMessage() for r in caplog.records]
    assert f"{path}:2: 4 tab-separated fields" in messages[0]
    assert f"{path}:3: invalid UTF-8" in messages[1]
    assert len(messages) == 3 and "not logged" in messages[2]  # only the first two rows are logged


@pytest.mark.parametrize(
    "content, reason_text",
    [
        (b"only\tfour\tfields\there\n", r"bad\.tsv:1: 4 tab-separated fields.*to fix: remove tabs"),
        ("标题\t摘要\t关键词\t学科\t门类\n".encode("gbk"), r"bad\.tsv:1: invalid UTF-8.*to fix: re-encode"),
        ("标题\t摘要\t\t学科\t门类\n".encode("utf-8"), r"bad\.tsv:1: the keywords field.*empty.*to fix"),
        (b"", r"bad\.tsv: the file holds no rows"),
    ],
)
def test_bad_rows_raise_in_error_mode(tmp_path: Path, content: bytes, reason_text: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=reason_text):
        list(read_papers(path, fmt="csl", bad_rows=BadRowLog(on_bad_row="error")))


def test_json_rows_missing_fields_and_broken_json(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(
        '{"title": "t", "abstract": "一句话.", "keywords": ["词"]}\n'
        '{"title": "t", "keywords": ["词"]}\n'
        '{"title": "t", "abstract": "一句话.", "keywords": []}\n'
        '{"title": "t", "abstract": \n'
        '["not", "an", "object"]\n',
        encoding="utf-8",
    )
    log = BadRowLog()
    assert len(list(read_papers(path, bad_rows=log))) == 1
    assert dict(log.counts) == {"missing_field": 1, "empty_keywords": 1, "invalid_json": 2}
    with pytest.raises(BadInputError, match=r"x\.jsonl:2: no field 'abstract'.*--text-fields"):
        list(read_papers(path, bad_rows=BadRowLog(on_bad_row="error")))


def test_missing_file_empty_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="no such file"):
        list(read_papers(tmp_path / "nope.tsv"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    log = BadRowLog()
    assert list(read_papers(empty, bad_rows=log)) == []
    assert dict(log.counts) == {"empty_file": 1}
    odd = tmp_path / "notes.txt"
    odd.write_text("plain prose without tabs\n", encoding="utf-8")
    with pytest.raises(BadInputError, match="pass --format"):
        detect_format(odd)
    header_only = tmp_path / "h.tsv"
    header_only.write_text("text\tkw\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"h\.tsv:1: the header .* lacks the field\(s\) \['abstract'\]"):
        list(read_papers(header_only, fmt="tsv", text_fields=["text", "abstract"]))


def test_truncated_or_corrupt_gzip_keeps_what_was_read_and_counts_the_damage(tmp_path: Path, csl_tsv: Path) -> None:
    whole = gzip.compress(csl_tsv.read_bytes())
    truncated = tmp_path / "csl.tsv.gz"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert detect_format(truncated) == "csl"
    log = BadRowLog()
    papers = list(read_papers(truncated, bad_rows=log))
    assert 100 < len(papers) < 1000 and dict(log.counts) == {"corrupt_gzip": 1}
    assert [p.line for p in papers] == list(range(1, len(papers) + 1))  # every row before the damage
    with pytest.raises(BadInputError, match=rf"csl\.tsv\.gz:{len(papers) + 1}: the compressed stream is truncated"):
        list(read_papers(truncated, bad_rows=BadRowLog(on_bad_row="error")))
    # Not gzip at all, behind a .gz name: counted at line 1, also when --format is given.
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(b'{"title": "t"}\n')
    for fmt in (None, "jsonl"):
        log = BadRowLog()
        assert list(read_papers(fake, fmt=fmt, bad_rows=log)) == [] and dict(log.counts) == {"corrupt_gzip": 1}
    # A JSON array cannot be read in part: refused with file and line, no traceback.
    array = tmp_path / "papers.json.gz"
    array.write_bytes(gzip.compress(json.dumps([{"title": f"题目{i}", "abstract": f"摘要{i}."} for i in range(3000)], indent=1).encode())[:900])
    with pytest.raises(BadInputError, match=r"papers\.json\.gz:\d+: the compressed stream is truncated or corrupt"):
        list(read_papers(array, text_fields=["title", "abstract"]))
    csv_gz = tmp_path / "papers.csv.gz"
    rows = "".join(f"题目{i},摘要{i}.\n" for i in range(3000))
    csv_gz.write_bytes(gzip.compress(("title,abstract\n" + rows).encode())[:2000])
    log = BadRowLog()
    read = list(read_papers(csv_gz, text_fields=["title", "abstract"], bad_rows=log))
    assert read and dict(log.counts) == {"corrupt_gzip": 1}


def test_rows_of_only_tabs_or_commas_are_counted(tmp_path: Path, csl_tsv: Path) -> None:
    good = csl_tsv.read_bytes().splitlines(keepends=True)[:2]
    path = tmp_path / "tabs.tsv"
    path.write_bytes(good[0] + b"\t\t\t\t\n" + b"\t\n" + b"  \r\n" + good[1])  # the blank line is no row
    log = BadRowLog()
    assert [p.line for p in read_papers(path, fmt="csl", bad_rows=log)] == [1, 5]
    assert dict(log.counts) == {"missing_field": 1, "field_count": 1}
    assert detect_format(tmp_path / "tabs.tsv") == "csl"
    only_tabs = tmp_path / "only-tabs.tsv"
    only_tabs.write_bytes(b"\t\t\t\t\n")
    log = BadRowLog()
    assert list(read_papers(only_tabs, bad_rows=log)) == [] and dict(log.counts) == {"missing_field": 1}
    table = tmp_path / "t.csv"
    table.write_text("title,abstract\n题目,摘要.\n,\n\n", encoding="utf-8")
    log = BadRowLog()
    assert len(list(read_papers(table, text_fields=["title", "abstract"], bad_rows=log))) == 1
    assert dict(log.counts) == {"missing_field": 1}


def test_directory_and_empty_inputs(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"is a directory, not an input file; give the files in it"):
        list(read_papers(tmp_path))
    with pytest.raises(BadInputError, match="is a directory"):
        detect_format(tmp_path)
    for name in ("empty.tsv", "empty.csv", "empty.json", "empty.txt", "empty.tsv.gz"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"\n")
        log = BadRowLog()
        assert list(read_papers(path, bad_rows=log)) == [] and dict(log.counts) == {"empty_file": 1}, name


def test_lone_surrogate_escapes_are_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text('{"title": "a\\ud800b", "abstract": "摘要."}\n{"title": "题目", "abstract": "摘要."}\n',
                    encoding="utf-8")
    log = BadRowLog()
    assert [p.line for p in read_papers(path, text_fields=["title", "abstract"], bad_rows=log)] == [2]
    assert dict(log.counts) == {"invalid_utf8": 1}


def test_csv_record_the_csv_module_refuses_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("title,abstract\n题目,摘要.\n长题目," + "长" * 200_000 + "\n题目三,摘要三.\n", encoding="utf-8")
    log = BadRowLog()
    assert [p.line for p in read_papers(path, text_fields=["title", "abstract"], bad_rows=log)] == [2, 4]
    assert dict(log.counts) == {"invalid_csv": 1}
    with pytest.raises(BadInputError, match=r"long\.csv:3: the CSV record cannot be read \(field larger than"):
        list(read_papers(path, text_fields=["title", "abstract"], bad_rows=BadRowLog(on_bad_row="error")))


def test_json_python_cannot_load_is_a_bad_row_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "\n" + '{"title": "t", "abstract": "摘要.", "n": ' + "1" * 5000 + "}\n"
                    + '{"title": "题目", "abstract": "摘要."}\n', encoding="utf-8")
    log = BadRowLog()
    assert [p.line for p in read_papers(path, text_fields=["title", "abstract"], bad_rows=log)] == [3]
    assert dict(log.counts) == {"invalid_json": 2}
    array = tmp_path / "deep.json"
    array.write_text("[" * 100_000, encoding="utf-8")
    with pytest.raises(BadInputError, match=r"deep\.json: JSON that cannot be loaded \(RecursionError"):
        list(read_papers(array))
