"""Training a BERT WordPiece vocabulary from a sentence corpus.

Chinese BERT (Google's ``bert-base-chinese``, HFL's ``chinese-roberta-wwm-ext``) gives every CJK character
its own token and splits Latin text into WordPiece sub-words. We reproduce that with the ``tokenizers``
library's WordPiece trainer (``handle_chinese_chars=True`` puts spaces around every CJK character before
training, so no multi-character Chinese piece can form). The result is a plain ``vocab.txt`` folder that
``BertTokenizer.from_pretrained`` and ``BertTokenizerFast.from_pretrained`` load: used for models trained
from scratch and, tiny, in the tests.

The trainer breaks ties between equally frequent merges in an order that changes from run to run (a hash
map's), so two builds from the same corpus can differ in a few rare pieces: keep the folder a model was
trained with (runs keep it in ``OUTPUT/tokenizer``; the masking study in its results folder).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import BertWordPieceTokenizer

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _lines(paths: Iterable[str | Path]) -> Iterator[str]:
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    yield line


def build_vocab(
    sentences: Iterable[str],
    output_dir: str | Path,
    vocab_size: int = 21128,
    min_frequency: int = 1,
    lowercase: bool = True,
) -> Path:
    """Train a WordPiece vocabulary and save a tokenizer folder.

    Args:
        sentences: the corpus, one sentence per item.
        output_dir: folder to write ``vocab.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json``.
        vocab_size: upper bound on the vocabulary size (Chinese BERT uses 21,128). Every character seen at
            least ``min_frequency`` times is kept even when that exceeds the bound: a character that is not
            in the vocabulary becomes ``[UNK]``, which for Chinese loses the whole token.
        min_frequency: how often a character or piece must occur to enter the vocabulary.
        lowercase: lowercase Latin text, as Chinese BERT's tokenizer does.

    Returns:
        The output folder.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small: it must exceed the {len(SPECIAL_TOKENS)} special tokens")
    trainer_input = list(sentences)
    if not trainer_input:
        raise ValueError("build_vocab got no sentences: check that the corpus file is not empty")
    tokenizer = BertWordPieceTokenizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=lowercase
    )
    tokenizer.train_from_iterator(
        trainer_input,
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # The default alphabet limit (1000) would silently drop rarer CJK characters to [UNK].
        limit_alphabet=1_000_000,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab.items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(tok + "\n" for tok, _ in ordered), encoding="utf-8")
    config = {
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": lowercase,
        "tokenize_chinese_chars": True,
        "strip_accents": None,
        "model_max_length": 512,
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    special_map = {k: config[k] for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")
    logger.info("wrote a %d-token WordPiece vocabulary to %s", len(ordered), out)
    return out


def build_vocab_from_files(paths: Iterable[str | Path], output_dir: str | Path, **kwargs) -> Path:
    """:func:`build_vocab` over one or more one-sentence-a-line UTF-8 files."""
    return build_vocab(_lines(paths), output_dir, **kwargs)
