"""The corpus pipeline: papers in, a clean sentence corpus, an entity lexicon and statistics out.

    read -> split -> clean -> filter -> deduplicate -> split train/valid by paper -> write

* **Streaming**: the parent process reads raw lines and hands chunks of about a megabyte to worker
  processes (decoding, parsing, sentence splitting, cleaning, filtering and hashing happen there); at most a
  few chunks per worker are in flight, and results come back in input order, so memory stays flat and the
  output does not depend on the number of workers. What the parent keeps is one 8-byte hash per kept
  sentence (for exact deduplication) and the keyword counts.
* **Honest**: every dropped sentence is counted by reason (:data:`DROP_REASONS`), every skipped row by
  reason (:data:`~framework.data.readers.BAD_ROW_REASONS`); ``stats.json`` adds up
  (``sentences_seen == sentences_kept + sum(drops)``).
* **Split by paper**: a paper goes to ``valid.txt`` when a seeded hash of its title and abstract falls below
  ``valid_fraction``, so the split is reproducible, independent of order and workers, and two copies of one
  paper land on the same side. If no paper falls there, the train paper with the lowest hash is moved
  (it is held back, not written, until the end for exactly that case).
* **Atomic**: each output is written to a temporary file in the output folder and renamed into place
  once the whole run succeeded; a run that fails leaves no partial outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generator, Iterator, NamedTuple, Sequence

from framework.data.atomic import AtomicTextFile, atomic_text_file
from framework.data.cleaning import clean_text, has_cjk
from framework.data.lexicon import load_lexicon, normalize_keyword, write_lexicon
from framework.data.parallel import available_cores, ordered_map
from framework.data.readers import (
    FORMATS,
    BadInputError,
    BadRowLog,
    BadRowRecord,
    Chunk,
    FieldSpec,
    Paper,
    check_fields,
    detect_format,
    iter_chunks,
    parse_chunk,
)
from framework.data.sentences import split_sentences

logger = logging.getLogger(__name__)

__all__ = [
    "DROP_REASONS",
    "OUTPUT_FILES",
    "PreprocessConfig",
    "PreprocessResult",
    "NoSentencesError",
    "preprocess",
    "demo_corpus_path",
    "paper_sentences",
]

DROP_REASONS = ("empty", "no_cjk", "too_short", "too_long", "duplicate")
OUTPUT_FILES = ("train.txt", "valid.txt", "keywords.txt", "stats.json")


def demo_corpus_path() -> Path:
    """The embedded demo corpus (``framework/data/demo/papers.jsonl``) that runs without ``--input`` use."""
    return Path(__file__).resolve().parent / "demo" / "papers.jsonl"


class NoSentencesError(BadInputError):
    """The inputs yielded no sentence at all: an error, never an empty corpus."""


@dataclass
class PreprocessConfig:
    """Everything one preprocessing run needs; :meth:`validate` explains what to change when it is wrong.

    Attributes:
        output: folder for ``train.txt``, ``valid.txt``, ``keywords.txt`` and ``stats.json``.
        inputs: input files (several allowed; empty means the embedded demo corpus).
        format: one of :data:`~framework.data.readers.FORMATS`, or ``None`` to detect it per file.
        text_fields: for named-field formats, the fields holding text (``None``: CSL's title and abstract).
        keywords_field: the field holding keywords (``None``: CSL's ``keywords`` when ``text_fields`` is
            also ``None``, else none; ``""``: none).
        workers: worker processes (``0``: all cores).
        min_chars, max_chars: kept sentence length range, in characters, inclusive.
        dedup: drop exact duplicate sentences (first occurrence wins).
        valid_fraction: share of papers for ``valid.txt`` (at least one paper always goes there).
        seed: seed of the train/valid split.
        on_bad_row: ``"skip"`` (count and log the first few) or ``"error"`` (stop with file and line).
        extra_lexicons: further jieba user dictionaries or word lists merged into ``keywords.txt``.
        overwrite: allow writing into a non-empty output folder (our four files are replaced).
        chunk_bytes: raw input bytes per unit of work handed to a worker.
        progress: show a progress bar.
        mine_terms: also mine terms from ``train.txt`` (:mod:`framework.data.term_mining`, its defaults), write
            them as ``mined_terms.txt`` (and the ranked ``mined_terms.tsv``) and merge them into
            ``keywords.txt``: the entity lexicon of a corpus without keywords.
    """

    output: str | Path
    inputs: Sequence[str | Path] = ()
    format: str | None = None
    text_fields: Sequence[str] | None = None
    keywords_field: str | None = None
    workers: int = 0
    min_chars: int = 10
    max_chars: int = 128
    dedup: bool = True
    valid_fraction: float = 0.01
    seed: int = 42
    on_bad_row: str = "skip"
    extra_lexicons: Sequence[str | Path] = ()
    overwrite: bool = False
    chunk_bytes: int = 1 << 20
    progress: bool = True
    mine_terms: bool = False

    def resolved_inputs(self) -> list[Path]:
        """The input files, the demo corpus when none are given."""
        return [Path(p) for p in self.inputs] if self.inputs else [demo_corpus_path()]

    def resolved_workers(self) -> int:
        """Worker processes to use: ``workers``, or every core this process may run on."""
        return self.workers if self.workers > 0 else available_cores()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the option and the fix when the configuration cannot work."""
        for path in self.resolved_inputs():
            if path.is_dir():
                raise ValueError(f"--input {path} is a directory: give the files in it (e.g. --input {path}/*.jsonl), "
                                 "not the folder")
            if not path.is_file():
                raise ValueError(f"--input {path}: no such file (give existing files, or no --input for the demo)")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"--format {self.format!r} is unknown: use one of {', '.join(FORMATS)}, or leave it out")
        if self.text_fields is not None and not [f for f in self.text_fields if f.strip()]:
            raise ValueError("--text-fields is empty: name the field(s) holding the text, e.g. --text-fields abst")
        if self.format in ("csl", "csl-task") and self.text_fields is not None:
            raise ValueError(f"--text-fields does not apply to --format {self.format} (its fields are fixed)")
        if self.workers < 0:
            raise ValueError(f"--workers {self.workers}: give a positive number, or 0 for all cores")
        if self.min_chars < 1:
            raise ValueError(f"--min-chars {self.min_chars}: must be at least 1")
        if self.max_chars < self.min_chars:
            raise ValueError(f"--max-chars {self.max_chars} is below --min-chars {self.min_chars}: raise it")
        if not 0.0 < self.valid_fraction < 1.0:
            raise ValueError(
                f"--valid-fraction {self.valid_fraction}: must be above 0 and below 1 (e.g. 0.01 for 1% of papers)"
            )
        if self.on_bad_row not in ("skip", "error"):
            raise ValueError(f"--on-bad-row {self.on_bad_row!r}: use 'skip' or 'error'")
        for lexicon in self.extra_lexicons:
            if Path(lexicon).is_dir():
                raise ValueError(f"--extra-lexicon {lexicon} is a folder: give the dictionary files in it "
                                 f"(e.g. --extra-lexicon {lexicon}/*.txt)")
            if not Path(lexicon).is_file():
                raise ValueError(f"--extra-lexicon {lexicon}: no such file")
        if self.inputs and (self.text_fields is not None or self.keywords_field):
            # A mistyped field is ignored (csl) or makes every row a skipped bad row: refuse it before any work.
            # The fields name those of the named-field inputs; the csl layouts are checked only when there are no
            # others (in a mix, csl files ignore --text-fields by design).
            formats = [(path, self.format or detect_format(path, self.text_fields)) for path in self.resolved_inputs()]
            named = [(path, fmt) for path, fmt in formats if fmt not in ("csl", "csl-task")]
            for path, fmt in named or formats[:1]:
                check_fields(path, fmt, self.text_fields, self.keywords_field)
        if self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes={self.chunk_bytes}: must be positive")
        out = Path(self.output)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--output {out} is a file: give a folder")
        if out.is_dir() and any(out.iterdir()) and not self.overwrite:
            raise ValueError(f"--output {out} is not empty: choose a new folder or pass --overwrite")


@dataclass
class PreprocessResult:
    """What a run wrote: the output paths and the statistics also saved as ``stats.json``."""

    output: Path
    train: Path
    valid: Path
    keywords: Path
    stats_path: Path
    stats: dict[str, Any]


# --------------------------------------------------------------------------------------------- worker side


@dataclass(frozen=True)
class _Settings:
    """The per-sentence rules, shipped once to each worker."""

    min_chars: int
    max_chars: int
    seed: int


class _ChunkResult(NamedTuple):
    """What a worker sends back for one chunk, packed flat so it pickles cheaply: the parent process is the
    serial part of the pipeline, so every per-object cost there limits how far more workers help.

    Paper ``i`` owns ``counts[i]`` consecutive entries of ``sentences`` (joined by newlines; cleaned text
    has none) and of ``hashes``.
    """

    nbytes: int
    scores: list[float]  # train/valid split score per paper
    counts: list[int]  # kept sentences per paper
    sentences: str
    hashes: array  # array("Q"): 64-bit hash per kept sentence
    characters: int  # title + abstract characters read
    keywords: list[str]  # normalised keywords of all the chunk's papers
    keywords_dropped: int
    drops: Counter
    bad_rows: list[BadRowRecord]


def paper_sentences(paper: Paper) -> list[str]:
    """The raw sentences of a paper: its title as one sentence, then its abstract split into sentences."""
    title = " ".join(paper.title.split())  # a title with line breaks is still one sentence
    return ([title] if title else []) + split_sentences(paper.abstract)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _split_score(paper: Paper, seed: int) -> float:
    key = f"{seed}\x00{paper.title}\x00{paper.abstract}".encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2.0**64


def _process_chunk(settings: _Settings, chunk: Chunk) -> _ChunkResult:
    """Parse, split, clean and filter one chunk (runs in a worker)."""
    papers, bad = parse_chunk(chunk)
    drops: Counter = Counter()
    scores: list[float] = []
    counts: list[int] = []
    kept: list[str] = []
    keywords: list[str] = []
    characters = 0
    for paper in papers:
        before = len(kept)
        for raw in paper_sentences(paper):
            text = clean_text(raw)
            if not text:
                drops["empty"] += 1
            elif not has_cjk(text):
                drops["no_cjk"] += 1
            elif len(text) < settings.min_chars:
                drops["too_short"] += 1
            elif len(text) > settings.max_chars:
                drops["too_long"] += 1
            else:
                kept.append(text)
        scores.append(_split_score(paper, settings.seed))
        counts.append(len(kept) - before)
        keywords.extend(paper.keywords)
        characters += len(paper.title) + len(paper.abstract)
    normalised = [w for w in map(normalize_keyword, keywords) if w]
    return _ChunkResult(
        chunk.nbytes, scores, counts, "\n".join(kept), array("Q", map(_hash64, kept)), characters, normalised,
        len(keywords) - len(normalised), drops, bad,
    )


class _Settled:
    """Callable for the pool: ``_process_chunk`` with the settings bound (picklable, unlike a lambda)."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings

    def __call__(self, chunk: Chunk) -> _ChunkResult:
        return _process_chunk(self.settings, chunk)


def _ordered_results(chunks: Iterator[Chunk], settings: _Settings, workers: int) -> Generator[_ChunkResult, None, None]:
    """Process chunks in ``workers`` processes, yielding results in input order with bounded look-ahead
    (:func:`~framework.data.parallel.ordered_map`), so memory does not grow with the corpus."""
    yield from ordered_map(_Settled(settings), chunks, workers)


# --------------------------------------------------------------------------------------------- parent side


@dataclass
class _Tally:
    """Running counts of the parent process."""

    input_bytes: int = 0
    input_chars: int = 0
    papers_read: int = 0
    papers_empty: int = 0
    papers_train: int = 0
    papers_valid: int = 0
    sentences_train: int = 0
    sentences_valid: int = 0
    drops: Counter = field(default_factory=lambda: Counter({r: 0 for r in DROP_REASONS}))
    per_input: list[dict[str, Any]] = field(default_factory=list)


def _useful_workers(config: PreprocessConfig) -> int:
    """``config``'s worker count, but no more than there are chunks of input to give them (a small input
    then runs in-process, without starting a pool)."""
    total = sum(path.stat().st_size for path in config.resolved_inputs())
    return max(1, min(config.resolved_workers(), -(-total // config.chunk_bytes)))


def _iter_all_chunks(config: PreprocessConfig, fields: FieldSpec, tally: _Tally) -> Iterator[Chunk]:
    for path in config.resolved_inputs():
        fmt = config.format or detect_format(path, config.text_fields)
        tally.per_input.append({"path": str(path), "format": fmt})
        logger.info("reading %s as %s", path, fmt)
        yield from iter_chunks(path, fmt, fields, config.chunk_bytes)  # type: ignore[arg-type]


class _CorpusWriter:
    """The parent's side: deduplicates, assigns papers to train or valid, writes, and counts.

    The train paper with the lowest split score is held back (not written) until :meth:`finish`, so that
    it can go to valid if no paper was drawn for valid.
    """

    def __init__(self, out: Path, config: PreprocessConfig, tally: _Tally) -> None:
        self.config = config
        self.tally = tally
        self.seen: set[int] = set()
        self.keywords: Counter = Counter()
        self.keywords_dropped = 0
        self.held: tuple[float, list[str]] | None = None
        self.train = AtomicTextFile(out / "train.txt")
        self.valid = AtomicTextFile(out / "valid.txt")

    def add(self, result: _ChunkResult) -> int:
        """Take one chunk's papers; returns how many sentences it kept."""
        tally = self.tally
        tally.input_bytes += result.nbytes
        tally.input_chars += result.characters
        tally.drops.update(result.drops)
        self.keywords.update(result.keywords)
        self.keywords_dropped += result.keywords_dropped
        lines = result.sentences.split("\n") if result.sentences else []
        hashes, seen, dedup = result.hashes, self.seen, self.config.dedup
        kept_total, start = 0, 0
        for score, count in zip(result.scores, result.counts):
            tally.papers_read += 1
            end = start + count
            if dedup:
                sentences = []
                for digest, line in zip(hashes[start:end], lines[start:end]):
                    if digest not in seen:
                        seen.add(digest)
                        sentences.append(line)
                tally.drops["duplicate"] += count - len(sentences)
            else:
                sentences = lines[start:end]
            start = end
            if sentences:
                self._place(score, sentences)
                kept_total += len(sentences)
            else:
                tally.papers_empty += 1
        return kept_total

    def _place(self, score: float, sentences: list[str]) -> None:
        tally = self.tally
        if score < self.config.valid_fraction:
            _write(self.valid.file, sentences)
            tally.papers_valid += 1
            tally.sentences_valid += len(sentences)
            return
        if self.held is None or score < self.held[0]:
            if self.held is not None:
                _write(self.train.file, self.held[1])
            self.held = (score, sentences)
        else:
            _write(self.train.file, sentences)
        tally.papers_train += 1
        tally.sentences_train += len(sentences)

    def finish(self) -> None:
        """Write the held-back paper: to valid if valid is still empty, else to train."""
        if self.held is None:
            return
        sentences = self.held[1]
        if self.tally.papers_valid == 0:
            _write(self.valid.file, sentences)
            self.tally.papers_train -= 1
            self.tally.sentences_train -= len(sentences)
            self.tally.papers_valid += 1
            self.tally.sentences_valid += len(sentences)
        else:
            _write(self.train.file, sentences)
        self.held = None

    def commit(self) -> None:
        """Rename the text files into place."""
        self.train.commit()
        self.valid.commit()

    def discard(self) -> None:
        """Remove the temporary text files."""
        self.train.discard()
        self.valid.discard()


def preprocess(config: PreprocessConfig) -> PreprocessResult:
    """Run the pipeline described in the module docstring and return what it wrote.

    Raises:
        ValueError: the configuration is invalid (see :meth:`PreprocessConfig.validate`).
        BadInputError: a bad row with ``on_bad_row="error"``, or an input that cannot be read at all.
        NoSentencesError: the inputs yielded no sentence.
    """
    config.validate()
    started = time.perf_counter()
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    fields = FieldSpec.resolve(config.text_fields, config.keywords_field)
    settings = _Settings(config.min_chars, config.max_chars, config.seed)
    workers = _useful_workers(config)
    bad_rows = BadRowLog(on_bad_row=config.on_bad_row)  # type: ignore[arg-type]
    tally = _Tally()
    writer = _CorpusWriter(out, config, tally)
    progress = _progress_bar(config.progress)
    results = _ordered_results(_iter_all_chunks(config, fields, tally), settings, workers)
    try:
        for result in results:
            for record in result.bad_rows:
                bad_rows.add(record)
            kept = writer.add(result)
            if progress is not None:
                progress.update(kept)
        writer.finish()
        _check_nonempty(config, tally, bad_rows)
        extra = load_lexicon(config.extra_lexicons) if config.extra_lexicons else {}
        lexicon = writer.keywords + Counter(extra) if extra else writer.keywords
        mined = _mine_terms(config, writer, out) if config.mine_terms else None
        if mined is not None:
            lexicon = lexicon + Counter({t.text: t.count for t in mined.terms})
        write_lexicon(lexicon, out / "keywords.txt")
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    finally:
        results.close()  # stops the worker pool now, not when a traceback holding it is freed
        if progress is not None:
            progress.close()

    seconds = time.perf_counter() - started
    stats = _stats(
        config, tally, bad_rows, writer.keywords, writer.keywords_dropped, len(extra), len(lexicon), workers, seconds
    )
    if mined is not None:
        in_keywords = sum(t.text in writer.keywords for t in mined.terms)
        stats["mined_terms"] = {"file": "mined_terms.txt", "terms": len(mined.terms),
                                "also_keywords": in_keywords, **mined.stats.to_dict()}
    _write_json_atomic(stats, out / "stats.json")
    logger.info(
        "kept %d sentences of %d papers (%d train / %d valid papers) in %.1f s; dropped %s; bad rows %s",
        stats["sentences_kept"], stats["papers_read"], tally.papers_train, tally.papers_valid, seconds,
        dict(stats["drops"]), dict(stats["bad_rows"]),
    )
    return PreprocessResult(out, out / "train.txt", out / "valid.txt", out / "keywords.txt", out / "stats.json", stats)


def _mine_terms(config: PreprocessConfig, writer: "_CorpusWriter", out: Path) -> Any:
    """Mine terms from the (still temporary, complete) train.txt and write ``mined_terms.txt`` and ``.tsv``."""
    from framework.data.term_mining import TermMiningConfig, mine_terms_from_files, write_term_table, write_terms

    writer.train.file.flush()
    mining = TermMiningConfig(workers=config.workers, progress=config.progress)
    result = mine_terms_from_files([writer.train.tmp], mining)
    write_terms(result.terms, out / "mined_terms.txt")
    write_term_table(result.terms, out / "mined_terms.tsv")
    logger.info("mined %d terms from train.txt (%d sentences) in %.1f s -> %s", len(result.terms),
                result.stats.sentences, result.stats.seconds, out / "mined_terms.txt")
    return result


def _write(f: IO[str], sentences: list[str]) -> None:
    f.write("\n".join(sentences) + "\n")


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(desc="preprocess", unit=" sent", unit_scale=True, smoothing=0.1, mininterval=0.5)


def _check_nonempty(config: PreprocessConfig, tally: _Tally, bad_rows: BadRowLog) -> None:
    paths = config.resolved_inputs()
    inputs = ", ".join(str(p) for p in paths)
    if tally.papers_read == 0 and bad_rows.counts.get("empty_file", 0) == len(paths) == bad_rows.total:
        # An empty file among others is one skipped row; only when every input is empty is there nothing to do.
        raise NoSentencesError(f"{inputs}: every input is empty (no rows); give files with data")
    if tally.sentences_train + tally.sentences_valid == 0:
        raise NoSentencesError(
            f"{inputs}: no sentence survived ({tally.papers_read} papers read; drops {dict(+tally.drops)}; "
            f"bad rows {dict(bad_rows.counts)}). Check --format and --text-fields, the file encoding, and "
            f"--min-chars/--max-chars ({config.min_chars}/{config.max_chars})"
        )
    if tally.sentences_train == 0:
        raise NoSentencesError(
            f"{inputs}: every usable paper ({tally.papers_valid}) went to valid.txt and train.txt would be "
            f"empty; lower --valid-fraction ({config.valid_fraction}) or give more papers"
        )


def _stats(
    config: PreprocessConfig,
    tally: _Tally,
    bad_rows: BadRowLog,
    keywords: Counter,
    keywords_dropped: int,
    extra_entries: int,
    lexicon_size: int,
    workers: int,
    seconds: float,
) -> dict[str, Any]:
    kept = tally.sentences_train + tally.sentences_valid
    drops = {reason: tally.drops.get(reason, 0) for reason in DROP_REASONS}
    return {
        "inputs": tally.per_input,
        "papers_read": tally.papers_read,
        "papers_without_sentences": tally.papers_empty,
        "papers_train": tally.papers_train,
        "papers_valid": tally.papers_valid,
        "sentences_seen": kept + sum(drops.values()),
        "sentences_kept": kept,
        "sentences_train": tally.sentences_train,
        "sentences_valid": tally.sentences_valid,
        "drops": drops,
        "bad_rows": dict(sorted(bad_rows.counts.items())),
        "bad_rows_total": bad_rows.total,
        "keywords": {
            "occurrences": sum(keywords.values()),
            "distinct": len(keywords),
            "dropped_unusable": keywords_dropped,
            "extra_lexicon_entries": extra_entries,
            "lexicon_entries": lexicon_size,
        },
        "input_bytes": tally.input_bytes,
        "input_characters": tally.input_chars,
        "seconds": round(seconds, 3),
        "characters_per_second": round(tally.input_chars / seconds, 1) if seconds else None,
        "sentences_per_second": round(kept / seconds, 1) if seconds else None,
        "mb_per_second": round(tally.input_bytes / 1e6 / seconds, 3) if seconds else None,
        "workers": workers,
        "config": _config_dict(config),
    }


def _config_dict(config: PreprocessConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["inputs"] = [str(p) for p in config.resolved_inputs()]
    data["output"] = str(config.output)
    data["extra_lexicons"] = [str(p) for p in config.extra_lexicons]
    data["text_fields"] = list(config.text_fields) if config.text_fields is not None else None
    return data


def _write_json_atomic(data: dict[str, Any], path: Path) -> None:
    with atomic_text_file(path) as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
        f.write("\n")
