"""Where a sentence is segmented: jieba words and keyword entities, mapped onto tokenizer tokens.

Chinese BERT tokenizes every CJK character on its own, so "whole word" information must come from a word
segmenter. For each sentence we

1. run jieba (with the keyword lexicon added to its dictionary, so keywords stay whole) to get words as
   character spans;
2. tokenize with the fast (Rust) BERT tokenizer, keeping each token's character offsets;
3. give every token the word that contains its first character; runs of the same word become word spans.
   Because spans come from token positions, a word can never be split by the mapping, even where jieba's
   and WordPiece's boundaries disagree (a jieba boundary inside a WordPiece token merges the two words);
4. mark entity occurrences: runs of one or more consecutive jieba words whose text (whitespace and case
   ignored) is a lexicon keyword. The words inside an entity are merged into one word span, so the
   entity is a whole word for every strategy, also when jieba split it (``Rodrigues parameter``).

This runs once per corpus, when the segmented dataset is built (:mod:`framework.data.segmented`); masking
strategies only ever see the resulting spans.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

MAX_ENTITY_WORDS = 4
"""Longest run of jieba words tested as one entity (keywords with spaces or that jieba still splits)."""


# jieba's own pattern for text it segments as one block (jieba.re_han_default); anything else splits.
_JIEBA_WORD = re.compile(r"[\u4E00-\u9FD5a-zA-Z0-9+#&._%\-]+")


def entity_key(text: str) -> str:
    """The form under which a keyword and a run of words are compared: no whitespace, lower case."""
    return "".join(text.split()).lower()


@dataclass(frozen=True)
class SegmentedSentence:
    """One sentence as token ids and token spans, without special tokens.

    Attributes:
        token_ids: ``int32 [n]``.
        word_spans: ``int32 [W, 2]`` half-open token spans partitioning ``[0, n)``.
        entity_spans: ``int32 [E, 2]`` token spans of keyword occurrences, each equal to one word span.
        entity_ids: ``int32 [E]`` row of each occurrence in the lexicon's sorted keyword list.
    """

    token_ids: np.ndarray
    word_spans: np.ndarray
    entity_spans: np.ndarray
    entity_ids: np.ndarray


class Segmenter:
    """Turns sentences into :class:`SegmentedSentence` objects for one tokenizer and one lexicon.

    Args:
        tokenizer: a *fast* transformers BERT tokenizer (offsets are needed).
        lexicon: keyword -> frequency (from :func:`framework.data.lexicon.load_lexicon`), or ``None``.
        hmm: let jieba guess unknown words with its HMM. Off by default: it is slower and its guesses
            across keyword boundaries hurt entity recall more than they help plain WWM.
    """

    def __init__(self, tokenizer, lexicon: Mapping[str, int] | None = None, hmm: bool = False) -> None:  # noqa: ANN001
        import jieba

        if not getattr(tokenizer, "is_fast", False):
            raise TypeError(
                f"Segmenter needs a fast tokenizer with offset mapping; got {type(tokenizer).__name__}. "
                "Load it with AutoTokenizer.from_pretrained(path) or BertTokenizerFast.from_pretrained(path)."
            )
        self.tokenizer = tokenizer
        self.hmm = hmm
        self.keywords: list[str] = sorted(lexicon) if lexicon else []
        self._entity_index: dict[str, int] = {}
        # Keywords that jieba will split whatever their frequency (spaces, characters outside its word
        # pattern such as Greek letters) are matched as runs of words; their key prefixes say when to try.
        self._multiword_prefixes: set[str] = set()
        for i, kw in enumerate(self.keywords):
            key = entity_key(kw)
            self._entity_index.setdefault(key, i)
            if not _JIEBA_WORD.fullmatch(kw):
                self._multiword_prefixes.update(key[:j] for j in range(1, len(key)))
        # A private jieba.Tokenizer: the global one is shared process state, and two runs with different
        # lexicons in one process must not see each other's words.
        jieba.setLogLevel(logging.WARNING)
        self._jieba = jieba.Tokenizer()
        self._jieba.initialize()
        for kw in self.keywords:
            if any(ch.isspace() for ch in kw):
                continue  # jieba's cut splits at spaces anyway; the multi-word match below finds these
            self._jieba.add_word(kw, max(int(lexicon[kw]), 1))
            # Raise the frequency just enough that jieba's best route keeps the keyword whole.
            self._jieba.suggest_freq(kw, tune=True)

    def segment(self, text: str) -> SegmentedSentence:
        """Segment one sentence."""
        return self.segment_many([text])[0]

    def segment_many(self, texts: Sequence[str]) -> list[SegmentedSentence]:
        """Segment a list of sentences (tokenized in one batch, which is much faster in the Rust tokenizer)."""
        enc = self.tokenizer(
            list(texts), add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [
            self._align(text, ids, offsets)
            for text, ids, offsets in zip(texts, enc["input_ids"], enc["offset_mapping"])
        ]

    def _align(self, text: str, ids: list[int], offsets: list[tuple[int, int]]) -> SegmentedSentence:
        # Plain lists, not NumPy: sentences are ~40 tokens, where per-call NumPy overhead dominates.
        words = [(w, s, e) for w, s, e in self._jieba.tokenize(text, HMM=self.hmm) if not w.isspace()]
        entity_words = self._match_entities([w for w, _, _ in words]) if self._entity_index else []
        # Word id of every character; the words of an entity share the entity's first word id.
        word_of_char = [-1] * (len(text) + 1)
        group = list(range(len(words)))
        for a, b, _ in entity_words:
            for k in range(a + 1, b):
                group[k] = a
        for k, (_, s, e) in enumerate(words):
            word_of_char[s:e] = [group[k]] * (e - s)

        n = len(ids)
        word_spans: list[tuple[int, int]] = []
        first_token: dict[int, int] = {}
        prev = -2
        for t, (start, _) in enumerate(offsets):
            w = word_of_char[start] if start < len(text) else -1
            if w < 0:  # a character jieba skipped (whitespace) joins the word before it
                w = max(prev, 0)
            if w != prev:
                if word_spans:
                    word_spans[-1] = (word_spans[-1][0], t)
                word_spans.append((t, n))
                first_token.setdefault(w, len(word_spans) - 1)
                prev = w
        ent_spans: list[tuple[int, int]] = []
        ent_ids: list[int] = []
        for a, _, eid in entity_words:
            k = first_token.get(a)
            if k is not None:  # an entity of only skipped characters has no tokens
                ent_spans.append(word_spans[k])
                ent_ids.append(eid)
        return SegmentedSentence(
            np.asarray(ids, dtype=np.int32),
            np.asarray(word_spans, dtype=np.int32).reshape(-1, 2),
            np.asarray(ent_spans, dtype=np.int32).reshape(-1, 2),
            np.asarray(ent_ids, dtype=np.int32),
        )

    def _match_entities(self, words: list[str]) -> list[tuple[int, int, int]]:
        """Keyword occurrences as word ranges ``[a, b)`` with their lexicon row, longest match first."""
        index, prefixes = self._entity_index, self._multiword_prefixes
        found: list[tuple[int, int, int]] = []
        k = 0
        while k < len(words):
            key = entity_key(words[k])
            hit = None
            if key in prefixes:  # only keywords that jieba cannot keep whole span several words
                joined = key
                for j in range(k + 1, min(len(words), k + MAX_ENTITY_WORDS)):
                    joined += entity_key(words[j])
                    eid = index.get(joined)
                    if eid is not None:
                        hit = (k, j + 1, eid)
                    if joined not in prefixes:
                        break
            if hit is None:
                eid = index.get(key)
                if eid is not None:
                    hit = (k, k + 1, eid)
            if hit is not None:
                found.append(hit)
                k = hit[1]
            else:
                k += 1
        return found


def entity_token_table(tokenizer, keywords: Sequence[str]) -> dict[int, np.ndarray]:  # noqa: ANN001
    """Keywords' token ids grouped by length, ``{n: int32 [K_n, n]}``, for same-length entity replacement."""
    if not keywords:
        return {}
    enc = tokenizer(list(keywords), add_special_tokens=False, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    groups: dict[int, list[list[int]]] = {}
    for ids in enc:
        if ids:
            groups.setdefault(len(ids), []).append(ids)
    return {n: np.asarray(rows, dtype=np.int32) for n, rows in sorted(groups.items())}


def iter_chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    """Group an iterable of sentences into lists of ``size`` (the unit of parallel work)."""
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
