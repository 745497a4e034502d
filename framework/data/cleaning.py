"""Cleaning one sentence (or keyword) into the form the tokenizer and the lexicon see.

The rules, applied in this order (``docs/data.md`` has the rationale):

1. **Width normalisation** of full-width ASCII letters and digits (``Ａ``-``Ｚ``, ``ａ``-``ｚ``, ``０``-``９``)
   to half-width, and the ideographic space to a space. Chinese BERT's vocabulary holds the half-width forms of
   Latin letters and digits (its tokenizer does no NFKC), so ``ＤＮＡ`` would otherwise become rare tokens or
   ``[UNK]``. Chinese punctuation (``，。；：（）“”``) is kept as is: it is in the vocabulary and it is how the
   text was written. This is deliberately narrower than NFKC, which would also rewrite ``①``, ``㎡``, ``…``.
2. **Invisible characters dropped**: C0/C1 control characters (tab and line breaks become whitespace first),
   zero-width spaces and joiners, the byte-order mark, soft hyphens, and lone surrogates (no characters at all:
   what a broken JSON escape such as ``\ud800`` decodes to; they cannot be written as UTF-8).
3. **Whitespace removed**, except one space between two Latin-or-digit runs: Chinese needs no spaces, but
   ``Rodrigues parameter`` must not become ``Rodriguesparameter`` and ``1.2 mm`` must not become ``1.2mm``.
4. **Symbol runs collapsed**: three or more of the same symbol (``！！！``, ``......``, ``----``) become one;
   the doubled Chinese ellipsis and dash (``……``, ``——``) are the standard forms and collapse to two.

Everything is a ``str.translate`` or a precompiled regex: the pipeline runs this on millions of sentences.
"""

from __future__ import annotations

import re

__all__ = ["clean_text", "has_cjk", "CJK_CHAR_CLASS"]

# CJK Unified Ideographs, extension A, compatibility ideographs, extensions B-F (supplementary planes).
CJK_CHAR_CLASS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
_CJK_RE = re.compile(f"[{CJK_CHAR_CLASS}]")


def _build_translation() -> dict[int, int | None]:
    table: dict[int, int | None] = {}
    # Full-width digits and Latin letters -> ASCII.
    for fw_start, ascii_start, count in ((0xFF10, 0x30, 10), (0xFF21, 0x41, 26), (0xFF41, 0x61, 26)):
        for i in range(count):
            table[fw_start + i] = ascii_start + i
    # Whitespace variants -> a plain space, handled by the whitespace rule afterwards.
    for cp in (0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000):
        table[cp] = 0x20
    for cp in range(0x2000, 0x200B):  # en quad .. hair space
        table[cp] = 0x20
    # Control characters (other than the whitespace above) and invisible format characters -> dropped.
    for cp in list(range(0x00, 0x20)) + [0x7F] + list(range(0x80, 0xA0)):
        table.setdefault(cp, None)
    for cp in (0x00AD, 0x200B, 0x200C, 0x200D, 0x200E, 0x200F, 0x2060, 0xFEFF):
        table[cp] = None
    for cp in range(_SURROGATES[0], _SURROGATES[1] + 1):
        table[cp] = None
    return table


_SURROGATES = (0xD800, 0xDFFF)
_TRANSLATION = _build_translation()
# str.translate with a dict costs a lookup per character; most sentences need none of it, and a regex scan
# for "anything to translate" is several times cheaper than translating. The surrogates go in as one range.
_NEEDS_TRANSLATION_RE = re.compile(
    "["
    + "".join(re.escape(chr(cp)) for cp in sorted(_TRANSLATION) if not _SURROGATES[0] <= cp <= _SURROGATES[1])
    + f"{chr(_SURROGATES[0])}-{chr(_SURROGATES[1])}]"
)

# "Latin or digit" for the space rule: ASCII letters and digits plus the Latin-1/Latin Extended letters
# (accented author names, "Müller").
_LATIN_DIGIT = "0-9A-Za-z\u00c0-\u024f"
_SPACES_RE = re.compile(r" {2,}")
# A space survives only with a Latin/digit character on both sides.
_UNWANTED_SPACE_RE = re.compile(f"(?<![{_LATIN_DIGIT}]) | (?![{_LATIN_DIGIT}])")
# Three or more of the same character that is neither a word character nor a space.
_SYMBOL_RUN_RE = re.compile(r"([^\w\s])\1{2,}")
_DOUBLED_SYMBOLS = frozenset("…—")


def _collapse_run(match: re.Match[str]) -> str:
    symbol = match.group(1)
    return symbol * 2 if symbol in _DOUBLED_SYMBOLS else symbol


def clean_text(text: str) -> str:
    """Return ``text`` normalised for the tokenizer (see the module docstring for the rules).

    The result has no leading, trailing or doubled spaces; it may be empty.
    """
    if _NEEDS_TRANSLATION_RE.search(text):
        text = text.translate(_TRANSLATION)
    if " " in text:
        text = _SPACES_RE.sub(" ", text).strip()
        text = _UNWANTED_SPACE_RE.sub("", text)
    return _SYMBOL_RUN_RE.sub(_collapse_run, text)


def has_cjk(text: str) -> bool:
    """Whether ``text`` contains at least one CJK ideograph."""
    return _CJK_RE.search(text) is not None
