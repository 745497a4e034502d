"""Shared fixtures: real CSL data from ../shared/data and a tiny tokenizer built from it.

Tests that need the shared data skip with a clear reason where the folder is absent (it is never copied
into the repository).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")  # a test that wants W&B sets it explicitly
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("ACADEMIC_BERT_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` (or $ACADEMIC_BERT_SHARED_DATA); skips the test where it is absent."""
    if not (SHARED_DATA / "csl-dev.tsv").is_file():
        pytest.skip(f"real CSL data not found at {SHARED_DATA} (set ACADEMIC_BERT_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def csl_tsv(shared_data_dir: Path) -> Path:
    """The 1,000-paper CSL sample in the full release's TSV layout."""
    return shared_data_dir / "csl-dev.tsv"


@pytest.fixture(scope="session")
def csl_jsonl(shared_data_dir: Path) -> Path:
    """The same papers as JSON lines."""
    return shared_data_dir / "csl-dev.jsonl"


@pytest.fixture(scope="session")
def csl_papers(csl_jsonl: Path) -> list[dict]:
    """The 1,000 CSL papers as dicts (title, abstract, keywords, discipline, category)."""
    with open(csl_jsonl, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def csl_keywords(csl_papers: list[dict]) -> list[str]:
    """Every distinct keyword of the sample papers, in first-seen order."""
    seen: dict[str, None] = {}
    for paper in csl_papers:
        for kw in paper["keywords"]:
            if kw.strip():
                seen.setdefault(kw.strip(), None)
    return list(seen)


@pytest.fixture(scope="session")
def csl_sentences(csl_papers: list[dict]) -> list[str]:
    """Real CSL sentences (titles and abstract sentences of 10-128 characters) through the corpus pipeline."""
    from framework.data.cleaning import clean_text
    from framework.data.sentences import split_sentences

    out: list[str] = []
    for paper in csl_papers:
        for raw in [paper["title"], *split_sentences(paper["abstract"])]:
            text = clean_text(raw)
            if text and 10 <= len(text) <= 128:
                out.append(text)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, csl_sentences: list[str]) -> Path:
    """A small Chinese-BERT-style WordPiece vocabulary trained on the CSL sample, saved locally."""
    from framework.data.vocab import build_vocab

    return build_vocab(csl_sentences, tmp_path_factory.mktemp("tokenizer"), vocab_size=4000)


@pytest.fixture(scope="session")
def csl_lexicon_file(tmp_path_factory: pytest.TempPathFactory, csl_papers: list[dict]) -> Path:
    """The sample papers' keywords as a jieba user dictionary (``word freq`` a line)."""
    from collections import Counter

    counts = Counter("".join(kw.split()) for p in csl_papers for kw in p["keywords"] if kw.strip())
    path = tmp_path_factory.mktemp("lexicon") / "keywords.txt"
    path.write_text("".join(f"{kw} {n}\n" for kw, n in counts.items()), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def csl_segmented(tmp_path_factory: pytest.TempPathFactory, csl_sentences: list[str], tiny_tokenizer_dir: Path,
                  csl_lexicon_file: Path):
    """The real CSL sentences as a :class:`~framework.data.segmented.SegmentedDataset` (seq len 128)."""
    from framework.data.segmented import build_segmented_dataset

    folder = tmp_path_factory.mktemp("segmented")
    corpus = folder / "train.txt"
    corpus.write_text("".join(s + "\n" for s in csl_sentences), encoding="utf-8")
    return build_segmented_dataset(corpus, tiny_tokenizer_dir, [csl_lexicon_file], workers=2, progress=False)
