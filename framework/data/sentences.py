"""Splitting an abstract into sentences.

Chinese terminators (``。！？；``), their ASCII forms (``!?;``) and line breaks end a sentence, except a
semicolon inside brackets (``(男30例;女20例)``) and an ASCII ``?``/``!`` glued to a following letter, digit or
comma (``Bio?oss``: CSL has ``?`` where a character was lost in conversion). The full stop is the hard case: CSL abstracts are
typeset with the ASCII ``.`` (and FewCLUE's with the full-width ``．``) as the Chinese full stop, in the same
text as decimals (``0.05``), units (``312 m.``), abbreviations (``Fig.2``, ``et al.``, ``e.g.``), initials
(``U.S.``, ``И.比丘林``) and list markers (``;2.通过``). A dot ends a sentence when its context says so:

* never between two digits (``0.3%``, ``1．5``, also spaced: ``59 .02``) and never in a run of two or more
  dots (an ellipsis);
* after a Chinese character, a closing bracket or quote, ``%``, ``℃`` and the like: yes (``方法.仿真``);
* after a Latin word: only when the word is not an abbreviation (``al``, ``Fig``, ``vs``, ``var`` ...), not
  a dotted abbreviation (``e.g``, ``U.S``), not a single capital (an initial), and the next character starts
  a new sentence (a Chinese character, a capital letter, an opening quote or the end of the text);
* after a number: when a Chinese character follows (``8.建筑``), unless the number is a list marker
  (one or two digits right after a clause boundary: ``;2.通过``).

Closing quotes and brackets right after a terminator (``”’」』）)】`` ...) stay with their sentence; an ASCII
``"`` or ``'`` does only when it closes a quote opened in that sentence (an even count would make it an opener).

Only the terminator positions are examined (one regex scan, then a few character tests each), so splitting
costs little more than the scan.
"""

from __future__ import annotations

import re

from framework.data.cleaning import CJK_CHAR_CLASS

__all__ = ["split_sentences", "ABBREVIATIONS"]

_DOTS = ".．"
_TERMINATOR_RUN_RE = re.compile(r"[…⋯]*[。！？；!?;.．\n\r][。！？；!?;.．…⋯\n\r]*")
_CLOSERS = frozenset("”’」』）)】]》〉〕｝}")
_ASCII_QUOTES = frozenset("\"'")
_OPENERS = frozenset("“‘「『（(【[《〈〔｛{\"'")
_CJK_RE = re.compile(f"[{CJK_CHAR_CLASS}]")
# The word before a dot: letters, possibly with inner dots ("e.g", "U.S", "s.l").
_LETTER = "A-Za-z\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff"  # Latin, Greek, Cyrillic
_WORD_BEFORE_RE = re.compile(f"(?:[{_LETTER}]+\\.)*[{_LETTER}]+$")
_LIST_BOUNDARY = frozenset(",，;；：、。(（ \n")
# An ASCII "?" or "!" right before one of these is not a sentence end (garbled characters, "n!").
_NOT_AFTER_ASCII_MARK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789、，,")
_LOOKBACK = 24  # characters examined before a dot; longer than any abbreviation we test

# Abbreviations that end with a dot without ending the sentence, matched case-sensitively in the given
# and the capitalised form. Left out on purpose: words that are also chemical symbols ending a Chinese
# sentence ("含Ca.", "Co.", "Sr."), so "ca" (circa) is lower-case only.
_ABBREVIATION_WORDS = """al fig figs eq eqs ref refs tab tabs vs var subg subsp ssp sp spp cf approx no nos vol vols
    pp ed eds dr mr mrs ms prof st inc ltd corp dept univ jan feb mar apr jun jul aug sep sept oct nov dec""".split()
ABBREVIATIONS = frozenset(_ABBREVIATION_WORDS + [w.capitalize() for w in _ABBREVIATION_WORDS] + ["ca"])


def _is_cjk(ch: str) -> bool:
    return bool(ch) and _CJK_RE.match(ch) is not None


def _is_digit(ch: str) -> bool:
    return bool(ch) and ch.isdigit()


def _is_letter(ch: str) -> bool:
    return bool(ch) and ch.isalpha() and not _is_cjk(ch)


def _starts_sentence(text: str, pos: int) -> bool:
    """Whether the text from ``pos`` (just after a dot) looks like the start of a new sentence."""
    if pos >= len(text):
        return True
    ch = text[pos]
    if ch == " ":
        pos += 1
        ch = text[pos] if pos < len(text) else ""
        if not ch:
            return True
    return _is_cjk(ch) or ch in _OPENERS or (ch.isupper() and _is_letter(ch))


def _dot_ends_sentence(text: str, start: int, end: int) -> bool:
    """Decide for a run of one dot at ``text[start]`` (``end == start + 1``)."""
    prev = text[start - 1] if start > 0 else ""
    nxt = text[end] if end < len(text) else ""
    if not nxt:
        return True
    if _is_digit(prev) and _is_digit(nxt):
        return False  # decimal: 0.05, 1．5
    if prev == " " and _is_digit(nxt):
        return False  # a decimal typeset with a space, "(59 .02 ± 6 .01)%": never a sentence start
    if _is_letter(prev):
        window = text[max(0, start - _LOOKBACK) : start]
        match = _WORD_BEFORE_RE.search(window)
        word = match.group(0) if match else prev
        if "." in word or word in ABBREVIATIONS:
            return False  # e.g. / U.S. / et al. / Fig.
        if len(word) == 1 and word.isupper():
            return False  # an initial: "И.比丘林", "L.)"
        return _starts_sentence(text, end)
    if _is_digit(prev):
        if _is_cjk(nxt) and _is_list_marker(text, start):
            return False  # "；2.通过": the number of a list item, not the end of a sentence
        return _is_cjk(nxt) or (nxt == " " and _is_cjk(text[end + 1 : end + 2]))
    if prev in _OPENERS and prev not in _ASCII_QUOTES:
        return False  # "(.OH)": a dot right after an opening bracket is a symbol
    # After a Chinese character, a closing bracket or quote, %, ℃ ...: CSL's Chinese full stop.
    return True


def _is_list_marker(text: str, dot: int) -> bool:
    """Whether the one or two digits before ``text[dot]`` open a clause (start of text or after a boundary)."""
    i = dot
    while i > 0 and text[i - 1].isdigit() and dot - i < 3:
        i -= 1
    if not 1 <= dot - i <= 2:
        return False
    if i == 0 or text[i - 1] in _LIST_BOUNDARY:
        return True
    # "包括:1.方法" is a list, "之比为1:4.国内" a ratio that ends a sentence.
    return text[i - 1] == ":" and not (i >= 2 and text[i - 2].isdigit())


def _inside_brackets(sentence: str) -> bool:
    return sentence.count("(") + sentence.count("（") > sentence.count(")") + sentence.count("）")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences, stripped of surrounding whitespace, empty ones dropped.

    Terminators and the closing quotes/brackets right after them stay with their sentence. The pieces are not
    otherwise cleaned (see :func:`framework.data.cleaning.clean_text`).
    """
    sentences: list[str] = []
    begin = 0
    n = len(text)
    for match in _TERMINATOR_RUN_RE.finditer(text):
        start, end = match.span()
        marks = match.group(0).replace("…", "").replace("⋯", "")
        if all(ch in _DOTS for ch in marks):
            if len(marks) > 1:
                if end < n:
                    continue  # an ellipsis written as dots, mid-text
            elif not _dot_ends_sentence(text, end - 1, end):
                continue
        elif all(ch in ";；" for ch in marks) and _inside_brackets(text[begin:start]):
            continue  # "(男30例;女20例)"
        elif marks in ("?", "!") and end < n and text[end] in _NOT_AFTER_ASCII_MARK:
            continue  # "Bio?oss", "mg?g-1": a "?" standing in for a lost character, not a question
        # Keep closing quotes and brackets with the sentence they close.
        while end < n:
            ch = text[end]
            if ch in _CLOSERS:
                end += 1
            elif ch in _ASCII_QUOTES and text.count(ch, begin, end) % 2 == 1:
                end += 1
            else:
                break
        piece = text[begin:end].strip()
        if piece:
            sentences.append(piece)
        begin = end
    tail = text[begin:].strip()
    if tail:
        sentences.append(tail)
    return sentences
