"""launch/build_vocab.py: a Chinese-BERT-style WordPiece vocabulary from a real CSL corpus."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertTokenizer

from framework.data.vocab import SPECIAL_TOKENS, build_vocab

ROOT = Path(__file__).resolve().parents[1]


def test_cli_builds_a_folder_bert_tokenizer_loads(tmp_path: Path, csl_sentences: list[str]) -> None:
    corpus = tmp_path / "train.txt"
    corpus.write_text("".join(s + "\n" for s in csl_sentences), encoding="utf-8")
    out = tmp_path / "tok"
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "build_vocab.py"), "--input", str(corpus),
                           "--output", str(out), "--vocab-size", "1000"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tok = BertTokenizer.from_pretrained(str(out))
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert vocab[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    # Every CJK character of the corpus is a single token and none becomes [UNK], even where that takes
    # the vocabulary past --vocab-size (the sample has over 2,000 distinct characters); Latin text is WordPiece.
    chars = {ch for s in csl_sentences for ch in s if "\u4e00" <= ch <= "\u9fff"}
    assert len(chars) > 1000 and chars <= set(vocab)
    ids = tok("采用修正的Rodrigues参数建立数学模型")["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert tok.unk_token not in tokens and any(t.startswith("##") for t in tokens)
    assert tokens[1:6] == ["采", "用", "修", "正", "的"]


def test_bad_input_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "launch" / "build_vocab.py"), "--input",
                           str(tmp_path / "missing.txt"), "--output", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no such file" in done.stderr
    with pytest.raises(ValueError, match="no sentences"):
        build_vocab([], tmp_path / "t")
    with pytest.raises(ValueError, match="too small"):
        build_vocab(["中文句子"], tmp_path / "t", vocab_size=3)
