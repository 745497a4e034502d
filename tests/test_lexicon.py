"""The keyword lexicon: normalisation, jieba user-dictionary output, merging lexicons."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import jieba
import pytest

from framework.data.lexicon import LexiconError, count_keywords, load_lexicon, normalize_keyword, write_lexicon


def test_normalize_keyword() -> None:
    assert normalize_keyword(" 修正Rodrigues参数模型 ") == "修正Rodrigues参数模型"
    assert normalize_keyword("Rodrigues  parameter") == "Rodrigues parameter"
    assert normalize_keyword("ＤＮＡ 甲基化") == "DNA甲基化"
    assert normalize_keyword("--") == ""
    assert normalize_keyword("  ") == ""


def test_count_keywords_merges_spellings_and_counts_drops() -> None:
    counter, dropped = count_keywords(["ＤＮＡ甲基化", "DNA甲基化", "", "——", "平方和优化"])
    assert counter == Counter({"DNA甲基化": 2, "平方和优化": 1})
    assert dropped == 2


def test_written_lexicon_loads_in_jieba(tmp_path: Path, csl_keywords: list[str]) -> None:
    counter, _ = count_keywords(csl_keywords + ["Rodrigues parameter", "Rodrigues parameter", "vitamin c"])
    path = write_lexicon(counter, tmp_path / "keywords.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(counter)
    assert lines[0] == "Rodrigues parameter 2"  # most frequent first
    tokenizer = jieba.Tokenizer()
    tokenizer.load_userdict(str(path))
    for word, freq in counter.items():
        assert tokenizer.FREQ.get(word) == freq, word  # spaced keywords parse too: the freq is written
    assert "平方和优化" in tokenizer.lcut("提出了基于平方和优化的设计方法")


def test_round_trip_and_every_csl_keyword(tmp_path: Path, csl_keywords: list[str]) -> None:
    counter, dropped = count_keywords(csl_keywords)
    assert dropped == 0
    loaded = load_lexicon(write_lexicon(counter, tmp_path / "keywords.txt"))
    assert loaded == dict(counter)
    assert {normalize_keyword(k) for k in csl_keywords} == set(loaded)


def test_load_lexicon_merges_formats(tmp_path: Path) -> None:
    jieba_dict = tmp_path / "user.dict"
    jieba_dict.write_text("# comment\n平方和优化 5\n大角度机动 3 n\n\nRodrigues parameter 2\n", encoding="utf-8")
    word_list = tmp_path / "words.txt"
    word_list.write_text("\ufeff平方和优化\n镇定控制器\nＬｙａｐｕｎｏｖ函数\t4\n", encoding="utf-8")
    assert load_lexicon([jieba_dict, word_list]) == {
        "平方和优化": 6, "大角度机动": 3, "Rodrigues parameter": 2, "镇定控制器": 1, "Lyapunov函数": 4,
    }
    assert load_lexicon(str(jieba_dict))["平方和优化"] == 5


def test_load_lexicon_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(LexiconError, match="no such lexicon file"):
        load_lexicon([tmp_path / "missing.txt"])
    bad = tmp_path / "bad.txt"
    bad.write_bytes("平方和优化 5\n".encode("utf-8") + "镇定控制器 2\n".encode("gbk"))
    with pytest.raises(LexiconError, match=r"bad\.txt:2: invalid UTF-8"):
        load_lexicon([bad])
