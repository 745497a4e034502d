"""Property-based tests of the corpus pipeline's text handling: readers, cleaner, sentence splitter, segmenter.

Hypothesis feeds them arbitrary bytes, odd Unicode (lone surrogates, combining marks, full-width forms, emoji,
control and invisible characters, Unicode line separators) and broken rows. Nothing may raise, and every input
row is accounted for: ``rows in == papers kept + bad rows`` (an input without rows is one ``empty_file``).

Deterministic (``derandomize=True``: the same examples on every run) and bounded (``max_examples``), so the
module runs in well under a minute; a failure prints the smallest example hypothesis found.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="property tests need hypothesis (pip install -e .[dev])")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from framework.data.cleaning import clean_text, has_cjk  # noqa: E402
from framework.data.corpus import NoSentencesError, PreprocessConfig, _process_chunk, _Settings, preprocess  # noqa: E402
from framework.data.lexicon import normalize_keyword  # noqa: E402
from framework.data.readers import BAD_ROW_REASONS, BadInputError, FieldSpec, iter_chunks, parse_chunk  # noqa: E402
from framework.data.sentences import split_sentences  # noqa: E402

FUZZ = settings(derandomize=True, max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# The characters real and broken input brings: CSL's own punctuation and terminators, what cleaning rewrites or
# drops, and what tends to break text code (combining marks, surrogates, astral emoji, Unicode line breaks).
ODD = [
    "研", "究", "方", "法", "。", "！", "？", "；", ".", "．", "!", "?", ";", "…", "⋯", "（", "）", "(", ")", '"', "'",
    "“", "”", "「", "」", "%", "℃", "e.g.", "Fig.", "al.", "U.S.", "0.5", "1.", ";2.", ":1.", "Ａ", "ｚ", "０", "\u3000",
    "\u0301", "e\u0301", "\u200b", "\u200d", "\ufeff", "\u00ad", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029",
    "\t", "\r", "\n", " ", "  ", "😀", "👩\u200d🔬", "\U00020000", "\ud800", "\udfff", "\udc80", "_", "、", "|", ",",
    "，", "!!!", "......", "————", "Müller", "Rodrigues parameter",
]
odd_text = st.lists(st.one_of(st.sampled_from(ODD), st.text(max_size=4)), max_size=12).map("".join)
any_text = st.one_of(odd_text, st.text(alphabet=st.characters(exclude_categories=()), max_size=30))


def _encode(text: str) -> bytes:
    """UTF-8, lone surrogates included as the (invalid) bytes they would be: broken input to read."""
    return text.encode("utf-8", errors="surrogatepass")


field_bytes = st.one_of(any_text.map(_encode), st.binary(max_size=24), st.sampled_from([b"", b"\xff", b"\xe4\xb8", b"\r"]))


@st.composite
def tabbed_rows(draw: st.DrawFn, fields: int) -> bytes:
    """A line-format file body: rows of mostly ``fields`` tab-separated fields, some with more or fewer."""
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        n = draw(st.sampled_from([fields, fields, fields - 1, fields + 1, 1]))
        rows.append(b"\t".join(draw(field_bytes) for _ in range(max(n, 1))))
    sep = draw(st.sampled_from([b"\n", b"\r\n"]))
    return sep.join(rows) + draw(st.sampled_from([b"", sep, b"\n\n"]))


def _line_rows(data: bytes, header: bool = False) -> int:
    """Rows of a line-format file: lines (split at b"\\n", as binary files are) that are not blank."""
    lines = [line for line in data.split(b"\n") if line.strip(b" \r\x0b\x0c")]
    return len(lines) - (1 if header and lines else 0)


def _account(path: Path, fmt: str, fields: FieldSpec, rows: int) -> None:
    """Read, parse and process ``path`` as the pipeline's workers do; every row must be kept or counted."""
    settings_ = _Settings(min_chars=1, max_chars=128, seed=0)
    papers = bad = empty = 0
    for chunk in iter_chunks(path, fmt, fields, chunk_bytes=64):  # tiny chunks: many chunk boundaries too
        result = _process_chunk(settings_, chunk)  # parse, split, clean, filter, hash: nothing may raise
        assert all(r.reason in BAD_ROW_REASONS for r in result.bad_rows)
        empty += sum(r.reason == "empty_file" for r in result.bad_rows)
        bad += sum(r.reason != "empty_file" for r in result.bad_rows)
        papers += len(result.scores)
        assert len(result.counts) == len(result.scores) and sum(result.counts) == len(result.hashes)
        for line in (result.sentences.split("\n") if result.sentences else []):
            assert line and line == line.strip() and has_cjk(line) and len(line) <= 128
            line.encode("utf-8")  # what train.txt is written in: no lone surrogate may survive
        for keyword in result.keywords:
            keyword.encode("utf-8")
    assert papers + bad == rows
    assert empty == (1 if rows == 0 else 0)


@FUZZ
@given(body=tabbed_rows(5))
def test_csl_rows_are_kept_or_counted(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "papers.tsv"
    path.write_bytes(body)
    _account(path, "csl", FieldSpec(), _line_rows(body))


@FUZZ
@given(tasks=st.lists(st.sampled_from([b"to category", b"to discipline", b"to keywords", b"to title", b"to x", b""]),
                      min_size=1, max_size=6),
       body=tabbed_rows(2))
def test_csl_task_rows_are_kept_or_counted(tmp_path: Path, tasks: list[bytes], body: bytes) -> None:
    lines = body.split(b"\n")
    body = b"\n".join(tasks[i % len(tasks)] + b"\t" + line if line.strip() else line for i, line in enumerate(lines))
    path = tmp_path / "task.tsv"
    path.write_bytes(body)
    _account(path, "csl-task", FieldSpec(), _line_rows(body))


@FUZZ
@given(body=tabbed_rows(3))
def test_tsv_rows_are_kept_or_counted(tmp_path: Path, body: bytes) -> None:
    data = b"title\tabstract\tkeywords\n" + body
    path = tmp_path / "table.tsv"
    path.write_bytes(data)
    _account(path, "tsv", FieldSpec(), _line_rows(data, header=True))


json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), any_text)
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
                          max_leaves=6)
record = st.fixed_dictionaries({}, optional={"title": json_value, "abstract": json_value, "keywords": json_value,
                                             "discipline": json_value})


@st.composite
def json_lines(draw: st.DrawFn) -> bytes:
    """JSON lines: objects with odd or missing fields (ASCII-escaped or not), non-objects, broken lines."""
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["record", "record", "value", "broken"]))
        if kind == "broken":
            rows.append(draw(field_bytes).replace(b"\n", b""))
        else:
            value = draw(record if kind == "record" else json_value)
            rows.append(json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", errors="surrogatepass"))
    return b"\n".join(rows) + b"\n"


@FUZZ
@given(body=json_lines())
def test_json_lines_are_kept_or_counted(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "papers.jsonl"
    path.write_bytes(body)
    _account(path, "jsonl", FieldSpec(), _line_rows(body))


@FUZZ
@given(records=st.lists(st.one_of(record, json_value), max_size=6), ascii_only=st.booleans())
def test_json_array_elements_are_kept_or_counted(tmp_path: Path, records: list, ascii_only: bool) -> None:
    path = tmp_path / "papers.json"
    path.write_bytes(json.dumps(records, ensure_ascii=ascii_only, indent=1).encode("utf-8", errors="surrogatepass"))
    _account(path, "json", FieldSpec(), len(records))


@FUZZ
@given(cells=st.lists(st.lists(any_text, min_size=1, max_size=4), max_size=6), raw=st.binary(max_size=30))
def test_csv_rows_are_kept_or_counted(tmp_path: Path, cells: list[list[str]], raw: bytes) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["title", "abstract", "keywords"])
    writer.writerows(cells)
    data = _encode(text.getvalue()) + raw  # arbitrary bytes at the end: a broken last row
    path = tmp_path / "papers.csv"
    path.write_bytes(data)
    # Rows as the csv module splits them (quoted fields may span lines); blank lines are no rows.
    parsed = list(csv.reader(io.StringIO(data.decode("utf-8", errors="surrogateescape"), newline="")))
    rows = [r for r in parsed if r and not (len(r) == 1 and not r[0].strip())]
    _account(path, "csv", FieldSpec(), max(len(rows) - 1, 0))


@FUZZ
@given(text=any_text)
def test_cleaning_never_raises_and_leaves_clean_utf8(text: str) -> None:
    cleaned = clean_text(text)
    cleaned.encode("utf-8")  # no lone surrogate left: the corpus is written as UTF-8
    assert cleaned == cleaned.strip() and "  " not in cleaned
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in cleaned)
    assert not any(ch in cleaned for ch in "\u200b\u200c\u200d\ufeff\u00ad\u2028\u2029\u3000")
    assert clean_text(cleaned) == cleaned  # cleaning twice changes nothing
    normalize_keyword(text)


@FUZZ
@given(text=any_text)
def test_sentence_splitting_loses_and_invents_nothing(text: str) -> None:
    sentences = split_sentences(text)
    assert all(s and s == s.strip() for s in sentences)
    visible = "".join(ch for ch in text if not ch.isspace())
    assert "".join(ch for s in sentences for ch in s if not ch.isspace()) == visible


def test_whole_pipeline_on_fuzzed_input_writes_utf8_and_adds_up(tmp_path: Path) -> None:
    """A few fuzzed files end to end through preprocess(): it writes its outputs or refuses with a message."""
    @settings(derandomize=True, max_examples=25, deadline=None, database=None)
    @given(body=json_lines(), tsv=tabbed_rows(5))
    def run(body: bytes, tsv: bytes) -> None:
        (tmp_path / "a.jsonl").write_bytes(body)
        (tmp_path / "b.tsv").write_bytes(tsv)
        config = PreprocessConfig(output=tmp_path / "out", inputs=[tmp_path / "a.jsonl", tmp_path / "b.tsv"],
                                  workers=1, min_chars=1, progress=False, overwrite=True)
        try:
            result = preprocess(config)
        except NoSentencesError:
            return  # nothing usable: refused with a message, as documented
        except BadInputError as exc:
            # A documented file-level refusal (a header without the named fields): it names the file.
            assert str(exc).startswith(str(tmp_path)), exc
            return
        stats = result.stats
        assert stats["sentences_seen"] == stats["sentences_kept"] + sum(stats["drops"].values())
        for name in ("train.txt", "valid.txt", "keywords.txt"):
            (tmp_path / "out" / name).read_text(encoding="utf-8")

    run()


@pytest.fixture(scope="module")
def segmenter(tiny_tokenizer_dir: Path, csl_lexicon_file: Path):  # noqa: ANN201
    from framework.data.lexicon import load_lexicon
    from framework.data.segmented import load_fast_tokenizer
    from framework.data.segmenter import Segmenter

    lexicon = load_lexicon([csl_lexicon_file])
    lexicon.update({"Rodrigues parameter": 3, "研究": 5, "😀": 1, "e\u0301": 1})
    return Segmenter(load_fast_tokenizer(tiny_tokenizer_dir), lexicon)


@FUZZ
@given(texts=st.lists(any_text, min_size=1, max_size=5))
def test_segmenter_spans_partition_every_sentence(segmenter, texts: list[str]) -> None:  # noqa: ANN001
    # The segmenter reads train.txt: cleaned text, so what reaches it is what cleaning leaves.
    sentences = [clean_text(t) for t in texts]
    chunk = segmenter.segment_chunk(sentences)
    assert len(chunk) == len(sentences)
    for sentence in chunk.split():
        n = len(sentence.token_ids)
        spans = sentence.word_spans
        if n == 0:
            assert len(spans) == 0
            continue
        assert spans[0, 0] == 0 and spans[-1, 1] == n and (spans[1:, 0] == spans[:-1, 1]).all()
        assert (spans[:, 1] > spans[:, 0]).all()
        words = {tuple(w) for w in spans.tolist()}
        assert all(tuple(e) in words for e in sentence.entity_spans.tolist())
        assert ((0 <= sentence.entity_ids) & (sentence.entity_ids < len(segmenter.keywords))).all()


def test_segmented_build_reads_any_corpus_bytes_or_names_the_line(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    """A hand-made corpus of arbitrary bytes: built with one example per non-empty line, or refused naming the
    line (not UTF-8) or the file (no sentences). Few examples: each build loads a tokenizer and jieba."""
    from framework.data.segmented import build_segmented_dataset

    utf8 = odd_text.map(lambda t: "".join(ch for ch in t if not "\ud800" <= ch <= "\udfff").encode("utf-8"))
    # Mostly UTF-8 lines (the build must succeed on those); now and then a broken one.
    corpus_lines = st.lists(utf8, max_size=5) | st.lists(st.one_of(utf8, st.binary(max_size=12)), max_size=5)

    @settings(derandomize=True, max_examples=8, deadline=None, database=None)
    @given(lines=corpus_lines)
    def run(lines: list[bytes]) -> None:
        corpus = tmp_path / "train.txt"
        corpus.write_bytes(b"\n".join(lines) + b"\n")
        kept = [line.rstrip(b"\r") for line in corpus.read_bytes().split(b"\n")[:-1]]
        kept = [line for line in kept if line]
        try:
            dataset = build_segmented_dataset(corpus, tiny_tokenizer_dir, cache_dir=tmp_path / "cache", workers=1,
                                              progress=False)
        except BadInputError as exc:
            assert "not valid UTF-8" in str(exc) and str(corpus) in str(exc)
            return
        except ValueError as exc:
            assert "has no sentences" in str(exc) and not kept
            return
        assert len(dataset) == len(kept)
        for i in range(len(dataset)):
            example = dataset[i]
            assert example.input_ids[0] == dataset.vocab_info.cls_token_id and example.special_mask[-1]

    run()
