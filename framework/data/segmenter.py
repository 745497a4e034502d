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

import itertools
import logging
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

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


@dataclass(frozen=True)
class SegmentedChunk:
    """Many segmented sentences as flat arrays: what the dataset build writes, without per-sentence objects.

    ``token_counts[i]``, ``word_counts[i]`` and ``entity_counts[i]`` say how many rows of ``tokens``,
    ``word_spans`` and ``entity_spans``/``entity_ids`` belong to sentence ``i``; spans are relative to the
    sentence's first token.
    """

    tokens: np.ndarray
    token_counts: np.ndarray
    word_spans: np.ndarray
    word_counts: np.ndarray
    entity_spans: np.ndarray
    entity_ids: np.ndarray
    entity_counts: np.ndarray

    def __len__(self) -> int:
        return int(len(self.token_counts))

    def split(self) -> list[SegmentedSentence]:
        """Every sentence of the chunk, in order (views into the chunk's arrays)."""
        cut = [np.cumsum(c)[:-1] for c in (self.token_counts, self.word_counts, self.entity_counts)]
        parts = zip(np.split(self.tokens, cut[0]), np.split(self.word_spans, cut[1]),
                    np.split(self.entity_spans, cut[2]), np.split(self.entity_ids, cut[2]))
        return [SegmentedSentence(t, w, e, ids) for t, w, e, ids in parts]


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
        return self.segment_chunk([text]).split()[0]

    def segment_many(self, texts: Sequence[str]) -> list[SegmentedSentence]:
        """Segment several sentences, one :class:`SegmentedSentence` each."""
        return self.segment_chunk(texts).split()

    def segment_chunk(self, texts: Sequence[str]) -> "SegmentedChunk":
        """Segment a list of sentences into flat arrays (the fast path the dataset build uses).

        jieba runs per sentence (it is pure Python); everything after it is done once for the whole chunk
        with NumPy: every token finds its word by a binary search of its character position among the
        words' first characters, laid end to end across the chunk.
        """
        texts = list(texts)
        enc = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                             return_attention_mask=False, return_token_type_ids=False)
        token_counts = np.fromiter(map(len, enc["input_ids"]), dtype=np.int64, count=len(texts))
        total = int(token_counts.sum())
        tokens = np.fromiter(itertools.chain.from_iterable(enc["input_ids"]), dtype=np.int32, count=total)
        token_chars = np.fromiter((s for offsets in enc["offset_mapping"] for s, _ in offsets), dtype=np.int64,
                                  count=total)
        char_base = np.zeros(len(texts), dtype=np.int64)
        leader_starts: list[int] = []  # global first character of every word (entity words merged)
        ent_leaders: list[int] = []
        ent_ids: list[int] = []
        base = 0
        for i, text in enumerate(texts):
            char_base[i] = base
            words: list[str] = []
            starts: list[int] = []
            pos = base
            for w in self._jieba.cut(text, HMM=self.hmm):
                if not w.isspace():  # a skipped character joins the word before it
                    words.append(w)
                    starts.append(pos)
                pos += len(w)
            if not starts:
                starts, words = [base], [""]
            starts[0] = base  # leading skipped characters join the first word
            followers: set[int] = set()
            if self._entity_index:
                for a, b, eid in self._match_entities(words):
                    followers.update(range(a + 1, b))  # the words after an entity's first merge into it
                    ent_leaders.append(len(leader_starts) + a - sum(1 for k in followers if k < a))
                    ent_ids.append(eid)
            leader_starts.extend(st for k, st in enumerate(starts) if k not in followers)
            base += len(text) + 1

        token_offsets = np.concatenate([[0], np.cumsum(token_counts)])
        word_of_token = np.searchsorted(np.asarray(leader_starts, dtype=np.int64),
                                        token_chars + np.repeat(char_base, token_counts), side="right") - 1
        is_start = np.ones(total, dtype=bool)
        is_start[1:] = word_of_token[1:] != word_of_token[:-1]
        span_starts = np.flatnonzero(is_start)
        span_ends = np.append(span_starts[1:], total)
        span_sentence = np.searchsorted(token_offsets, span_starts, side="right") - 1
        local = token_offsets[span_sentence]
        word_spans = np.stack([span_starts - local, span_ends - local], axis=1).astype(np.int32)
        word_counts = np.bincount(span_sentence, minlength=len(texts)).astype(np.int64)

        span_leader = word_of_token[span_starts]
        leaders = np.asarray(ent_leaders, dtype=np.int64)
        where = np.minimum(np.searchsorted(span_leader, leaders), max(len(span_leader) - 1, 0))
        found = span_leader[where] == leaders if len(span_leader) else np.zeros(len(leaders), dtype=bool)
        where = where[found]  # an entity of only skipped characters has no tokens
        entity_counts = np.bincount(span_sentence[where], minlength=len(texts)).astype(np.int64)
        return SegmentedChunk(
            tokens=tokens, token_counts=token_counts,
            word_spans=word_spans, word_counts=word_counts,
            entity_spans=word_spans[where].reshape(-1, 2), entity_ids=np.asarray(ent_ids, dtype=np.int32)[found],
            entity_counts=entity_counts,
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
