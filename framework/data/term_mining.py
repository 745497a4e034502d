"""Where domain terms are mined from raw sentences: an entity lexicon for a corpus without keywords.

The established unsupervised statistics of Chinese new-word discovery, computed over character n-grams and
jieba word n-grams of the same text:

* **frequency** ``f(w)``: how often the string occurs (as a substring, within a run of word characters);
* **cohesion**: the smallest pointwise mutual information over the ways of cutting ``w`` in two,
  ``min_k log(f(w) N / (f(w[:k]) f(w[k:])))`` with ``N`` the characters counted. A term's halves occur together
  far more often than chance (``斜拉桥`` + ``主塔``); a phrase of two common words does not;
* **freedom**: the entropy of the characters just left and just right of ``w``, the smaller of the two. A term
  is used in many contexts; a fragment of a longer term (``拉桥主``) always has the same neighbour. A sentence
  or punctuation boundary counts as a neighbour of its own each time, so a term that ends sentences is free;
* **specificity**: how much more often ``w`` occurs here than in general Chinese, ``log(f(w) / N) - log
  P(w)`` with ``P(w)`` the probability of ``w``'s words under jieba's own dictionary frequencies (a general
  corpus). The "weirdness" of terminology extraction (Ahmad et al., 1999): common words (``研究``, ``包括``) are
  frequent everywhere; ``铜绿微囊藻`` is frequent only here. On CSL it lifts the top 1,000's precision from 32% to
  42% and the recall of jieba-split keywords in the top 5,000 from 68% to 77%;
* **alignment**: the share of ``w``'s occurrences where it is a run of whole jieba words (jieba's default
  dictionary, HMM on), its first and last word not a function word (:data:`START_STOP_WORDS`,
  :data:`END_STOP_WORDS`) and no word inside it a particle (:data:`INNER_STOP_WORDS`). Character statistics
  alone rank fragments such as ``研究了`` or ``的影响`` high; jieba's boundaries, right in about nine of ten
  keyword occurrences on CSL, rule them out, while the statistics above choose which word runs are terms.

A candidate is a string of 2 to ``max_chars`` characters with at least one CJK character, seen ``min_count``
times, aligned in at least ``min_aligned`` of its occurrences and not a quantity (``15例``, ``年6月``).
Its score is ``log f * min(left, right entropy) * cohesion * specificity`` (each factor must be positive):
frequency, freedom, cohesion and specificity must all be there. ``docs/data.md`` has the measured precision
and recall on CSL.

**Two streamed passes, bounded memory.** The first pass counts jieba's word n-grams, which give the
candidates; the second counts only the character n-grams scoring reads (the candidates, the halves of their
cuts, and the neighbour of each occurrence), exactly, in a table about a tenth of what counting every n-gram
takes (``--min-aligned 0``, where every character n-gram is a candidate, does count everything). Chunks of
sentences are counted by worker processes (:func:`~framework.data.parallel.ordered_map`) and merged in input
order, so results do not depend on the number of workers. When a table grows past ``max_ngrams`` entries the
rarest entries are dropped (those seen once, then twice...), so memory stays flat on a corpus of any size; an
n-gram dropped and seen again later is undercounted by at most the pruning threshold times the prunings, which
:class:`MiningStats` reports.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from framework.data.atomic import atomic_text_file
from framework.data.cleaning import CJK_CHAR_CLASS, clean_text
from framework.data.lexicon import write_lexicon
from framework.data.parallel import available_cores, chunked, ordered_map
from framework.data.readers import BadInputError, count_file_lines, open_binary

logger = logging.getLogger(__name__)

__all__ = [
    "TermMiningConfig", "Term", "NgramTable", "MiningStats", "MiningResult", "count_words", "count_chars",
    "count_ngrams", "score_terms",
    "mine_terms", "mine_terms_from_files", "iter_sentence_files", "write_terms", "write_term_table",
    "START_STOP_WORDS", "END_STOP_WORDS", "INNER_STOP_WORDS", "add_mining_arguments", "config_from_args",
    "count_lines",
]

# Function words (as jieba segments them) that a term does not start or end with. Deliberately words, not
# characters: 对 starts no term but 对流 is one, and jieba keeps 对流 whole.
_FUNCTION_WORDS = set("的 了 着 过 是 在 和 与 及 或 对 为 于 从 以 并 而 被 把 也 都 又 还 则 即 就 将 向 由 给 让 "
                      "跟 按 据 因 但 若 如 且 其 此 该 这 那 之 所 等 各 每 个 们 使 我 我们 你 他 她 它 "
                      "以及 及其 其中 对于 关于 通过 基于 采用 进行 利用 提出 表明 具有 可以 能够 为了 由于 根据 "
                      "随着 并且 而且 或者 因此 所以 但是 然而 同时 其他 这些 那些 这种 该种 本文 文中 一个 一种 "
                      "一些 一定 不同 主要 相关 有效 有关 重要 得到 认为 发现 结果 目的 方法 研究 分析 探讨".split())
START_STOP_WORDS = frozenset(_FUNCTION_WORDS - {"研究", "分析", "相关"})
"""jieba words a term does not start with (``研究``, ``分析`` and ``相关`` may start one: ``相关系数``)."""
END_STOP_WORDS = frozenset(_FUNCTION_WORDS - {"研究", "分析", "方法", "结果", "目的", "不同", "一种", "个"}
                           | {"中", "上", "下", "内", "时", "后", "前", "里", "间"})
"""jieba words a term does not end with (``研究`` and ``分析`` often end one: ``实证研究``, ``因子分析``)."""
INNER_STOP_WORDS = frozenset("的 了 着 是 在 被 把 从 这 那 我们".split())
"""jieba words no term holds anywhere: a run across ``的`` (``模型的参数``) is a phrase. Costs the rare keyword
with one (13 of CSL-dev's 4,731: ``党的建设``)."""

_WORD_CHARS = f"{CJK_CHAR_CLASS}A-Za-z0-9"
# A run of word characters, with hyphens inside (U-Pb, 2-羟基): n-grams never cross punctuation or spaces.
_RUN_RE = re.compile(f"[{_WORD_CHARS}]+(?:-[{_WORD_CHARS}]+)*")
_WORD_RE = re.compile(f"[{_WORD_CHARS}-]+")
_CJK_RE = re.compile(f"[{CJK_CHAR_CLASS}]")
# A quantity, not a term: a bare number (digits not attached to Latin letters: CO2 and Caco-2 are fine) at the
# end (第3) or before a date or counting unit (年6月, 15例). One at the start stays: 2型糖尿病, 3D打印.
_QUANTITY_RE = re.compile(r"(?<![A-Za-z0-9])[0-9]+(?:\.[0-9]+)?(?:$|[年月日时分秒岁例只株天周次组名篇个种项位家份倍])")
_START, _END = "\x02", "\x03"  # run boundaries, as neighbours; never in cleaned text (control characters)


@dataclass
class TermMiningConfig:
    """How terms are mined; :meth:`validate` says what to change when a value cannot work.

    Attributes:
        min_count: fewest occurrences of a term (rarer strings carry no reliable statistics).
        max_terms: the best this many are kept (``0``: every candidate with a positive score).
        max_chars: longest term, in characters (CSL's keywords: 97% have at most 10).
        max_words: longest run of jieba words a term may be.
        min_aligned: share of a term's occurrences that must be whole jieba words (``0``: characters only).
        workers: counting processes (``0``: every core this process may use).
        chunk_sentences: sentences per unit of work handed to a worker.
        max_ngrams: table entries kept before the rarest are pruned (about 150 bytes each: 6M is about 1 GB).
        progress: show a progress bar.
    """

    min_count: int = 3
    max_terms: int = 0
    max_chars: int = 10
    max_words: int = 4
    min_aligned: float = 0.5
    workers: int = 0
    chunk_sentences: int = 2000
    max_ngrams: int = 6_000_000
    progress: bool = True

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option and the fix."""
        if self.min_count < 1:
            raise ValueError(f"--min-count {self.min_count}: must be at least 1 (3 is the default)")
        if self.max_terms < 0:
            raise ValueError(f"--max-terms {self.max_terms}: give a positive number, or 0 for every candidate")
        if not 2 <= self.max_chars <= 32:
            raise ValueError(f"--max-chars {self.max_chars}: must be between 2 and 32 (10 is the default)")
        if not 1 <= self.max_words <= 8:
            raise ValueError(f"--max-words {self.max_words}: must be between 1 and 8 (4 is the default)")
        if not 0.0 <= self.min_aligned <= 1.0:
            raise ValueError(f"--min-aligned {self.min_aligned}: a share between 0 and 1 (0.5 is the default)")
        if self.workers < 0:
            raise ValueError(f"--workers {self.workers}: give a positive number, or 0 for all cores")
        if self.chunk_sentences < 1:
            raise ValueError(f"chunk_sentences={self.chunk_sentences}: must be positive")
        if self.max_ngrams < 10_000:
            raise ValueError(f"--max-ngrams {self.max_ngrams}: at least 10000 (the default 6000000 is about 1 GB)")

    def resolved_workers(self) -> int:
        """Counting processes to use."""
        return self.workers if self.workers > 0 else available_cores()


@dataclass(frozen=True)
class Term:
    """One mined term and the statistics it was ranked by.

    Attributes:
        text: the term, as it stands in the cleaned text.
        count: occurrences in the corpus (the lexicon's frequency).
        score: ``log count * min(left_entropy, right_entropy) * cohesion * specificity``.
        cohesion: the smallest PMI (nats) over the ways of cutting the term in two.
        specificity: log ratio of its rate here to its probability under jieba's dictionary (nats).
        left_entropy, right_entropy: entropy (nats) of the neighbouring characters.
        aligned: share of the occurrences that are runs of whole jieba words.
    """

    text: str
    count: int
    score: float
    cohesion: float
    specificity: float
    left_entropy: float
    right_entropy: float
    aligned: float


@dataclass
class NgramTable:
    """Counts of one or more chunks: character n-grams (with run-boundary marks) and jieba word n-grams.

    ``chars`` holds every substring of 1 to ``max_chars + 1`` characters of each run of word characters padded
    with :data:`_START` and :data:`_END` (the extra character gives the neighbours of the longest terms);
    ``words`` holds the strings of the aligned word runs; ``positions`` counts characters, ``sentences`` lines.
    """

    chars: Counter = field(default_factory=Counter)
    words: Counter = field(default_factory=Counter)
    positions: int = 0
    sentences: int = 0
    prune_below: int = 1  # entries counted fewer times than this were dropped (1: none ever were)
    prunings: int = 0

    def add(self, other: "NgramTable") -> None:
        """Merge ``other`` into this table."""
        self.chars.update(other.chars)
        self.words.update(other.words)
        self.positions += other.positions
        self.sentences += other.sentences

    def entries(self) -> int:
        """Entries held, the measure ``max_ngrams`` bounds."""
        return len(self.chars) + len(self.words)

    def prune(self, max_entries: int) -> None:
        """Drop the rarest entries (raising the threshold one count at a time) until at most half of
        ``max_entries`` remain; half, so that the next pruning is many chunks away."""
        if self.entries() <= max_entries:
            return
        while self.entries() > max_entries // 2:
            self.prune_below += 1
            keep = self.prune_below
            self.chars = Counter({k: c for k, c in self.chars.items() if c >= keep})
            self.words = Counter({k: c for k, c in self.words.items() if c >= keep})
        self.prunings += 1
        logger.info("term mining: pruned the n-gram table to %d entries (dropped counts below %d)",
                    self.entries(), self.prune_below)


def add_mining_arguments(parser: Any) -> None:
    """The miner's options (``launch/mine_terms.py`` and ``launch/benchmark.py terms`` share them)."""
    d = TermMiningConfig()
    parser.add_argument("--min-count", type=int, default=d.min_count,
                        help=f"fewest occurrences of a term (default {d.min_count})")
    parser.add_argument("--max-terms", type=int, default=d.max_terms,
                        help="keep the best K terms (default 0: every candidate with a positive score)")
    parser.add_argument("--max-chars", type=int, default=d.max_chars,
                        help=f"longest term in characters (default {d.max_chars})")
    parser.add_argument("--max-words", type=int, default=d.max_words,
                        help=f"longest run of jieba words a term may be (default {d.max_words})")
    parser.add_argument("--min-aligned", type=float, default=d.min_aligned,
                        help=f"share of occurrences that must be whole jieba words (default {d.min_aligned}; "
                             "0: character statistics only)")
    parser.add_argument("--workers", type=int, default=d.workers, help="counting processes (default 0: all cores)")
    parser.add_argument("--max-ngrams", type=int, default=d.max_ngrams,
                        help=f"n-gram table entries before the rarest are pruned (default {d.max_ngrams}, "
                             "about 1 GB)")


def config_from_args(args: Any, progress: bool = True) -> TermMiningConfig:
    """The :class:`TermMiningConfig` of parsed :func:`add_mining_arguments` options."""
    return TermMiningConfig(min_count=args.min_count, max_terms=args.max_terms, max_chars=args.max_chars,
                            max_words=args.max_words, min_aligned=args.min_aligned, workers=args.workers,
                            max_ngrams=args.max_ngrams, progress=progress)


# --------------------------------------------------------------------------------------------- counting


_JIEBA: Any = None


def _jieba() -> Any:
    """jieba's default tokenizer, loaded once per process and quiet (no 'Building prefix dict' lines)."""
    global _JIEBA
    if _JIEBA is None:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        jieba.initialize()
        _JIEBA = jieba
    return _JIEBA


def _word_runs(words: Iterable[str]) -> Iterator[list[str]]:
    run: list[str] = []
    for word in words:
        if _WORD_RE.fullmatch(word):
            run.append(word)
        elif run:
            yield run
            run = []
    if run:
        yield run


def count_words(sentences: Sequence[str], max_chars: int = 10, max_words: int = 4) -> NgramTable:
    """Count the aligned jieba word n-grams of ``sentences`` (cleaned text, one sentence each), with the
    characters (``positions``) of their word-character runs."""
    table = NgramTable()
    words = table.words
    cut = _jieba().cut
    start_stop, end_stop, inner_stop = START_STOP_WORDS, END_STOP_WORDS, INNER_STOP_WORDS
    for sentence in sentences:
        table.sentences += 1
        table.positions += sum(map(len, _RUN_RE.findall(sentence)))
        for run in _word_runs(cut(sentence, HMM=True)):
            grams = []
            for i, first in enumerate(run):
                if first in start_stop or first in inner_stop or first[0] == "-":
                    continue
                text = ""
                for j in range(i, min(len(run), i + max_words)):
                    word = run[j]
                    if j > i and word in inner_stop:
                        break
                    text += word
                    if len(text) > max_chars:
                        break
                    if word not in end_stop and text[-1] != "-":
                        grams.append(text)
            words.update(grams)
    return table


def count_chars(sentences: Sequence[str], max_chars: int = 10, needed: frozenset[str] | None = None,
                candidates: frozenset[str] | None = None) -> NgramTable:
    """Count character n-grams of the word-character runs of ``sentences``, each run padded with
    :data:`_START` and :data:`_END`.

    With ``needed`` ``None``, every n-gram of 1 to ``max_chars + 1`` characters. Otherwise only what scoring
    reads: the n-grams in ``needed`` (the candidates and their halves), and the one-character extensions of each
    occurrence of a ``candidates`` string (its neighbours), each occurrence's extension once. The counts of what
    is counted are the same either way; the table is a tenth of the size.
    """
    table = NgramTable()
    chars = table.chars
    for sentence in sentences:
        table.sentences += 1
        for run in _RUN_RE.findall(sentence):
            table.positions += len(run)
            padded = _START + run + _END
            n = len(padded)
            if needed is None:
                # One list for Counter.update, which counts in C: the hot loop of single-pass mining.
                chars.update([padded[i:j] for i in range(n) for j in range(i + 1, min(n, i + max_chars + 1) + 1)])
                continue
            spans = [(i, j) for i in range(n) for j in range(i + 1, min(n, i + max_chars) + 1)
                     if padded[i:j] in needed]
            chars.update([padded[i:j] for i, j in spans])
            extensions = set()
            for i, j in spans:
                if padded[i:j] in candidates:  # type: ignore[operator]
                    if j < n and padded[i:j + 1] not in needed:
                        extensions.add((i, j + 1))
                    if i > 0 and padded[i - 1:j] not in needed:
                        extensions.add((i - 1, j))
            chars.update([padded[i:j] for i, j in extensions])
    return table


def count_ngrams(sentences: Sequence[str], max_chars: int = 10, max_words: int = 4) -> NgramTable:
    """Every character n-gram and aligned word n-gram of ``sentences`` in one table (the single-pass count)."""
    table = count_chars(sentences, max_chars)
    table.words = count_words(sentences, max_chars, max_words).words
    return table


_NEEDED: tuple[frozenset[str], frozenset[str]] | None = None  # a worker's (needed, candidates) of the char pass


def _set_needed(needed: frozenset[str], candidates: frozenset[str]) -> None:
    global _NEEDED
    _NEEDED = (needed, candidates)


class _WordTask:
    """A worker's task (picklable): the word pass over one chunk."""

    def __init__(self, max_chars: int, max_words: int) -> None:
        self.max_chars, self.max_words = max_chars, max_words

    def __call__(self, sentences: list[str]) -> NgramTable:
        return count_words(sentences, self.max_chars, self.max_words)


class _CharTask:
    """A worker's task (picklable): the character pass over one chunk; the sets come with the worker
    (:func:`_set_needed`), not with every task."""

    def __init__(self, max_chars: int, all_ngrams: bool = False) -> None:
        self.max_chars, self.all_ngrams = max_chars, all_ngrams

    def __call__(self, sentences: list[str]) -> NgramTable:
        if self.all_ngrams:
            return count_chars(sentences, self.max_chars)
        assert _NEEDED is not None
        return count_chars(sentences, self.max_chars, *_NEEDED)


# --------------------------------------------------------------------------------------------- scoring


def _is_candidate(text: str, max_chars: int) -> bool:
    return (2 <= len(text) <= max_chars and _RUN_RE.fullmatch(text) is not None and _CJK_RE.search(text) is not None
            and _QUANTITY_RE.search(text) is None)


def _cohesion(text: str, count: int, chars: Counter, positions: int) -> float | None:
    """The smallest PMI over the cuts of ``text`` whose halves are both still counted (``None``: none is)."""
    best = None
    for k in range(1, len(text)):
        left, right = chars.get(text[:k]), chars.get(text[k:])
        if left and right:
            pmi = math.log(count * positions / (left * right))
            best = pmi if best is None or pmi < best else best
    return best


def _general_logprob(text: str) -> float:
    """log P(text) under jieba's dictionary: its words' relative frequencies (an unknown word counts once)."""
    jieba = _jieba()
    freq, total = jieba.dt.FREQ, jieba.dt.total
    return sum(math.log(max(freq.get(word, 0), 1) / total) for word in jieba.lcut(text, HMM=False))


def score_terms(table: NgramTable, config: TermMiningConfig) -> list[Term]:
    """Score every candidate of ``table`` and return those with a positive score, best first (ties by text)."""
    chars, words = table.chars, table.words
    pool = words if config.min_aligned > 0 else chars
    counts: dict[str, int] = {}
    for text in pool:
        count = chars.get(text, 0)
        if (count >= config.min_count and words.get(text, 0) >= config.min_aligned * count
                and _is_candidate(text, config.max_chars)):
            counts[text] = count
    # Neighbour entropy from the one-character-longer n-grams: H = log f - sum(c log c) / f, where f counts
    # every occurrence. A boundary, and an extension pruned as rare, is a neighbour seen once (c log c = 0).
    right_mass: dict[str, float] = dict.fromkeys(counts, 0.0)
    left_mass: dict[str, float] = dict.fromkeys(counts, 0.0)
    for gram, c in chars.items():
        if c < 2 or len(gram) < 3:  # c log c is 0 for c = 1; candidates have 2 or more characters
            continue
        head, tail = gram[:-1], gram[1:]
        if head in right_mass and gram[-1] != _END:
            right_mass[head] += c * math.log(c)
        if tail in left_mass and gram[0] != _START:
            left_mass[tail] += c * math.log(c)
    terms = []
    for text, count in counts.items():
        cohesion = _cohesion(text, count, chars, table.positions)
        if cohesion is None or cohesion <= 0:
            continue
        specificity = math.log(count / table.positions) - _general_logprob(text)
        if specificity <= 0:
            continue
        log_f = math.log(count)
        left = max(0.0, log_f - left_mass[text] / count)
        right = max(0.0, log_f - right_mass[text] / count)
        score = log_f * min(left, right) * cohesion * specificity
        if score > 0:
            terms.append(Term(text, count, score, cohesion, specificity, left, right,
                              min(1.0, words.get(text, 0) / count)))
    terms.sort(key=lambda t: (-t.score, t.text))
    return terms


# --------------------------------------------------------------------------------------------- the run


@dataclass
class MiningStats:
    """What a mining run saw and did (saved beside the terms by ``launch/mine_terms.py``)."""

    sentences: int
    characters: int
    candidates: int
    terms: int
    char_ngrams: int
    word_ngrams: int
    prunings: int
    pruned_below: int
    workers: int
    seconds: float
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class MiningResult:
    """The ranked terms (cut at ``max_terms``) and the run's statistics."""

    terms: list[Term]
    stats: MiningStats


def _count_pass(task: Any, sentences: Iterable[str], config: TermMiningConfig, workers: int, what: str,
                total: int | None, initializer: Any = None, initargs: tuple = ()) -> NgramTable:
    """One pass over the corpus: chunks counted by ``workers`` processes, merged in order, pruned to budget."""
    from tqdm import tqdm

    table = NgramTable()
    bar = tqdm(total=total, desc=f"mining terms: {what}", unit=" sent", unit_scale=True,
               disable=not config.progress, mininterval=1.0)
    results = ordered_map(task, chunked(sentences, config.chunk_sentences), workers, initializer=initializer,
                          initargs=initargs)
    try:
        for part in results:
            table.add(part)
            table.prune(config.max_ngrams)
            bar.update(part.sentences)
    finally:
        results.close()
        bar.close()
    return table


def _needed_for(candidates: frozenset[str]) -> frozenset[str]:
    """The candidates and every half of a cut of one (what cohesion reads)."""
    needed = set(candidates)
    for text in candidates:
        for k in range(1, len(text)):
            needed.add(text[:k])
            needed.add(text[k:])
    return frozenset(needed)


def mine_terms(sentences: Sequence[str] | Callable[[], Iterable[str]], config: TermMiningConfig | None = None,
               total: int | None = None) -> MiningResult:
    """Mine terms from ``sentences`` (cleaned text, one sentence each).

    Two passes over the corpus, each streamed (never all of it in memory): jieba's word n-grams first, which
    give the candidates; then only the character n-grams that scoring reads (the candidates, their halves and
    their neighbours), so the character counts stay exact and small where counting every n-gram would need
    pruning. With ``min_aligned`` 0 every character n-gram is a candidate and one pass counts everything.

    Args:
        sentences: the corpus: a sequence, or a function returning a fresh iterable at each call (a file reader).
        config: the settings (defaults: :class:`TermMiningConfig`).
        total: the number of sentences, when known, for the progress bars.
    """
    config = config or TermMiningConfig()
    config.validate()
    source = sentences if callable(sentences) else (lambda: sentences)
    started = time.perf_counter()
    workers = config.resolved_workers()
    global _NEEDED
    words = _count_pass(_WordTask(config.max_chars, config.max_words), source(), config, workers, "words", total,
                        initializer=_jieba)
    if config.min_aligned > 0:
        floor = config.min_aligned * config.min_count  # an aligned count below it cannot make a candidate
        candidates = frozenset(w for w, c in words.words.items() if c >= floor and _is_candidate(w, config.max_chars))
        try:
            table = _count_pass(_CharTask(config.max_chars), source(), config, workers, "characters", total,
                                initializer=_set_needed, initargs=(_needed_for(candidates), candidates))
        finally:
            _NEEDED = None  # a one-worker run set it in this process
    else:
        table = _count_pass(_CharTask(config.max_chars, all_ngrams=True), source(), config, workers, "characters",
                            total)
    table.words, table.prunings = words.words, table.prunings + words.prunings
    table.prune_below = max(table.prune_below, words.prune_below)
    if table.sentences == 0:
        raise BadInputError("term mining got no sentences: give a corpus with text (one sentence a line)")
    ranked = score_terms(table, config)
    kept = ranked[: config.max_terms] if config.max_terms else ranked
    stats = MiningStats(sentences=table.sentences, characters=table.positions, candidates=len(ranked),
                        terms=len(kept), char_ngrams=len(table.chars), word_ngrams=len(table.words),
                        prunings=table.prunings, pruned_below=table.prune_below, workers=workers,
                        seconds=round(time.perf_counter() - started, 3), config=asdict(config))
    logger.info("mined %d terms (of %d candidates) from %d sentences in %.1f s with %d workers", len(kept),
                len(ranked), table.sentences, stats.seconds, workers)
    return MiningResult(kept, stats)


def iter_sentence_files(paths: Sequence[str | Path]) -> Iterator[str]:
    """The cleaned, non-empty lines of one-sentence-a-line text files (``.gz`` allowed), file by file.

    Raises:
        BadInputError: a file is missing or not UTF-8 (naming the file, line and fix).
    """
    for path in map(Path, paths):
        if not path.is_file():
            raise BadInputError(f"{path}: no such file; give the sentence corpus (train.txt of launch/preprocess.py)")
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise BadInputError(f"{path}:{lineno}: invalid UTF-8 at byte {exc.start}; re-encode the file "
                                        "as UTF-8 (launch/preprocess.py writes it so)") from None
                text = clean_text(line)
                if text:
                    yield text


def count_lines(paths: Sequence[str | Path]) -> int | None:
    """Lines of the plain files (for the progress bar); ``None`` when one is compressed or missing."""
    paths = [Path(p) for p in paths]
    if any(path.suffix == ".gz" or not path.is_file() for path in paths):
        return None
    return sum(map(count_file_lines, paths))


def mine_terms_from_files(paths: Sequence[str | Path], config: TermMiningConfig | None = None) -> MiningResult:
    """:func:`mine_terms` over sentence files (see :func:`iter_sentence_files`)."""
    config = config or TermMiningConfig()
    return mine_terms(lambda: iter_sentence_files(paths), config,
                      total=count_lines(paths) if config.progress else None)


def write_terms(terms: Sequence[Term], path: str | Path) -> Path:
    """Write ``terms`` as a lexicon (``term count`` a line, :func:`~framework.data.lexicon.write_lexicon`'s
    format), so ``--lexicon`` and ``--extra-lexicon`` take it and it merges with keywords."""
    return write_lexicon({t.text: t.count for t in terms}, path)


def write_term_table(terms: Sequence[Term], path: str | Path) -> Path:
    """Write the ranked terms with their statistics as a TSV (rank, term, count, score, cohesion, specificity,
    entropies, alignment), for looking at what was mined and why."""
    path = Path(path)
    with atomic_text_file(path) as f:
        f.write("rank\tterm\tcount\tscore\tcohesion\tspecificity\tleft_entropy\tright_entropy\taligned\n")
        for rank, t in enumerate(terms, 1):
            f.write(f"{rank}\t{t.text}\t{t.count}\t{t.score:.4f}\t{t.cohesion:.4f}\t{t.specificity:.4f}\t"
                    f"{t.left_entropy:.4f}\t{t.right_entropy:.4f}\t{t.aligned:.3f}\n")
    return path
