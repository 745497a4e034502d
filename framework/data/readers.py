"""Reading papers from the input formats the corpus pipeline accepts.

Formats (``docs/data.md`` has examples):

``csl``
    The full CSL release: one paper a line, no header, five tab-separated fields: title, abstract, keywords
    joined by ``_``, discipline, category.
``csl-task``
    The CSL benchmark task files: ``to category<TAB>title<TAB>category``, ``to discipline<TAB>abstract<TAB>
    discipline``, ``to keywords<TAB>abstract + ' ' + title<TAB>keywords joined by _``, ``to title<TAB>abstract
    <TAB>title``.
``jsonl``
    One JSON object a line with named fields (by default CSL's ``title``, ``abstract``, ``keywords``,
    ``discipline``, ``category``; FewCLUE's ``.json`` files are JSON lines too).
``json``
    One JSON array of such objects (loaded whole: use JSON lines for large corpora).
``tsv`` / ``csv``
    A table with a header row naming the fields.

For every format but ``csl`` and ``csl-task`` the user names the text fields (``text_fields``) and the
keywords field (``keywords_field``): a field called ``title`` becomes the paper's title (one sentence), the
others are joined, one a line, into its abstract. A keywords value is a JSON list or a string separated by
``_``, ``;``, ``；``, ``、`` or ``|``. Files ending in ``.gz`` are decompressed on the fly; a compressed stream that
is truncated or corrupt keeps the rows read before the damage and counts the damage as a bad row
(``corrupt_gzip``).

A blank line (nothing but spaces and line breaks) separates rows and is not one; any other line is a row, so a
line of only tabs (or a CSV line of only commas) is read, found empty and counted, never dropped unseen.

Reading is split in two so the pipeline can parallelise it: :func:`iter_chunks` does the cheap part in the
parent process (reading raw lines, grouping them into chunks that remember file and line), and
:func:`parse_chunk` the rest (decoding, field checks) in a worker. :func:`read_papers` chains the two for
callers that just want papers. A row that cannot be read is a :class:`BadRow`; the caller decides whether
it stops the run (:class:`BadInputError`) or is skipped and counted (:class:`BadRowLog`).
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import json
import logging
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Literal

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "BAD_ROW_REASONS",
    "Paper",
    "FieldSpec",
    "BadRow",
    "BadInputError",
    "BadRowLog",
    "BadRowRecord",
    "Chunk",
    "detect_format",
    "iter_chunks",
    "parse_chunk",
    "read_papers",
    "open_binary",
    "FileProblem",
]

FORMATS = ("csl", "csl-task", "jsonl", "json", "tsv", "csv")
Format = Literal["csl", "csl-task", "jsonl", "json", "tsv", "csv"]
OnBadRow = Literal["skip", "error"]

BAD_ROW_REASONS = (
    "invalid_utf8", "field_count", "missing_field", "empty_keywords", "invalid_json", "unknown_task", "empty_file",
    "corrupt_gzip", "invalid_csv",
)

CSL_TASKS = ("to category", "to discipline", "to keywords", "to title")
_KEYWORD_SEPARATORS_RE = re.compile(r"[_;；、|]")
_CSL_KEYWORD_SEPARATOR_RE = re.compile("_")
_SURROGATE_RE = re.compile("[\udc80-\udcff]")
# Any lone surrogate: what a JSON escape such as "\ud800" decodes to. It is no character, cannot be written as
# UTF-8, and would stop the run where the text is hashed or written.
_ANY_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# Whitespace bytes that make a line blank. The tab is left out on purpose: a line of tabs is a row of empty
# fields, which is counted (missing_field, field_count), not a separator to skip silently.
_BLANK_BYTES = b" \r\n\x0b\x0c"
# What reading a damaged .gz raises: a truncated stream (EOFError), a bad header or CRC (BadGzipFile), corrupt
# deflate data (zlib.error). Other OSErrors (a failing disk) are not the file's content and still propagate.
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
_GZIP_FIX = "re-download or re-compress the file (`gzip -t FILE` tests it); the rows before this line were read"
# Where a CSL keyword-generation row joins abstract and title: the last space after a sentence end.
_KG_JOIN_RE = re.compile(r"^(.*[.。!?！？．…])\s+(\S.*)$", re.S)
_KG_FALLBACK_JOIN_RE = re.compile(r"^(.*[^\sA-Za-z0-9])\s+(\S.*)$", re.S)

_UTF8_FIX = "re-encode the file as UTF-8 (e.g. `iconv -f GB18030 -t UTF-8 in > out`) or fix that row"


@dataclass(frozen=True, slots=True)
class Paper:
    """One paper (or one record of a text corpus) as read from an input file.

    ``title`` is treated as one sentence; ``abstract`` is split into sentences. Either may be empty (a
    title-only benchmark row has no abstract). ``paper_id`` is ``<file name>:<line>``, unique within a run.
    """

    title: str
    abstract: str
    keywords: tuple[str, ...]
    discipline: str
    category: str
    source: str
    line: int
    paper_id: str


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """Which fields of a named-field record (JSON, TSV with header, CSV) hold the text and the keywords.

    The default is CSL's own names. ``keywords_field=None`` means the records carry no keywords (then an
    empty keyword list is not an error).
    """

    text_fields: tuple[str, ...] = ("title", "abstract")
    keywords_field: str | None = "keywords"

    @classmethod
    def resolve(cls, text_fields: Iterable[str] | None, keywords_field: str | None) -> "FieldSpec":
        """The spec for user options: CSL defaults where nothing is given.

        Giving ``text_fields`` without ``keywords_field`` means "no keywords" rather than CSL's ``keywords``,
        which a foreign corpus would rarely have. ``keywords_field=""`` also means no keywords.
        """
        if text_fields is None:
            return cls(keywords_field="keywords" if keywords_field is None else keywords_field or None)
        fields = tuple(f.strip() for f in text_fields if f.strip())
        if not fields:
            raise ValueError("text_fields is empty: name at least one field, e.g. --text-fields title,abstract")
        return cls(text_fields=fields, keywords_field=keywords_field or None)


class BadRow(Exception):
    """A row that cannot be turned into a paper: ``reason`` (one of :data:`BAD_ROW_REASONS`), what is wrong
    with it, and how to fix it."""

    def __init__(self, reason: str, problem: str, fix: str) -> None:
        super().__init__(reason, problem, fix)
        self.reason = reason
        self.problem = problem
        self.fix = fix


class BadInputError(ValueError):
    """The input cannot be used as given; the message names the file, the line and the fix."""


@dataclass(frozen=True, slots=True)
class BadRowRecord:
    """A skipped row: where it was and why."""

    reason: str
    source: str
    line: int
    problem: str
    fix: str

    def message(self) -> str:
        """``file:line: problem; fix`` (line 0 means the whole file)."""
        where = f"{self.source}:{self.line}" if self.line else self.source
        return f"{where}: {self.problem}; to fix: {self.fix}"


@dataclass
class BadRowLog:
    """Counts bad rows by reason, logs the first ``log_first`` of them, or raises on the first one.

    With ``on_bad_row="error"`` :meth:`add` raises :class:`BadInputError`; with ``"skip"`` it counts.
    """

    on_bad_row: OnBadRow = "skip"
    log_first: int = 5
    counts: Counter = field(default_factory=Counter)

    def add(self, record: BadRowRecord) -> None:
        """Record (or, in error mode, raise on) one bad row."""
        if self.on_bad_row == "error":
            raise BadInputError(record.message() + " (or pass --on-bad-row skip to skip such rows)")
        self.counts[record.reason] += 1
        total = sum(self.counts.values())
        if total <= self.log_first:
            logger.warning("skipping bad row: %s", record.message())
            if total == self.log_first:
                logger.warning("further bad rows are counted in stats.json but not logged")

    @property
    def total(self) -> int:
        """How many rows were skipped."""
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive raw rows of one file, ready for :func:`parse_chunk` in any process.

    ``rows`` holds ``(line number, payload)``: raw ``bytes`` lines for the line formats, already-split
    records (a ``dict``) for ``json``/``csv``, a :class:`FileProblem` for a file-level problem found while
    reading (an empty file, a damaged ``.gz``).
    """

    source: str
    fmt: str
    fields: FieldSpec
    header: tuple[str, ...] | None
    rows: list[tuple[int, Any]]
    nbytes: int


@dataclass(frozen=True, slots=True)
class FileProblem:
    """A problem of the file rather than of one row (no rows at all, a damaged compressed stream), carried in a
    chunk to :func:`parse_chunk` so it is counted like a bad row."""

    reason: str
    problem: str
    fix: str


# --------------------------------------------------------------------------------------------- opening files


def open_binary(path: str | Path) -> BinaryIO:
    """Open ``path`` for reading bytes, decompressing ``.gz`` files transparently."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]  # GzipFile is a binary file object
    return open(path, "rb")


def count_file_lines(path: str | Path) -> int:
    """Newlines in a plain file, read in 1 MB blocks (for progress bars' totals)."""
    with open(path, "rb") as f:
        return sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))


def _is_blank(raw: bytes) -> bool:
    """Whether a raw line is a separator (only spaces and line breaks) rather than a row."""
    return not raw.strip(_BLANK_BYTES)


def _first_line(path: Path) -> str | None:
    """The first non-blank line, ``""`` for a file without one, ``None`` when a damaged ``.gz`` gives none."""
    try:
        with open_binary(path) as f:
            for raw in f:
                if not _is_blank(raw):
                    return raw.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    except _GZIP_ERRORS:
        return None  # iter_chunks meets the damage again and counts it with its line
    return ""


def _check_is_file(path: Path) -> None:
    """Raise :class:`BadInputError` for a missing input or a folder given as one, saying what to give instead."""
    if path.is_dir():
        raise BadInputError(f"{path} is a directory, not an input file; give the files in it (e.g. --input "
                            f"{path}/*.jsonl) or one file")
    if not path.is_file():
        raise BadInputError(f"{path}: no such file; check the --input path")


def _format_from_extension(ext: str) -> Format:
    """The format a file without a readable first line is read as: it has no rows, so only its name is left."""
    return {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(ext, "tsv")  # type: ignore[return-value]


def detect_format(path: str | Path, text_fields: Iterable[str] | None = None) -> Format:
    """Guess the format of ``path`` from its extension (``.gz`` ignored) and its first non-empty line.

    ``.jsonl``/``.ndjson`` files and ``.json`` files whose first line is a complete object are JSON lines, other
    ``.json`` files a JSON array; ``.csv`` is CSV; a tab-separated first line starting with a CSL task name
    (``to keywords``...) is ``csl-task``, one whose fields include all the given ``text_fields`` is a ``tsv``
    header, one with five fields the ``csl`` release. A file without a row (empty, or a ``.gz`` damaged before
    its first line) is read by its extension: it yields only its ``empty_file`` or ``corrupt_gzip`` count.
    Raises :class:`BadInputError` when nothing fits.
    """
    path = Path(path)
    _check_is_file(path)
    name = path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name
    ext = Path(name).suffix.lower()
    if ext == ".csv":
        return "csv"
    first = _first_line(path)
    if not first:
        return _format_from_extension(ext)
    stripped = first.lstrip()
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"  # whatever the first line holds: a line that is no object is that row's problem
    if ext == ".json" or stripped[:1] in ("{", "["):
        if stripped.startswith("["):
            return "json"
        try:
            return "jsonl" if isinstance(json.loads(first), dict) else "json"
        except json.JSONDecodeError:
            return "json" if ext == ".json" else "jsonl"
    if "\t" in first:
        cells = first.split("\t")
        if cells[0] in CSL_TASKS:
            return "csl-task"
        wanted = set(text_fields or ())
        if wanted and wanted <= set(cells):
            return "tsv"
        if len(cells) == 5:
            return "csl"
        return "tsv"
    raise BadInputError(
        f"{path}: cannot tell the format from the extension {ext or '(none)'} and the first line "
        f"{first[:60]!r}; pass --format with one of {', '.join(FORMATS)}"
    )


# --------------------------------------------------------------------------------------------- chunking


def iter_chunks(
    path: str | Path,
    fmt: Format,
    fields: FieldSpec,
    chunk_bytes: int = 1 << 20,
) -> Iterator[Chunk]:
    """Read ``path`` into chunks of about ``chunk_bytes`` raw bytes each, cheaply (no decoding for the line
    formats). An empty file yields one chunk carrying an ``empty_file`` problem, a damaged ``.gz`` the rows
    before the damage and then a ``corrupt_gzip`` problem; a missing file or a folder raises."""
    path = Path(path)
    source = str(path)
    _check_is_file(path)
    if fmt in ("csl", "csl-task", "jsonl", "tsv"):
        yield from _line_chunks(path, source, fmt, fields, chunk_bytes)
    elif fmt == "csv":
        yield from _csv_chunks(path, source, fields, chunk_bytes)
    elif fmt == "json":
        yield from _json_chunks(path, source, fields, chunk_bytes)
    else:
        raise BadInputError(f"{source}: unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


_EMPTY_FILE = FileProblem("empty_file", "the file holds no rows", "give a file with data or drop it from --input")


def _empty_file_chunk(source: str, fmt: str, fields: FieldSpec, nbytes: int) -> Chunk:
    return Chunk(source, fmt, fields, None, [(0, _EMPTY_FILE)], nbytes)


def _gzip_problem(exc: BaseException) -> FileProblem:
    return FileProblem("corrupt_gzip", f"the compressed stream is truncated or corrupt here "
                       f"({type(exc).__name__}: {exc})", _GZIP_FIX)


def _line_chunks(path: Path, source: str, fmt: str, fields: FieldSpec, chunk_bytes: int) -> Iterator[Chunk]:
    header: tuple[str, ...] | None = None
    rows: list[tuple[int, Any]] = []
    size = 0
    seen_row = False
    lineno = 0
    with open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                size += len(raw)
                if _is_blank(raw):
                    continue
                if fmt == "tsv" and header is None:
                    header = tuple(raw.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n").split("\t"))
                    _check_header(source, header, fields)
                    continue
                rows.append((lineno, raw))
                seen_row = True
                if size >= chunk_bytes:
                    yield Chunk(source, fmt, fields, header, rows, size)
                    rows, size = [], 0
        except _GZIP_ERRORS as exc:
            # Keep what was read; the damage counts as one bad row at the line that could not be read.
            rows.append((lineno + 1, _gzip_problem(exc)))
            seen_row = True
    if rows or size:
        yield Chunk(source, fmt, fields, header, rows, size)
    if not seen_row:
        yield _empty_file_chunk(source, fmt, fields, 0)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to a mistyped ``name``, else ``""``."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _missing_fields_message(missing: list[str], present: Iterable[str]) -> str:
    present = list(present)
    return "[" + ", ".join(f"{name!r}{did_you_mean(name, present)}" for name in missing) + "]"


def _check_header(source: str, header: tuple[str, ...], fields: FieldSpec) -> None:
    wanted = list(fields.text_fields) + ([fields.keywords_field] if fields.keywords_field else [])
    missing = [name for name in wanted if name not in header]
    if missing:
        raise BadInputError(
            f"{source}:1: the header {list(header)} lacks the field(s) {_missing_fields_message(missing, header)}; "
            "name existing columns with --text-fields/--keywords-field (tsv/csv files need a header row)"
        )


CSL_FIELDS = ("title", "abstract", "keywords", "discipline", "category")
"""The fixed fields of a ``csl`` release row, in order."""


def check_fields(path: str | Path, fmt: str, text_fields: Iterable[str] | None, keywords_field: str | None) -> None:
    """Before anything is read or written: the field names the user gave exist in ``path``'s header (tsv, csv),
    first record (jsonl) or fixed layout (csl). A mistyped name would otherwise be ignored (csl) or turn every
    row into a skipped bad row; the error names the fields there are and the closest one.

    Only names the user gave are checked (``None`` and ``""`` are not); a JSON array is not opened here.

    Raises:
        BadInputError: naming the file, the unknown field and the fields there are.
    """
    given = [f.strip() for f in text_fields or () if f.strip()] + ([keywords_field] if keywords_field else [])
    if not given:
        return
    path = Path(path)
    if fmt in ("csl", "csl-task"):
        layout = CSL_FIELDS if fmt == "csl" else ("title", "abstract", "keywords")
        unknown = [name for name in given if name not in layout]
        if unknown:
            raise BadInputError(
                f"{path}: a {fmt} file (no header; fields {', '.join(layout)}) has no field "
                f"{_missing_fields_message(unknown, layout)}; fix the name, or drop --text-fields/--keywords-field "
                "(this layout's text fields are fixed)")
        return
    if fmt in ("tsv", "csv"):
        first = _first_line(path)
        if not first:
            return  # an empty file: counted as such when read
        if fmt == "tsv":
            header = tuple(first.lstrip("\ufeff").rstrip("\r\n").split("\t"))
        else:
            header = tuple(c.lstrip("\ufeff") for c in next(csv.reader([first]), []))
        _check_header(str(path), header, FieldSpec.resolve(text_fields, keywords_field))
        return
    if fmt == "jsonl":
        first = _first_line(path)
        try:
            record = json.loads(first) if first else None
        except json.JSONDecodeError:
            return  # that row's own problem, reported with its line when read
        if isinstance(record, dict):
            missing = [name for name in given if name not in record]
            if missing:
                raise BadInputError(
                    f"{path}:1: the first record has no field {_missing_fields_message(missing, record)} (its fields: "
                    f"{', '.join(record)}); name existing fields with --text-fields/--keywords-field")


def _csv_chunks(path: Path, source: str, fields: FieldSpec, chunk_bytes: int) -> Iterator[Chunk]:
    with open_binary(path) as fb:
        # surrogateescape keeps undecodable bytes visible so the row, not the file, is reported.
        text = io.TextIOWrapper(fb, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(text)
        header: tuple[str, ...] | None = None
        rows: list[tuple[int, Any]] = []
        reported = 0  # bytes already attributed to a chunk (the binary position, read-ahead included)
        seen_row = False
        try:
            for cells in _csv_records(reader):
                if isinstance(cells, FileProblem):  # a record the csv module cannot parse: counted, reading goes on
                    rows.append((reader.line_num, cells))
                    seen_row = True
                    continue
                if not cells or (len(cells) == 1 and not cells[0].strip()):
                    continue  # a blank line; a line of only commas is a row of empty fields, counted below
                if header is None:
                    header = tuple(c.lstrip("\ufeff") for c in cells)
                    _check_header(source, header, fields)
                    continue
                rows.append((reader.line_num, cells))
                seen_row = True
                if fb.tell() - reported >= chunk_bytes:
                    yield Chunk(source, "csv", fields, header, rows, fb.tell() - reported)
                    rows, reported = [], fb.tell()
        except _GZIP_ERRORS as exc:
            rows.append((reader.line_num + 1, _gzip_problem(exc)))
            seen_row = True
        total = fb.tell()
        if rows or total > reported:
            yield Chunk(source, "csv", fields, header, rows, total - reported)
        if not seen_row:
            yield _empty_file_chunk(source, "csv", fields, 0)


def _csv_records(reader: Any) -> Iterator[list[str] | FileProblem]:
    """``reader``'s records, with an ``invalid_csv`` problem in place of one it raises ``csv.Error`` on (a field
    over ``csv.field_size_limit()``); the reader resumes at the next line, so the rows after it are kept."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield FileProblem("invalid_csv", f"the CSV record cannot be read ({exc})",
                              "fix the quoting of that row, or split a field longer than the limit")


def _json_chunks(path: Path, source: str, fields: FieldSpec, chunk_bytes: int) -> Iterator[Chunk]:
    blocks: list[bytes] = []
    with open_binary(path) as f:
        try:
            for block in iter(lambda: f.read(1 << 20), b""):
                blocks.append(block)
        except _GZIP_ERRORS as exc:
            # One JSON array cannot be cut short and still parse: refuse the file, saying where it broke.
            line = b"".join(blocks).count(b"\n") + 1
            raise BadInputError(
                f"{source}:{line}: the compressed stream is truncated or corrupt ({type(exc).__name__}: {exc}); "
                "re-download or re-compress the file (`gzip -t FILE` tests it)"
            ) from None
    data = b"".join(blocks)
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    if not text.strip():
        yield _empty_file_chunk(source, "json", fields, len(data))
        return
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(
            f"{source}:{exc.lineno}: not valid JSON ({exc.msg}); fix the file, or pass --format jsonl if it "
            "holds one object a line"
        ) from exc
    except (RecursionError, ValueError) as exc:
        raise BadInputError(f"{source}: JSON that cannot be loaded ({type(exc).__name__}: {str(exc)[:80]}); fix the "
                            "file (nesting or a number beyond Python's limits)") from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise BadInputError(f"{source}: a JSON file must hold an array of objects, not {type(records).__name__}")
    if not records:
        yield _empty_file_chunk(source, "json", fields, len(data))
        return
    # Arrays carry no line numbers: rows are numbered by element (1-based). The file's bytes are shared
    # out over the chunks in proportion to their elements.
    n = len(records)
    step = max(1, chunk_bytes * n // max(1, len(data)))
    for i in range(0, n, step):
        part = records[i : i + step]
        nbytes = len(data) * (i + len(part)) // n - len(data) * i // n
        yield Chunk(source, "json", fields, None, [(i + j + 1, r) for j, r in enumerate(part)], nbytes)


# --------------------------------------------------------------------------------------------- parsing


def parse_chunk(chunk: Chunk) -> tuple[list[Paper], list[BadRowRecord]]:
    """Turn a chunk's rows into papers; rows that cannot be read come back as :class:`BadRowRecord`."""
    papers: list[Paper] = []
    bad: list[BadRowRecord] = []
    name = Path(chunk.source).name
    for lineno, payload in chunk.rows:
        try:
            if isinstance(payload, FileProblem):
                raise BadRow(payload.reason, payload.problem, payload.fix)
            papers.append(_parse_row(chunk, name, lineno, payload))
        except BadRow as exc:
            bad.append(BadRowRecord(exc.reason, chunk.source, lineno, exc.problem, exc.fix))
    return papers, bad


def _decode(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRow("invalid_utf8", f"invalid UTF-8 at byte {exc.start} of the line", _UTF8_FIX) from None
    return text.lstrip("\ufeff").rstrip("\r\n")


def _split_keywords(value: str, separators: re.Pattern[str] = _KEYWORD_SEPARATORS_RE) -> tuple[str, ...]:
    return tuple(k for k in (part.strip() for part in separators.split(value)) if k)


def _parse_row(chunk: Chunk, name: str, lineno: int, payload: Any) -> Paper:
    fmt = chunk.fmt
    if fmt == "csl":
        return _parse_csl(_decode(payload), chunk.source, name, lineno)
    if fmt == "csl-task":
        return _parse_csl_task(_decode(payload), chunk.source, name, lineno)
    if fmt == "jsonl":
        text = _decode(payload)
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadRow(
                "invalid_json", f"not a JSON object ({exc.msg} at column {exc.colno})",
                "fix the row, or pass --format if the file is not JSON lines",
            ) from None
        except (RecursionError, ValueError) as exc:
            # Valid JSON that Python refuses: nesting deeper than the recursion limit, an integer of more
            # than sys.get_int_max_str_digits() digits.
            raise BadRow("invalid_json", f"JSON that cannot be loaded ({type(exc).__name__}: {str(exc)[:80]})",
                         "fix the row: no paper has such nesting or numbers") from None
        return _from_record(record, chunk, name, lineno)
    if fmt == "tsv":
        cells = _decode(payload).split("\t")
        assert chunk.header is not None
        if len(cells) != len(chunk.header):
            raise BadRow(
                "field_count", f"{len(cells)} tab-separated fields where the header has {len(chunk.header)}",
                "remove stray tabs inside fields or fill the missing ones",
            )
        return _from_record(dict(zip(chunk.header, cells)), chunk, name, lineno)
    if fmt == "csv":
        assert chunk.header is not None
        if len(payload) != len(chunk.header):
            raise BadRow(
                "field_count", f"{len(payload)} fields where the header has {len(chunk.header)}",
                "quote fields that contain commas",
            )
        return _from_record(dict(zip(chunk.header, payload)), chunk, name, lineno)
    return _from_record(payload, chunk, name, lineno)  # json


def _parse_csl(line: str, source: str, name: str, lineno: int) -> Paper:
    cells = line.split("\t")
    if len(cells) != 5:
        raise BadRow(
            "field_count",
            f"{len(cells)} tab-separated fields, the CSL layout has 5 "
            "(title, abstract, keywords, discipline, category)",
            "remove tabs inside fields, or pass --format/--text-fields if this is another layout",
        )
    title, abstract, keywords, discipline, category = (c.strip() for c in cells)
    if not title and not abstract:
        raise BadRow("missing_field", "both title and abstract are empty", "fill them in or delete the row")
    kws = _split_keywords(keywords, _CSL_KEYWORD_SEPARATOR_RE)
    if not kws:
        raise BadRow("empty_keywords", "the keywords field (3rd) is empty", "add the paper's keywords joined by _")
    return Paper(title, abstract, kws, discipline, category, source, lineno, f"{name}:{lineno}")


def _parse_csl_task(line: str, source: str, name: str, lineno: int) -> Paper:
    cells = line.split("\t")
    if len(cells) != 3:
        raise BadRow(
            "field_count", f"{len(cells)} tab-separated fields, a CSL task row has 3 (task, input, target)",
            "remove tabs inside fields",
        )
    task, text, target = (c.strip() for c in cells)
    title = abstract = discipline = category = ""
    keywords: tuple[str, ...] = ()
    if task == "to category":
        title, category = text, target
    elif task == "to discipline":
        abstract, discipline = text, target
    elif task == "to title":
        abstract, title = text, target
    elif task == "to keywords":
        # The input is abstract + " " + title; titles may contain spaces, so cut at the last space that
        # follows a sentence end, else at the last one after a non-Latin character.
        match = _KG_JOIN_RE.match(text) or _KG_FALLBACK_JOIN_RE.match(text)
        abstract, title = (match.group(1), match.group(2)) if match else (text, "")
        keywords = _split_keywords(target, _CSL_KEYWORD_SEPARATOR_RE)
        if not keywords:
            raise BadRow("empty_keywords", "the keywords field (3rd) is empty", "add the keywords joined by _")
    else:
        raise BadRow(
            "unknown_task", f"unknown task {task!r}", f"CSL task rows start with one of {', '.join(CSL_TASKS)}"
        )
    if not text:
        raise BadRow("missing_field", "the input text (2nd field) is empty", "fill it in or delete the row")
    return Paper(title, abstract, keywords, discipline, category, source, lineno, f"{name}:{lineno}")


def _field_text(record: dict, key: str) -> str:
    value = record[key]
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    return str(value)


def _from_record(record: Any, chunk: Chunk, name: str, lineno: int) -> Paper:
    fields = chunk.fields
    if not isinstance(record, dict):
        raise BadRow("invalid_json", f"expected an object with named fields, got {type(record).__name__}",
                     "give one JSON object per row")
    missing = [f for f in fields.text_fields if f not in record]
    if missing:
        raise BadRow(
            "missing_field", f"no field {missing[0]!r} (the row has {sorted(record)[:8]})",
            "add the field, or name the right ones with --text-fields/--keywords-field",
        )
    title = ""
    parts: list[str] = []
    for key in fields.text_fields:
        text = _field_text(record, key).strip()
        if key == "title":
            title = text
        elif text:
            parts.append(text)
    abstract = "\n".join(parts)
    if not title and not abstract:
        raise BadRow("missing_field", f"the text field(s) {list(fields.text_fields)} are all empty",
                     "fill them in or delete the row")
    keywords: tuple[str, ...] = ()
    if fields.keywords_field:
        if fields.keywords_field not in record:
            raise BadRow("missing_field", f"no keywords field {fields.keywords_field!r}",
                         "add it, or pass --keywords-field '' for a corpus without keywords")
        value = record[fields.keywords_field]
        if isinstance(value, list):
            keywords = tuple(k for k in (str(v).strip() for v in value if v is not None) if k)
        elif value is not None:
            keywords = _split_keywords(str(value))
        if not keywords:
            raise BadRow("empty_keywords", f"the keywords field {fields.keywords_field!r} is empty",
                         "add the keywords, or pass --keywords-field '' for a corpus without keywords")
    paper = Paper(
        title, abstract, keywords, str(record.get("discipline") or ""), str(record.get("category") or ""),
        chunk.source, lineno, f"{name}:{lineno}",
    )
    text = title + abstract + "".join(keywords)
    if chunk.fmt in ("json", "csv") and _SURROGATE_RE.search(text):
        raise BadRow("invalid_utf8", "invalid UTF-8 in the row", _UTF8_FIX)
    found = _ANY_SURROGATE_RE.search(text)
    if found:
        raise BadRow("invalid_utf8", f"a lone surrogate \\u{ord(found.group(0)):04x} (a broken JSON escape) in the row",
                     "fix the escape: a character outside the BMP is written as a surrogate pair or as itself")
    return paper


# --------------------------------------------------------------------------------------------- convenience


def read_papers(
    path: str | Path,
    fmt: Format | None = None,
    text_fields: Iterable[str] | None = None,
    keywords_field: str | None = None,
    bad_rows: BadRowLog | None = None,
) -> Iterator[Paper]:
    """Yield the papers of one file in order (format auto-detected unless ``fmt`` is given).

    Bad rows go to ``bad_rows`` (default: a skipping :class:`BadRowLog`); pass
    ``BadRowLog(on_bad_row="error")`` to stop at the first one with :class:`BadInputError`.
    """
    path = Path(path)
    _check_is_file(path)
    fields = FieldSpec.resolve(text_fields, keywords_field)
    fmt = fmt or detect_format(path, fields.text_fields if text_fields is not None else None)
    log = bad_rows if bad_rows is not None else BadRowLog()
    for chunk in iter_chunks(path, fmt, fields):
        papers, bad = parse_chunk(chunk)
        for record in bad:
            log.add(record)
        yield from papers
