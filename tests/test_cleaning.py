"""Cleaning rules on real CSL text and on the cases the issue names."""

from __future__ import annotations

import re

import pytest

from framework.data.cleaning import clean_text, has_cjk
from framework.data.sentences import split_sentences

_STRAY_SPACE_RE = re.compile(r"(?<![0-9A-Za-z\u00c0-\u024f]) | (?![0-9A-Za-z\u00c0-\u024f])")


@pytest.mark.parametrize(
    "raw, expected",
    [
        # A space between two Latin/digit runs survives, single; all other whitespace goes.
        ("采用修正的 Rodrigues parameter 模型", "采用修正的Rodrigues parameter模型"),
        ("Rodrigues   parameter", "Rodrigues parameter"),
        ("边缘总厚度1.2 mm,A组", "边缘总厚度1.2 mm,A组"),
        ("进行对比模拟. 模拟结果表明", "进行对比模拟.模拟结果表明"),
        ("第一\n第二\t第三\u3000第四", "第一第二第三第四"),
        ("  前后空格  ", "前后空格"),
        ("α 受体", "α受体"),
        # Full-width letters and digits become ASCII; Chinese punctuation and full-width symbols stay.
        ("ＤＮＡ甲基化与ｍＲＮＡ表达，共１２例。", "DNA甲基化与mRNA表达，共12例。"),
        ("（P＜0.05）；“结论”：有效", "（P＜0.05）；“结论”：有效"),
        # Runs of three or more of a symbol collapse; the doubled ellipsis and dash are kept doubled.
        ("太好了！！！", "太好了！"),
        ("结果......表明", "结果.表明"),
        ("分隔----线", "分隔-线"),
        ("农村文化丧失……", "农村文化丧失……"),
        ("等等…………", "等等……"),
        ("破折号————说明", "破折号——说明"),
        ("C++语言与C#", "C++语言与C#"),
        ("！！两个", "！！两个"),
        # Control and invisible characters are dropped.
        ("零宽\u200b空格\ufeff与\x00控制\x7f字符\u00ad", "零宽空格与控制字符"),
        ("", ""),
    ],
)
def test_rules(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


def test_real_latin_phrases_keep_their_space(csl_papers: list[dict]) -> None:
    abstract = next(p["abstract"] for p in csl_papers if "Vintage AI" in p["abstract"])
    cleaned = clean_text(abstract)
    assert "Vintage AI边缘肩台瓷" in cleaned
    abstract = next(p["abstract"] for p in csl_papers if "（ guided bone" in p["abstract"])
    assert "（guided bone regeneration" in clean_text(abstract)


def test_real_sentences_have_no_stray_whitespace_and_are_stable(csl_papers: list[dict]) -> None:
    checked = 0
    for paper in csl_papers:
        for raw in [paper["title"], *split_sentences(paper["abstract"])]:
            text = clean_text(raw)
            assert text == text.strip() and "  " not in text and not re.search(r"[\t\n\r\u3000]", text)
            assert not _STRAY_SPACE_RE.search(text), text
            assert clean_text(text) == text  # idempotent: cleaning twice changes nothing
            checked += 1
    assert checked > 4000


def test_has_cjk() -> None:
    assert has_cjk("DNA甲基化")
    assert has_cjk("𠀀")  # extension B, outside the BMP
    assert not has_cjk("a=1.7229(3)nm,b=1.5924(2)nm")
    assert not has_cjk("，。；：")  # punctuation alone is not Chinese text
    assert not has_cjk("")
