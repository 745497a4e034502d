"""The segmented dataset: every sentence's token ids, word spans and entity spans, computed once and cached.

Building segments each line of a one-sentence-a-line corpus (``train.txt`` / ``valid.txt`` from
:mod:`framework.data.corpus`) with :class:`~framework.data.segmenter.Segmenter`, in parallel worker
processes, and streams the results into flat binary files that are later memory-mapped:

    CACHE/<key>/
        meta.json           dtypes, shapes, vocabulary info, what the key was made of; written last
        tokens.bin          int32, all sentences' token ids back to back (no special tokens)
        token_offsets.bin   int64 [N+1], sentence i is tokens[token_offsets[i]:token_offsets[i+1]]
        words.bin           int32 [W, 2], word spans relative to their sentence
        word_offsets.bin    int64 [N+1]
        entities.bin        int32 [E, 2], entity spans relative to their sentence
        entity_ids.bin      int32 [E]
        entity_offsets.bin  int64 [N+1]
        entity_table.npz    lexicon keywords as token ids, grouped by token length

``<key>`` hashes the corpus bytes, the tokenizer's vocabulary, the lexicon files and the segmenter's
settings, so a second run, a later epoch or another rank reuses the cache, and any change to one of them
builds a new one. A build writes into a temporary folder of its own (a unique name, also across the nodes of a
cluster sharing the folder) and renames it into place, so an interrupted build never leaves a cache that looks
complete, and two builds of the same cache cannot mix their files (the second rename loses and is removed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from framework.data.atomic import current_umask
from framework.data.parallel import available_cores, chunked
from framework.data.readers import count_file_lines
from framework.data.example import EntityTable, SegmentedExample, VocabInfo
from framework.data.segmenter import SegmentedChunk, Segmenter, entity_token_table

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bump when the files or the segmentation rules change, so old caches are not reused."""

_ARRAYS = {
    # name: (dtype, columns)
    "tokens": ("int32", 1),
    "token_offsets": ("int64", 1),
    "words": ("int32", 2),
    "word_offsets": ("int64", 1),
    "entities": ("int32", 2),
    "entity_ids": ("int32", 1),
    "entity_offsets": ("int64", 1),
}
CHUNK_SENTENCES = 2000


def load_fast_tokenizer(name_or_path: str | Path):  # noqa: ANN201 - a transformers fast tokenizer
    """Load a fast BERT tokenizer from a local folder or a hub name (``from_pretrained``)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path), use_fast=True)
    if not tokenizer.is_fast:
        raise TypeError(f"tokenizer {name_or_path} has no fast (Rust) version; word alignment needs offsets")
    return tokenizer


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def cache_key(corpus: Path, tokenizer, lexicon_paths: Sequence[Path], hmm: bool) -> str:  # noqa: ANN001
    """The cache key: a hash of corpus bytes, vocabulary, lexicon bytes and segmenter settings."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"v{FORMAT_VERSION};hmm={hmm};".encode())
    _hash_file(h, corpus)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    h.update(json.dumps(vocab, ensure_ascii=False).encode())
    h.update(json.dumps({"lower": bool(getattr(tokenizer, "do_lower_case", True))}).encode())
    for path in lexicon_paths:
        h.update(b"lexicon;")
        _hash_file(h, path)
    return h.hexdigest()


# Worker-process state: one Segmenter per process, built once by the pool initializer.
_WORKER: Segmenter | None = None


def _init_worker(tokenizer_path: str, lexicon_paths: list[str], hmm: bool) -> None:
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # parallelism comes from the processes
    from framework.data.lexicon import load_lexicon

    lexicon = load_lexicon(lexicon_paths) if lexicon_paths else None
    _WORKER = Segmenter(load_fast_tokenizer(tokenizer_path), lexicon, hmm=hmm)


def _segment_chunk(lines: list[str]) -> SegmentedChunk:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.segment_chunk(lines)


def _read_sentences(corpus: Path) -> Iterator[str]:
    """The corpus's non-empty lines; a line that is not UTF-8 stops the build naming the file, line and fix.

    Read as bytes and decoded line by line so that the message can say where: the corpus is normally
    ``train.txt`` of ``launch/preprocess.py`` (always UTF-8), and a hand-made one fails here, before any
    training step, rather than with a decoder traceback.
    """
    from framework.data.readers import BadInputError

    with open(corpus, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                raise BadInputError(
                    f"{corpus}:{lineno}: not valid UTF-8 (byte {exc.start} of the line); give the corpus that "
                    "launch/preprocess.py writes (it counts undecodable rows as bad rows), or re-encode this file "
                    "as UTF-8"
                ) from None
            if line:
                yield line


class _Writer:
    """Appends segmented sentences to the flat files of a cache folder being built."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files = {name: open(folder / f"{name}.bin", "wb") for name in _ARRAYS}
        self.counts = {"tokens": 0, "words": 0, "entities": 0}
        self.sentences = 0
        for name in ("token_offsets", "word_offsets", "entity_offsets"):
            self.files[name].write(np.zeros(1, dtype=np.int64).tobytes())

    def add(self, chunk: SegmentedChunk) -> None:
        for key, counts, offsets, rows in (
            ("tokens", chunk.token_counts, "token_offsets", chunk.tokens),
            ("words", chunk.word_counts, "word_offsets", chunk.word_spans),
            ("entities", chunk.entity_counts, "entity_offsets", chunk.entity_spans),
        ):
            self.files[key].write(np.ascontiguousarray(rows, dtype=_ARRAYS[key][0]).tobytes())
            self.files[offsets].write((self.counts[key] + np.cumsum(counts, dtype=np.int64)).tobytes())
            self.counts[key] += int(counts.sum())
        self.files["entity_ids"].write(np.ascontiguousarray(chunk.entity_ids, dtype=np.int32).tobytes())
        self.sentences += len(chunk)

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def build_segmented_dataset(
    corpus: str | Path,
    tokenizer_path: str | Path,
    lexicon_paths: Sequence[str | Path] = (),
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    hmm: bool = False,
    max_seq_len: int = 128,
    progress: bool = True,
) -> "SegmentedDataset":
    """Build (or reuse) the segmented cache of a corpus and open it.

    Args:
        corpus: one-sentence-a-line UTF-8 file.
        tokenizer_path: local folder or hub name of a BERT tokenizer with a fast version.
        lexicon_paths: jieba user dictionaries of keyword entities (``keywords.txt``), merged.
        cache_dir: where caches live; default ``<corpus folder>/segmented``.
        workers: processes for segmentation (default: all cores).
        hmm: jieba's HMM for unknown words (see :class:`~framework.data.segmenter.Segmenter`).
        max_seq_len: length of the examples the opened dataset returns, special tokens included.
        progress: show a progress bar.

    Returns:
        The opened :class:`SegmentedDataset`.
    """
    corpus = Path(corpus)
    if not corpus.is_file():
        raise FileNotFoundError(f"corpus {corpus} does not exist: run launch/preprocess.py first (it writes train.txt)")
    lexicons = [Path(p) for p in lexicon_paths]
    for path in lexicons:
        if not path.is_file():
            raise FileNotFoundError(f"lexicon {path} does not exist: pass the keywords.txt written by launch/preprocess.py")
    tokenizer = load_fast_tokenizer(tokenizer_path)
    key = cache_key(corpus, tokenizer, lexicons, hmm)
    root = Path(cache_dir) if cache_dir is not None else corpus.parent / "segmented"
    folder = root / f"{corpus.stem}-{key}"
    if (folder / "meta.json").is_file():
        logger.info("reusing segmented cache %s", folder)
        return SegmentedDataset(folder, max_seq_len=max_seq_len)

    workers = max(1, workers or available_cores())
    root.mkdir(parents=True, exist_ok=True)
    # A name no other builder can have: process ids repeat across the nodes of a cluster (and across containers),
    # and two builds sharing one folder would write into each other's files. mkdtemp's 0700 is widened to what the
    # umask allows, as a plain mkdir would leave it, so that other users can still read the renamed cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=root))
    os.chmod(tmp, 0o777 & ~current_umask())
    started = time.perf_counter()
    writer = _Writer(tmp)
    input_bytes = corpus.stat().st_size
    init_args = (str(tokenizer_path), [str(p) for p in lexicons], hmm)
    chunks = chunked(_read_sentences(corpus), CHUNK_SENTENCES)
    from tqdm import tqdm

    bar = tqdm(total=count_file_lines(corpus), unit=" sentences", unit_scale=True, desc=f"segmenting {corpus.name}",
               disable=not progress, mininterval=1.0)
    try:
        if workers == 1:
            _init_worker(*init_args)
            results: Iterator[SegmentedChunk] = map(_segment_chunk, chunks)
            pool = None
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=init_args)
            results = pool.imap(_segment_chunk, chunks, chunksize=1)
        for batch in results:
            writer.add(batch)
            bar.update(len(batch))
        if pool is not None:
            pool.close()
            pool.join()
    except BaseException:
        writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    writer.close()
    if writer.sentences == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"corpus {corpus} has no sentences: check that launch/preprocess.py kept any")

    segmenter_keywords = []
    if lexicons:
        from framework.data.lexicon import load_lexicon

        segmenter_keywords = sorted(load_lexicon([str(p) for p in lexicons]))
    table = entity_token_table(tokenizer, segmenter_keywords)
    np.savez(tmp / "entity_table.npz", **{str(n): rows for n, rows in table.items()})
    seconds = time.perf_counter() - started
    vocab = VocabInfo.from_tokenizer(tokenizer)
    meta = {
        "format_version": FORMAT_VERSION,
        "key": key,
        "corpus": str(corpus.resolve()),
        "tokenizer": str(tokenizer_path),
        "lexicons": [str(p.resolve()) for p in lexicons],
        "hmm": hmm,
        "sentences": writer.sentences,
        "tokens": writer.counts["tokens"],
        "words": writer.counts["words"],
        "entities": writer.counts["entities"],
        "lexicon_keywords": len(segmenter_keywords),
        "vocab": {
            "vocab_size": vocab.vocab_size, "mask_token_id": vocab.mask_token_id, "pad_token_id": vocab.pad_token_id,
            "cls_token_id": vocab.cls_token_id, "sep_token_id": vocab.sep_token_id,
            "special_ids": list(vocab.special_ids),
        },
        "build_seconds": round(seconds, 3),
        "sentences_per_second": round(writer.sentences / max(seconds, 1e-9), 1),
        "input_bytes": input_bytes,
        "workers": workers,
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    try:
        tmp.rename(folder)
    except OSError:
        # Another rank or process finished the same build first; its cache is identical.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").is_file():
            raise
    logger.info("segmented %d sentences (%d tokens, %d entity occurrences) in %.1f s with %d workers -> %s",
                meta["sentences"], meta["tokens"], meta["entities"], seconds, workers, folder)
    return SegmentedDataset(folder, max_seq_len=max_seq_len)


@dataclass(frozen=True)
class SentenceSpans:
    """One cached sentence without special tokens: the raw material for examples and, later, packing."""

    token_ids: np.ndarray
    word_spans: np.ndarray
    entity_spans: np.ndarray
    entity_ids: np.ndarray


class SegmentedDataset:
    """A memory-mapped segmented corpus; ``dataset[i]`` is a :class:`SegmentedExample`.

    Examples are ``[CLS] sentence [SEP]``, truncated to ``max_seq_len``: a word cut by truncation keeps its
    visible tokens (still one word), an entity cut by truncation is dropped (a partial keyword is no entity).
    Opening is cheap (the arrays are mapped, not read), so every data-loader worker and rank opens its own.
    """

    def __init__(self, folder: str | Path, max_seq_len: int = 128) -> None:
        self.folder = Path(folder)
        meta_path = self.folder / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.folder} is not a complete segmented cache (no meta.json); rebuild it")
        self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{self.folder} was built by another format version; delete it to rebuild")
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len={max_seq_len} leaves no room for a token between [CLS] and [SEP]")
        self.max_seq_len = int(max_seq_len)
        self._arrays = {name: self._map(name) for name in _ARRAYS}
        v = self.meta["vocab"]
        self.vocab_info = VocabInfo(
            vocab_size=v["vocab_size"], mask_token_id=v["mask_token_id"], pad_token_id=v["pad_token_id"],
            cls_token_id=v["cls_token_id"], sep_token_id=v["sep_token_id"], special_ids=tuple(v["special_ids"]),
        )

    def _map(self, name: str) -> np.ndarray:
        dtype, cols = _ARRAYS[name]
        path = self.folder / f"{name}.bin"
        if path.stat().st_size == 0:
            return np.zeros((0, cols) if cols > 1 else 0, dtype=dtype)
        arr = np.memmap(path, dtype=dtype, mode="r")
        return arr.reshape(-1, cols) if cols > 1 else arr

    def __len__(self) -> int:
        return int(self.meta["sentences"])

    def sentence(self, i: int) -> SentenceSpans:
        """Sentence ``i`` as cached: token ids and spans relative to its first token, no specials."""
        a = self._arrays
        t0, t1 = a["token_offsets"][i], a["token_offsets"][i + 1]
        w0, w1 = a["word_offsets"][i], a["word_offsets"][i + 1]
        e0, e1 = a["entity_offsets"][i], a["entity_offsets"][i + 1]
        return SentenceSpans(a["tokens"][t0:t1], a["words"][w0:w1], a["entities"][e0:e1], a["entity_ids"][e0:e1])

    def __getitem__(self, i: int) -> SegmentedExample:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} sentences")
        s = self.sentence(i)
        room = self.max_seq_len - 2
        tokens = s.token_ids[:room]
        n = len(tokens)
        v = self.vocab_info
        input_ids = np.empty(n + 2, dtype=np.int32)
        input_ids[0], input_ids[1:-1], input_ids[-1] = v.cls_token_id, tokens, v.sep_token_id
        special = np.zeros(n + 2, dtype=bool)
        special[0] = special[-1] = True
        words = s.word_spans
        if len(s.token_ids) > room:
            words = words[words[:, 0] < room]
            words = np.minimum(words, room)
        ents, eids = s.entity_spans, s.entity_ids
        if len(s.token_ids) > room and len(ents):
            keep = ents[:, 1] <= room
            ents, eids = ents[keep], eids[keep]
        return SegmentedExample(
            input_ids=input_ids,
            special_mask=special,
            word_spans=(np.asarray(words, dtype=np.int32) + 1),
            entity_spans=(np.asarray(ents, dtype=np.int32) + 1),
            entity_ids=np.asarray(eids, dtype=np.int32),
            index=i,
        )

    def entity_table(self) -> EntityTable | None:
        """The lexicon's keywords as token ids by length, or ``None`` when built without a lexicon."""
        path = self.folder / "entity_table.npz"
        with np.load(path) as z:
            table = {int(k): z[k] for k in z.files}
        return EntityTable(table) if table else None

    def token_counts(self) -> np.ndarray:
        """``int64 [vocab_size]``: how often each id occurs in the corpus (special tokens excluded).

        The unigram statistics of a corpus, e.g. for a most-frequent-token baseline.
        """
        tokens = self._arrays["tokens"]
        return np.bincount(np.asarray(tokens), minlength=self.vocab_info.vocab_size).astype(np.int64)

    @property
    def num_tokens(self) -> int:
        """Tokens in the corpus (special tokens excluded, before truncation)."""
        return int(self.meta["tokens"])
