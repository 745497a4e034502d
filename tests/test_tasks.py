"""Task readers on the real CSL files: the benchmark TSVs, FewCLUE JSON lines and CSL papers give the row and
label counts the data's README states; the keyword-forging builder is deterministic per seed, about half
genuine, and forges only words of the abstract that are not real keywords; bad files fail naming file and line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from framework.evaluation.tasks import (KEYWORD_JOINER, TaskError, detect_format, forge_keywords, load_task,
                                        read_examples, read_labels_file, read_papers)


def test_category_from_the_benchmark(shared_data_dir: Path) -> None:
    folder = shared_data_dir / "csl-benchmark" / "cls_ctg"
    data = load_task("csl-category", {"train": folder / "train.tsv", "dev": folder / "dev.tsv"})
    assert data["train"].format == "csl-benchmark"
    assert (len(data["train"]), len(data["dev"])) == (8000, 1000)
    assert len(data["train"].labels) == 13 and data["train"].labels == sorted(data["train"].labels)
    assert data["train"].labels == data["dev"].labels
    counts = data["train"].label_counts()
    assert sum(counts.values()) == 8000 and min(counts.values()) > 0
    assert counts["工学"] == max(counts.values())  # engineering is CSL's largest category
    assert all(ex.text_b is None and ex.text_a for ex in data["dev"].examples)
    ids = data["dev"].label_ids()
    assert [data["dev"].labels[i] for i in ids] == [ex.label for ex in data["dev"].examples]


def test_paper_files_agree_with_the_benchmark(shared_data_dir: Path) -> None:
    # README: csl-dev.* is the row-by-row join of the benchmark dev files.
    bench = read_examples("csl-category", shared_data_dir / "csl-benchmark" / "cls_ctg" / "dev.tsv")[1]
    tsv_fmt, tsv = read_examples("csl-category", shared_data_dir / "csl-dev.tsv")
    jsonl_fmt, jsonl = read_examples("csl-category", shared_data_dir / "csl-dev.jsonl")
    assert (tsv_fmt, jsonl_fmt) == ("csl-papers-tsv", "csl-papers-jsonl")
    assert [(e.text_a, e.label) for e in tsv] == [(e.text_a, e.label) for e in jsonl]
    assert [e.label for e in tsv] == [e.label for e in bench]
    dcp = read_examples("csl-discipline", shared_data_dir / "csl-benchmark" / "cls_dcp" / "dev.tsv")[1]
    papers = read_examples("csl-discipline", shared_data_dir / "csl-dev.tsv")[1]
    assert [e.label for e in dcp] == [e.label for e in papers]
    assert len({e.label for e in papers}) == 67


def test_discipline_from_fewclue_uses_labels_txt(shared_data_dir: Path) -> None:
    folder = shared_data_dir / "fewclue" / "csldcp"
    data = load_task("csl-discipline", {"train": folder / "train_0.json", "dev": folder / "dev_0.json",
                                        "test": shared_data_dir / "csl-benchmark" / "cls_dcp" / "dev.tsv"})
    assert data["train"].format == "fewclue-csldcp" and data["test"].format == "csl-benchmark"
    assert (len(data["train"]), len(data["dev"]), len(data["test"])) == (536, 536, 1000)
    assert data["train"].labels == read_labels_file(folder / "labels.txt")  # FewCLUE's order, not sorted
    assert len(data["train"].labels) == 67
    assert set(data["train"].label_counts().values()) == {8}  # 8 shots per discipline


def test_fewclue_keywords(shared_data_dir: Path) -> None:
    path = shared_data_dir / "fewclue" / "csl" / "train_0.json"
    data = load_task("csl-keywords", {"train": path})["train"]
    assert data.format == "fewclue-csl" and len(data) == 32 and data.labels == ["0", "1"]
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert data.examples[0].text_a == first["abst"]
    assert data.examples[0].text_b == KEYWORD_JOINER.join(first["keyword"])


def test_forged_keywords(csl_tsv: Path) -> None:
    papers = read_papers(csl_tsv)
    built = forge_keywords(papers, seed=7)
    assert built == forge_keywords(papers, seed=7)
    assert [e.label for e in built] != [e.label for e in forge_keywords(papers, seed=8)]
    genuine = sum(e.label == "1" for e in built) / len(built)
    assert 0.4 < genuine < 0.6, genuine
    for paper, ex in zip(papers, built):
        assert ex.real_keywords == paper.keywords and len(ex.keywords) == len(paper.keywords)
        if ex.label == "1":
            assert ex.keywords == paper.keywords and not ex.forged
            continue
        real = {"".join(k.split()).lower() for k in paper.keywords}
        assert ex.forged and set(ex.forged) <= set(ex.keywords)
        for word in ex.forged:
            assert word in paper.abstract, (word, paper.abstract)
            assert "".join(word.split()).lower() not in real
        kept = [k for k in ex.keywords if k not in ex.forged]
        assert len(kept) == len(paper.keywords) - len(ex.forged) and set(kept) <= set(paper.keywords)


def test_keywords_from_tsv_and_jsonl_agree(csl_tsv: Path, csl_jsonl: Path) -> None:
    tsv = read_examples("csl-keywords", csl_tsv, seed=3)[1]
    jsonl = read_examples("csl-keywords", csl_jsonl, seed=3)[1]
    assert [(e.text_a, e.text_b, e.label) for e in tsv] == [(e.text_a, e.text_b, e.label) for e in jsonl]


def test_bad_rows_name_file_and_line(tmp_path: Path, shared_data_dir: Path) -> None:
    bad = tmp_path / "ctg.tsv"
    bad.write_text("to category\t一个标题\t工学\nto category\t另一个标题\t理学\nto category\t没有标签\n", encoding="utf-8")
    with pytest.raises(TaskError, match=rf"{bad}:3: 2 tab-separated fields"):
        read_examples("csl-category", bad)

    with pytest.raises(TaskError, match="use --task csl-discipline"):
        read_examples("csl-category", shared_data_dir / "csl-benchmark" / "cls_dcp" / "dev.tsv")
    with pytest.raises(TaskError, match="suits --task csl-discipline"):
        read_examples("csl-keywords", shared_data_dir / "fewclue" / "csldcp" / "dev_0.json")

    unknown = tmp_path / "x.txt"
    unknown.write_text("just one column\n", encoding="utf-8")
    with pytest.raises(TaskError, match=rf"{unknown}:1: unknown format"):
        detect_format(unknown)
    broken = tmp_path / "broken.json"
    broken.write_text('{"content": "摘要", "label": "数学"}\n{"content": "摘要",\n', encoding="utf-8")
    with pytest.raises(TaskError, match=rf"{broken}:2: not valid JSON"):
        read_examples("csl-discipline", broken)
    with pytest.raises(TaskError, match="unknown task 'csl-nope'"):
        load_task("csl-nope", {"train": bad})
    with pytest.raises(TaskError, match="no such file"):
        load_task("csl-category", {"train": tmp_path / "missing.tsv"})


def test_label_outside_labels_txt_is_an_error(tmp_path: Path, shared_data_dir: Path) -> None:
    source = shared_data_dir / "fewclue" / "csldcp"
    folder = tmp_path / "csldcp"
    folder.mkdir()
    (folder / "labels.txt").write_text((source / "labels.txt").read_text(encoding="utf-8"), encoding="utf-8")
    (folder / "train_0.json").write_text("".join((source / "train_0.json").read_text(encoding="utf-8")
                                                 .splitlines(keepends=True)[:20]), encoding="utf-8")
    dev = folder / "dev_0.json"
    dev.write_text('{"id": 0, "content": "摘要", "label": "数学"}\n{"id": 1, "content": "摘要", "label": "外星学"}\n',
                   encoding="utf-8")
    with pytest.raises(TaskError, match=rf"{dev}:2: label '外星学' is not one of .*labels.txt"):
        load_task("csl-discipline", {"train": folder / "train_0.json", "dev": dev})


def test_union_of_labels_without_labels_txt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = tmp_path / "train.tsv"
    dev = tmp_path / "dev.tsv"
    train.write_text("to category\t甲\t工学\nto category\t乙\t理学\n", encoding="utf-8")
    dev.write_text("to category\t丙\t医学\n", encoding="utf-8")
    with caplog.at_level("WARNING"):
        data = load_task("csl-category", {"train": train, "dev": dev})
    assert data["train"].labels == sorted(["工学", "理学", "医学"]) == data["dev"].labels
    assert any("医学" in r.getMessage() and "never occur" in r.getMessage() for r in caplog.records)
    assert Counter(data["dev"].label_ids()) == Counter({data["dev"].labels.index("医学"): 1})
