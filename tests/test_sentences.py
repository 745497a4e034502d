"""Sentence splitting on real CSL and FewCLUE abstracts, and on the abbreviation cases the data lacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from framework.data.cleaning import clean_text
from framework.data.sentences import split_sentences


def _abstract_containing(papers: list[dict], needle: str) -> str:
    for paper in papers:
        if needle in paper["abstract"]:
            return paper["abstract"]
    raise AssertionError(f"no CSL abstract contains {needle!r}: has the shared data changed?")


def _sentence_with(sentences: list[str], needle: str) -> int:
    hits = [i for i, s in enumerate(sentences) if needle in s]
    assert len(hits) == 1, f"{needle!r} should be inside exactly one sentence, got {hits} in {sentences}"
    return hits[0]


def test_csl_ascii_full_stop_ends_sentences(csl_papers: list[dict]) -> None:
    # CSL typesets the Chinese full stop as ASCII ".": "...新的设计方法.仿真结果表明,..."
    sentences = split_sentences(csl_papers[0]["abstract"])
    i = _sentence_with(sentences, "仿真结果表明")
    assert sentences[i].startswith("仿真结果表明")
    assert sentences[i - 1].endswith("新的设计方法.")
    # The full-width semicolon ends a sentence too; "(MRP)," stays inside its sentence.
    assert sentences[0].endswith("数学模型；") and "(MRP)," in sentences[0]
    assert len(sentences) == 4


def test_csl_decimals_and_percentages_stay_whole(csl_papers: list[dict]) -> None:
    abstract = _abstract_containing(csl_papers, "0.3%-0.4%")
    sentences = split_sentences(abstract)
    i = _sentence_with(sentences, "0.3%-0.4%")
    assert "71.5%" in sentences[i] and "1.5-1.6" in sentences[i]


def test_csl_dot_after_bracket_and_unit(csl_papers: list[dict]) -> None:
    sentences = split_sentences(_abstract_containing(csl_papers, "(P<0.05).结论"))
    i = _sentence_with(sentences, "(P<0.05).")
    assert sentences[i].endswith("(P<0.05).") and sentences[i + 1].startswith("结论")
    # "312 m." ends a sentence: a unit, not an abbreviation, and a Chinese character follows.
    sentences = split_sentences(_abstract_containing(csl_papers, "312 m.但由于"))
    i = _sentence_with(sentences, "312 m.")
    assert sentences[i].endswith("312 m.") and sentences[i + 1].startswith("但由于")


def test_csl_ascii_quotes_open_or_close(csl_papers: list[dict]) -> None:
    # A closing '"' after the stop stays; an opening one starts the next sentence.
    sentences = split_sentences(_abstract_containing(csl_papers, '初的学术热点."中国哲学"'))
    i = _sentence_with(sentences, "初的学术热点.")
    assert sentences[i].endswith("初的学术热点.") and sentences[i + 1].startswith('"中国哲学"')


def test_no_text_is_lost_on_real_abstracts(csl_papers: list[dict]) -> None:
    for paper in csl_papers:
        text = paper["abstract"]
        sentences = split_sentences(text)
        assert all(s == s.strip() and s for s in sentences)
        assert re.sub(r"\s", "", "".join(sentences)) == re.sub(r"\s", "", text)


def test_most_real_sentences_fit_the_length_window(csl_papers: list[dict]) -> None:
    # If "." were missed as a terminator most abstracts (about 200 characters) would be one long sentence.
    lengths = [len(clean_text(s)) for p in csl_papers for s in split_sentences(p["abstract"])]
    assert len(lengths) > 3500
    assert sum(n > 128 for n in lengths) / len(lengths) < 0.04


def test_fewclue_full_width_stop(shared_data_dir: Path) -> None:
    with open(shared_data_dir / "fewclue" / "csl" / "train_0.json", encoding="utf-8") as f:
        record = json.loads(f.readline())
    sentences = split_sentences(record["abst"])
    assert len(sentences) == 7
    assert all(s.endswith("．") for s in sentences)
    # "协议PGAQ．PGAQ将...": a Latin word, then a capital: a sentence boundary.
    assert sentences[1].endswith("PGAQ．") and sentences[2].startswith("PGAQ将")
    with open(shared_data_dir / "fewclue" / "csldcp" / "unlabeled.json", encoding="utf-8") as f:
        text = next(r["content"] for r in map(json.loads, f) if "1．5维谱" in r["content"])
    assert all(not s.endswith("1．") for s in split_sentences(text))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("如Fig.2所示,误差较小.", ["如Fig.2所示,误差较小."]),
        ("Smith et al.研究发现,该方法有效.其次", ["Smith et al.研究发现,该方法有效.", "其次"]),
        ("多种作物(e.g.水稻)的产量.下一句", ["多种作物(e.g.水稻)的产量.", "下一句"]),
        ("来自U.S.的材料表现较好.下一句", ["来自U.S.的材料表现较好.", "下一句"]),
        ("溶液中含有Ca.该方法简便.", ["溶液中含有Ca.", "该方法简便."]),  # a chemical symbol, not "ca."
        ("汉学家И.比丘林研究了典籍.下一句", ["汉学家И.比丘林研究了典籍.", "下一句"]),
        ("得到 0.3% 的提升.下一句", ["得到 0.3% 的提升.", "下一句"]),
        ("结果如下:1.提高效率;2.降低成本.", ["结果如下:1.提高效率;", "2.降低成本."]),
        ("两者之比为1:4.国内研究较少.", ["两者之比为1:4.", "国内研究较少."]),
        ("他说：“好。”然后离开了！", ["他说：“好。”", "然后离开了！"]),
        ("（见图1。）下一句", ["（见图1。）", "下一句"]),
        ("结果......表明了趋势.", ["结果......表明了趋势."]),
        ("治愈(男30例;女20例);随访1年.", ["治愈(男30例;女20例);", "随访1年."]),
        ("真的吗?是的!好;", ["真的吗?", "是的!", "好;"]),
        ("联合应用Bio?oss骨代材料和Bio?gide胶原膜.", ["联合应用Bio?oss骨代材料和Bio?gide胶原膜."]),  # lost characters
        ("成活率为(59 .02 ± 6 .01)%.下一句", ["成活率为(59 .02 ± 6 .01)%.", "下一句"]),
        ("第一行\n第二行", ["第一行", "第二行"]),
        ("", []),
    ],
)
def test_terminator_rules(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected
