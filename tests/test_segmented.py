"""The segmenter and the cached segmented dataset, on real CSL sentences."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer, BertTokenizer

from framework.data.atomic import current_umask
from framework.data.readers import BadInputError
from framework.data.segmented import SegmentedDataset, build_segmented_dataset
from framework.data.segmenter import Segmenter


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir: Path):
    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


def _pieces(tokenizer, ids, spans) -> list[str]:
    toks = tokenizer.convert_ids_to_tokens([int(i) for i in ids])
    return ["".join(toks[a:b]).replace("##", "") for a, b in spans]


def test_vocab_folder_loads_with_bert_tokenizer(tiny_tokenizer_dir: Path, csl_sentences: list[str]) -> None:
    tok = BertTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    assert 500 < len(tok) <= 4000
    # Every CJK character of the corpus it was trained on is its own token, never [UNK].
    text = csl_sentences[0]
    tokens = tok.tokenize(text)
    assert tok.unk_token not in tokens
    assert all(len(t) == 1 for t in tokens if "\u4e00" <= t[0] <= "\u9fff")


def test_lexicon_keeps_keywords_whole_and_marks_them(tokenizer) -> None:
    text = "利用平方和优化 Rodrigues parameter方法与Lyapunov函数,研究大角度机动问题"
    plain = Segmenter(tokenizer, None).segment(text)
    assert "平方和优化" not in _pieces(tokenizer, plain.token_ids, plain.word_spans)
    assert len(plain.entity_spans) == 0

    lexicon = {"平方和优化": 2, "Rodrigues parameter": 1, "Lyapunov函数": 3, "大角度机动": 1}
    seg = Segmenter(tokenizer, lexicon).segment(text)
    words = _pieces(tokenizer, seg.token_ids, seg.word_spans)
    entities = _pieces(tokenizer, seg.token_ids, seg.entity_spans)
    assert entities == ["平方和优化", "rodriguesparameter", "lyapunov函数", "大角度机动"]
    for e in entities:  # each entity is exactly one whole word, also the one jieba splits at its space
        assert e in words
    keywords = sorted(lexicon)
    assert [keywords[i] for i in seg.entity_ids] == ["平方和优化", "Rodrigues parameter", "Lyapunov函数", "大角度机动"]


def test_word_spans_partition_tokens_on_real_sentences(tokenizer, csl_sentences, csl_lexicon_file) -> None:
    from framework.data.lexicon import load_lexicon

    seg = Segmenter(tokenizer, load_lexicon([csl_lexicon_file]))
    results = seg.segment_many(csl_sentences[:1500])
    n_entities = 0
    for text, r in zip(csl_sentences, results):
        n = len(r.token_ids)
        assert n == len(tokenizer(text, add_special_tokens=False)["input_ids"])
        w = r.word_spans
        assert w[0, 0] == 0 and w[-1, 1] == n
        assert (w[1:, 0] == w[:-1, 1]).all() and (w[:, 1] > w[:, 0]).all()
        word_set = set(map(tuple, w.tolist()))
        assert all(tuple(e) in word_set for e in r.entity_spans.tolist())
        n_entities += len(r.entity_spans)
    assert n_entities > 1000  # keywords do occur in their papers' text


def test_build_caches_and_reuses(tmp_path: Path, csl_sentences, tiny_tokenizer_dir, csl_lexicon_file) -> None:
    corpus = tmp_path / "train.txt"
    corpus.write_text("".join(s + "\n" for s in csl_sentences[:800]), encoding="utf-8")
    ds1 = build_segmented_dataset(corpus, tiny_tokenizer_dir, [csl_lexicon_file], workers=1, progress=False)
    assert len(ds1) == 800
    meta = json.loads((ds1.folder / "meta.json").read_text())
    assert meta["sentences"] == 800 and meta["entities"] > 0
    # Built in a uniquely named folder (mkdtemp: 0700), renamed into place readable as a plain mkdir leaves it.
    assert ds1.folder.stat().st_mode & 0o777 == 0o777 & ~current_umask()
    assert [p.name for p in ds1.folder.parent.iterdir()] == [ds1.folder.name], "no build folder left behind"

    # Same inputs: the cache is reused, not rebuilt (the folder and its files are untouched).
    mtime = os.path.getmtime(ds1.folder / "tokens.bin")
    ds2 = build_segmented_dataset(corpus, tiny_tokenizer_dir, [csl_lexicon_file], workers=2, progress=False)
    assert ds2.folder == ds1.folder and os.path.getmtime(ds2.folder / "tokens.bin") == mtime

    # Parallel and serial builds agree exactly.
    other = build_segmented_dataset(corpus, tiny_tokenizer_dir, [csl_lexicon_file], cache_dir=tmp_path / "c2",
                                    workers=2, progress=False)
    for i in range(len(ds1)):
        a, b = ds1[i], other[i]
        assert np.array_equal(a.input_ids, b.input_ids)
        assert np.array_equal(a.word_spans, b.word_spans)
        assert np.array_equal(a.entity_spans, b.entity_spans)

    # A changed corpus gets a new key; without a lexicon there are no entities.
    corpus.write_text("".join(s + "\n" for s in csl_sentences[:300]), encoding="utf-8")
    ds3 = build_segmented_dataset(corpus, tiny_tokenizer_dir, [], workers=1, progress=False)
    assert ds3.folder != ds1.folder and len(ds3) == 300
    assert ds3.meta["entities"] == 0 and ds3.entity_table() is None


def test_examples_have_specials_and_truncate_cleanly(csl_segmented: SegmentedDataset) -> None:
    ds = csl_segmented
    v = ds.vocab_info
    short = SegmentedDataset(ds.folder, max_seq_len=16)
    for i in range(0, len(ds), 7):
        ex = ds[i]
        assert ex.index == i
        assert ex.input_ids[0] == v.cls_token_id and ex.input_ids[-1] == v.sep_token_id
        assert ex.special_mask.tolist() == [True] + [False] * (len(ex) - 2) + [True]
        t = short[i]
        assert len(t) <= 16
        assert np.array_equal(t.input_ids[1:-1], ex.input_ids[1 : len(t) - 1])
        w = t.word_spans
        assert w[0, 0] == 1 and w[-1, 1] == len(t) - 1 and (w[1:, 0] == w[:-1, 1]).all()
        # Entities cut by truncation are dropped, never shortened.
        full = {tuple(e) for e in ex.entity_spans.tolist()}
        assert {tuple(e) for e in t.entity_spans.tolist()} <= full
    table = ds.entity_table()
    assert table is not None and table.size > 1000
    for n, rows in table.by_length.items():
        assert rows.shape[1] == n


def test_bad_inputs_name_the_fix(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="preprocess"):
        build_segmented_dataset(tmp_path / "missing.txt", tiny_tokenizer_dir)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no sentences"):
        build_segmented_dataset(empty, tiny_tokenizer_dir, workers=1, progress=False)
    assert not any(p.name.startswith(".") for p in (tmp_path / "segmented").iterdir())  # no half-built cache

    not_utf8 = tmp_path / "latin1.txt"
    not_utf8.write_bytes("研究方法\n".encode("utf-8") + "Müller研究\n".encode("latin-1", errors="replace"))
    with pytest.raises(BadInputError, match=r"latin1\.txt:2: not valid UTF-8 .*launch/preprocess\.py"):
        build_segmented_dataset(not_utf8, tiny_tokenizer_dir, workers=1, progress=False)
    assert not any(p.name.startswith(".") for p in (tmp_path / "segmented").iterdir())
