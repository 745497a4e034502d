"""The domain entity lexicon: paper keywords, normalised like the text, with their frequencies.

Written as a jieba user dictionary (``word freq`` a line) so ``jieba.load_userdict`` loads it, and read back,
merged with further lexicons, by :func:`load_lexicon` for the segmenter.

Keywords with spaces: after cleaning, a space survives only between two Latin/digit runs (``Rodrigues
parameter``). jieba's user-dictionary line pattern, ``^(.+?)( [0-9]+)?( [a-z]+)?$``, reads such a line
correctly as long as the frequency is written (the word is everything before the last number), so they are
kept: the segmenter matches entities on the cleaned text, where the same single space occurs. jieba's own
tokenizer never produces a word with a space, so for jieba they are inert rather than harmful. Keywords that
contain no letter, digit or CJK character (``--``) and empty ones are dropped and counted.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping

from framework.data.atomic import atomic_text_file
from framework.data.cleaning import clean_text

__all__ = ["normalize_keyword", "count_keywords", "write_lexicon", "load_lexicon", "LexiconError"]

_HAS_WORD_CHAR_RE = re.compile(r"[^\W_]")
# "word", "word freq" or "word freq tag", jieba's own user-dictionary grammar.
_ENTRY_RE = re.compile(r"^(.+?)(?: ([0-9]+))?(?: ([a-z]+))?$")


class LexiconError(ValueError):
    """A lexicon file that cannot be read; the message names file, line and fix."""


def normalize_keyword(keyword: str) -> str:
    """Clean a keyword like the corpus text; ``""`` when nothing usable is left (no letter, digit or CJK)."""
    text = clean_text(keyword)
    return text if _HAS_WORD_CHAR_RE.search(text) else ""


def count_keywords(keywords: Iterable[str], counter: Counter | None = None) -> tuple[Counter, int]:
    """Add the normalised ``keywords`` to ``counter`` (a new one by default).

    Returns the counter and how many keywords normalised to nothing and were dropped.
    """
    counter = counter if counter is not None else Counter()
    dropped = 0
    for keyword in keywords:
        word = normalize_keyword(keyword)
        if word:
            counter[word] += 1
        else:
            dropped += 1
    return counter, dropped


def write_lexicon(counter: Mapping[str, int], path: str | Path) -> Path:
    """Write ``counter`` as a jieba user dictionary, most frequent first (ties alphabetical), atomically.

    Every line is ``word freq``; the file loads with ``jieba.load_userdict`` and :func:`load_lexicon`.
    """
    path = Path(path)
    # Sorting the words (not (word, count) tuples) and streaming the lines keeps the peak memory of a
    # million-entry lexicon to a few list slots per word.
    words = sorted(word for word, count in counter.items() if word and count > 0)
    words.sort(key=counter.__getitem__, reverse=True)  # stable: ties stay alphabetical
    with atomic_text_file(path) as f:
        f.writelines(f"{word} {counter[word]}\n" for word in words)
    return path


def load_lexicon(paths: str | Path | Iterable[str | Path]) -> dict[str, int]:
    """Read and merge lexicon files into ``{word: frequency}``.

    Each file is a jieba user dictionary (``word``, ``word freq`` or ``word freq tag`` a line) or a plain
    word list (one word a line, frequency 1). Words are normalised with :func:`normalize_keyword` so they
    match the cleaned corpus; frequencies of the same word are summed across lines and files. Empty lines
    and lines starting with ``#`` are skipped.

    Raises:
        LexiconError: a file is missing or not UTF-8 (the message names file, line and fix).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    merged: Counter = Counter()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise LexiconError(f"{path}: no such lexicon file; check --extra-lexicon")
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    # Tabs are a common separator in word lists made by other tools.
                    line = raw.decode("utf-8").lstrip("\ufeff").replace("\t", " ").strip()
                except UnicodeDecodeError as exc:
                    raise LexiconError(
                        f"{path}:{lineno}: invalid UTF-8 at byte {exc.start}; re-encode the lexicon as UTF-8"
                    ) from None
                if not line or line.startswith("#"):
                    continue
                match = _ENTRY_RE.match(line)
                assert match is not None  # (.+?) accepts any non-empty line
                word, freq = normalize_keyword(match.group(1)), match.group(2)
                if word:
                    merged[word] += int(freq) if freq else 1
    return dict(merged)
