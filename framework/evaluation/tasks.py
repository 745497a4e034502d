"""Readers of the CSL fine-tuning tasks: benchmark TSVs, FewCLUE JSON lines and CSL paper files.

Three tasks (``docs/evaluation.md`` has the commands):

``csl-category``
    A paper's category (13 classes: 工学, 理学, 医学...) from its title.
``csl-discipline``
    A paper's discipline (67 classes, FewCLUE's CSLDCP) from its abstract.
``csl-keywords``
    FewCLUE's CSL: are all listed keywords the paper's real ones (``1``) or are some forged (``0``)? A pair
    task: the abstract is ``text_a``, the keywords joined by ``；`` are ``text_b``.

Formats, told apart by the file's extension and first row (:func:`detect_format`):

``csl-benchmark``
    The CSL authors' task TSVs: ``to category<TAB>title<TAB>category`` (``cls_ctg``), ``to discipline<TAB>
    abstract<TAB>discipline`` (``cls_dcp``).
``csl-papers-tsv``
    The CSL release: five tab-separated fields, title, abstract, keywords joined by ``_``, discipline, category.
``csl-papers-jsonl``
    The same papers as JSON lines ``{"title", "abstract", "keywords": [...], "discipline", "category"}``.
``fewclue-csldcp``
    FewCLUE's ``{"id", "content", "label"}`` (discipline from the abstract).
``fewclue-csl``
    FewCLUE's ``{"id", "abst", "keyword": [...], "label"}`` (keyword recognition).

From paper files, ``csl-keywords`` is built as CLUE built CSL (:func:`forge_keywords`): for about half the papers
(drawn from the seed) some real keywords are replaced by forged ones, words of the paper's own abstract with a
high tf-idf (jieba words; idf over the file's abstracts; never a real keyword).

The label list of a run is FewCLUE's ``labels.txt`` where one lies beside a file of the run, else the task's
fixed list (``0``/``1`` for keywords), else the sorted union of the labels of all the run's files; a label outside
a ``labels.txt`` or a fixed list is an error naming it, its file and line.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

KEYWORD_JOINER = "；"
"""How a keyword list becomes ``text_b`` of a ``csl-keywords`` pair (FewCLUE's baselines join them so too)."""

FORMATS = ("csl-benchmark", "csl-papers-tsv", "csl-papers-jsonl", "fewclue-csldcp", "fewclue-csl")


class TaskError(ValueError):
    """A task file or option that cannot work; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task reads and predicts.

    Attributes:
        name: the ``--task`` name.
        description: one line for ``--help`` and tables.
        formats: the file formats it reads.
        benchmark_task: the first field of its CSL benchmark TSV rows (``to category``), if it has one.
        fixed_labels: the label list when it does not depend on the data (``0``/``1``).
        fewclue: FewCLUE's name of the task, where FewCLUE has it.
        reference: published FewCLUE test accuracies (%, mean over the five splits), for context.
    """

    name: str
    description: str
    formats: tuple[str, ...]
    benchmark_task: str | None = None
    fixed_labels: tuple[str, ...] | None = None
    fewclue: str | None = None
    reference: dict[str, float] = field(default_factory=dict)


# FewCLUE paper (arXiv 2107.07498), Table 3: public test accuracy, mean over the five splits, base models.
TASKS: dict[str, TaskSpec] = {
    "csl-category": TaskSpec(
        "csl-category", "title -> category (13 classes)", ("csl-benchmark", "csl-papers-tsv", "csl-papers-jsonl"),
        benchmark_task="to category"),
    "csl-discipline": TaskSpec(
        "csl-discipline", "abstract -> discipline (67 classes, FewCLUE CSLDCP)",
        ("csl-benchmark", "fewclue-csldcp", "csl-papers-tsv", "csl-papers-jsonl"), benchmark_task="to discipline",
        fewclue="CSLDCP",
        reference={"fine-tuning chinese-roberta-wwm-ext": 35.5, "fine-tuning ERNIE 1.0": 57.0, "human": 68.0}),
    "csl-keywords": TaskSpec(
        "csl-keywords", "abstract + keywords -> all real (1) or some forged (0) (FewCLUE CSL)",
        ("fewclue-csl", "csl-papers-tsv", "csl-papers-jsonl"), fixed_labels=("0", "1"), fewclue="CSL",
        reference={"fine-tuning chinese-roberta-wwm-ext": 50.0, "fine-tuning ERNIE 1.0": 60.1, "human": 84.0}),
}


@dataclass(frozen=True)
class TaskExample:
    """One input of a task: ``text_a`` (and ``text_b`` for a pair) with its gold ``label``.

    ``source`` and ``line`` say where it came from, for error messages.
    """

    text_a: str
    text_b: str | None
    label: str
    source: str = ""
    line: int = 0


@dataclass
class TaskData:
    """The examples of one file of a run and the run's label list (shared by all its files).

    Attributes:
        task: the task name.
        path: the file.
        format: its detected format (one of :data:`FORMATS`).
        examples: the examples in file order.
        labels: the label list of the run; a model's class ``i`` is ``labels[i]``.
    """

    task: str
    path: Path
    format: str
    examples: list[TaskExample]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.examples)

    def label_ids(self) -> list[int]:
        """Each example's label as an index into :attr:`labels`."""
        index = {label: i for i, label in enumerate(self.labels)}
        return [index[ex.label] for ex in self.examples]

    def label_counts(self) -> dict[str, int]:
        """Examples per label, in :attr:`labels` order (labels without examples included, as 0)."""
        counts = Counter(ex.label for ex in self.examples)
        return {label: counts.get(label, 0) for label in self.labels}


# --------------------------------------------------------------------------------------------- formats


def _first_row(path: Path) -> tuple[int, str]:
    """The 1-based number and text of the first non-empty line ("" for an empty file)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                return lineno, line.lstrip("\ufeff").rstrip("\r\n")
    return 0, ""


def detect_format(path: str | Path) -> str:
    """The format of ``path`` (one of :data:`FORMATS`) from its extension and first row.

    JSON lines (``.json``/``.jsonl`` or a first row starting with ``{``) are told apart by their keys; a TSV
    row starting with ``to `` is a CSL benchmark row, one with five fields a CSL paper.
    """
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such file")
    lineno, first = _first_row(path)
    if not first:
        raise TaskError(f"{path}: the file is empty; give a file with at least one example")
    ext = path.suffix.lower()
    if ext in (".json", ".jsonl") or first.lstrip().startswith("{"):
        try:
            record = json.loads(first)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{lineno}: not a JSON object a line ({exc.msg}); FewCLUE and CSL JSON files "
                            f"hold one object per line") from exc
        if not isinstance(record, dict):
            raise TaskError(f"{path}:{lineno}: expected one JSON object per line, got {type(record).__name__}")
        keys = set(record)
        if {"abst", "keyword"} <= keys:
            return "fewclue-csl"
        if "content" in keys:
            return "fewclue-csldcp"
        if {"title", "abstract"} <= keys:
            return "csl-papers-jsonl"
        raise TaskError(f"{path}:{lineno}: unknown JSON record with keys {sorted(keys)}; expected FewCLUE's "
                        f"{{id, content, label}} or {{id, abst, keyword, label}}, or a CSL paper {{title, abstract, "
                        f"keywords, discipline, category}}")
    cells = first.split("\t")
    if len(cells) == 3 and cells[0].startswith("to "):
        return "csl-benchmark"
    if len(cells) == 5:
        return "csl-papers-tsv"
    raise TaskError(f"{path}:{lineno}: unknown format: {len(cells)} tab-separated field(s) in the first row; "
                    f"expected a CSL benchmark row (to category<TAB>text<TAB>label), a CSL paper (5 fields), or "
                    f"FewCLUE/CSL JSON lines")


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class PaperRecord:
    """A CSL paper as the task readers need it (``source:line`` for messages)."""

    title: str
    abstract: str
    keywords: tuple[str, ...]
    discipline: str
    category: str
    source: str
    line: int


def _rows(path: Path) -> Iterable[tuple[int, str]]:
    """Non-empty lines with their 1-based numbers; an undecodable line is an error naming it."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TaskError(f"{path}:{lineno}: not valid UTF-8 ({exc.reason}); re-encode the file as UTF-8") from exc
            line = line.lstrip("\ufeff").rstrip("\r\n")
            if line.strip():
                yield lineno, line


def _json_row(path: Path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or delete the row") from exc
    if not isinstance(record, dict):
        raise TaskError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


def _text(record: dict, key: str, path: Path, lineno: int, fix: str = "fill it in or delete the row") -> str:
    if key not in record:
        raise TaskError(f"{path}:{lineno}: no field {key!r} (the row has {sorted(record)}); {fix}")
    value = record[key]
    text = "" if value is None else str(value).strip()
    if not text:
        raise TaskError(f"{path}:{lineno}: field {key!r} is empty; {fix}")
    return text


def _keyword_list(value: object, path: Path, lineno: int, separator: str = "_") -> tuple[str, ...]:
    if isinstance(value, list):
        words = [str(v).strip() for v in value if v is not None]
    elif isinstance(value, str):
        words = [w.strip() for w in value.split(separator)]
    else:
        raise TaskError(f"{path}:{lineno}: keywords must be a list or a string joined by {separator!r}")
    return tuple(w for w in words if w)


def read_papers(path: str | Path) -> list[PaperRecord]:
    """The papers of a CSL paper file (``csl-papers-tsv`` or ``csl-papers-jsonl``)."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt not in ("csl-papers-tsv", "csl-papers-jsonl"):
        raise TaskError(f"{path}: a {fmt} file, not CSL papers (5-field TSV or JSON lines with title/abstract)")
    papers = []
    for lineno, line in _rows(path):
        if fmt == "csl-papers-tsv":
            cells = line.split("\t")
            if len(cells) != 5:
                raise TaskError(f"{path}:{lineno}: {len(cells)} tab-separated fields, a CSL paper has 5 (title, "
                                f"abstract, keywords, discipline, category); remove tabs inside fields")
            title, abstract, keywords, discipline, category = (c.strip() for c in cells)
            kws = _keyword_list(keywords, path, lineno)
        else:
            record = _json_row(path, lineno, line)
            title = str(record.get("title") or "").strip()
            abstract = str(record.get("abstract") or "").strip()
            kws = _keyword_list(record.get("keywords") or [], path, lineno)
            discipline = str(record.get("discipline") or "").strip()
            category = str(record.get("category") or "").strip()
        papers.append(PaperRecord(title, abstract, kws, discipline, category, str(path), lineno))
    return papers


def _require(value: str, what: str, paper: PaperRecord, task: str) -> str:
    if not value:
        raise TaskError(f"{paper.source}:{paper.line}: the paper has no {what}, which {task} needs; "
                        f"fill it in or delete the row")
    return value


def read_examples(task: str, path: str | Path, seed: int = 0) -> tuple[str, list[TaskExample]]:
    """``(format, examples)`` of one file for ``task``; ``seed`` drives keyword forging from paper files."""
    spec = task_spec(task)
    path = Path(path)
    fmt = detect_format(path)
    if fmt not in spec.formats:
        hint = ""
        other = [t.name for t in TASKS.values() if fmt in t.formats]
        if other:
            hint = f" (it suits --task {' or '.join(other)})"
        raise TaskError(f"{path}: a {fmt} file cannot feed {task}{hint}; {task} reads {', '.join(spec.formats)}")
    name = str(path)
    examples: list[TaskExample] = []
    if fmt in ("csl-papers-tsv", "csl-papers-jsonl"):
        papers = read_papers(path)
        if task == "csl-category":
            examples = [TaskExample(_require(p.title, "title", p, task), None, _require(p.category, "category", p, task),
                                    p.source, p.line) for p in papers]
        elif task == "csl-discipline":
            examples = [TaskExample(_require(p.abstract, "abstract", p, task), None,
                                    _require(p.discipline, "discipline", p, task), p.source, p.line) for p in papers]
        else:
            examples = [ex.to_example() for ex in forge_keywords(papers, seed)]
        return fmt, examples
    for lineno, line in _rows(path):
        if fmt == "csl-benchmark":
            cells = line.split("\t")
            if len(cells) != 3:
                raise TaskError(f"{path}:{lineno}: {len(cells)} tab-separated fields, a CSL benchmark row has 3 "
                                f"(task, text, label); remove tabs inside fields")
            kind, text, label = (c.strip() for c in cells)
            if kind != spec.benchmark_task:
                owner = [t.name for t in TASKS.values() if t.benchmark_task == kind]
                fix = f"use --task {owner[0]}" if owner else "give a cls_ctg or cls_dcp file"
                raise TaskError(f"{path}:{lineno}: a {kind!r} row, but {task} reads {spec.benchmark_task!r} rows; {fix}")
            if not text or not label:
                raise TaskError(f"{path}:{lineno}: empty text or label; fill it in or delete the row")
            examples.append(TaskExample(text, None, label, name, lineno))
        elif fmt == "fewclue-csldcp":
            record = _json_row(path, lineno, line)
            examples.append(TaskExample(_text(record, "content", path, lineno), None,
                                        _text(record, "label", path, lineno), name, lineno))
        else:  # fewclue-csl
            record = _json_row(path, lineno, line)
            keywords = _keyword_list(record.get("keyword"), path, lineno, KEYWORD_JOINER)
            if not keywords:
                raise TaskError(f"{path}:{lineno}: field 'keyword' is empty; list the keywords or delete the row")
            examples.append(TaskExample(_text(record, "abst", path, lineno), KEYWORD_JOINER.join(keywords),
                                        _text(record, "label", path, lineno), name, lineno))
    return fmt, examples


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of ``task``; an unknown name lists the known ones."""
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return TASKS[task]


# --------------------------------------------------------------------------------------------- labels


def read_labels_file(path: str | Path) -> list[str]:
    """FewCLUE's ``labels.txt``: one label a line, in its order (blank lines skipped, duplicates an error)."""
    path = Path(path)
    labels: list[str] = []
    for lineno, line in _rows(path):
        label = line.strip()
        if label in labels:
            raise TaskError(f"{path}:{lineno}: label {label!r} appears twice; keep one")
        labels.append(label)
    if not labels:
        raise TaskError(f"{path}: no labels; write one label a line")
    return labels


def find_labels_file(paths: Iterable[str | Path]) -> Path | None:
    """The first ``labels.txt`` beside one of ``paths`` (FewCLUE ships one per task folder)."""
    for path in paths:
        candidate = Path(path).parent / "labels.txt"
        if candidate.is_file():
            return candidate
    return None


def load_task(task: str, files: Mapping[str, str | Path | None], seed: int = 0,
              train_splits: Sequence[str] | None = None) -> dict[str, TaskData]:
    """Read every file of a run and give them one label list (see the module docstring).

    Args:
        task: the task name.
        files: split name (``train``, ``dev``, ``test``, ``train_0``...) -> file; ``None`` entries are skipped.
        seed: drives keyword forging when ``csl-keywords`` is built from paper files.
        train_splits: the names of the training splits (default: those starting with ``train``); a dev or test
            label that none of them contains is warned about (the model cannot learn it).

    Returns:
        split name -> :class:`TaskData`, all with the same ``labels``.
    """
    spec = task_spec(task)
    given = {split: Path(path) for split, path in files.items() if path is not None}
    for split, path in given.items():
        if not path.is_file():
            raise TaskError(f"--{split.split('_')[0]} {path}: no such file")
    read = {split: read_examples(task, path, seed) for split, path in given.items()}

    labels_file = find_labels_file(given.values())
    fixed: list[str] | None = None
    if labels_file is not None and spec.fixed_labels is None:
        fixed, origin = read_labels_file(labels_file), str(labels_file)
    elif spec.fixed_labels is not None:
        fixed, origin = list(spec.fixed_labels), f"the {task} labels"
    if fixed is not None:
        allowed = set(fixed)
        for split, (_, examples) in read.items():
            for ex in examples:
                if ex.label not in allowed:
                    raise TaskError(f"{ex.source}:{ex.line}: label {ex.label!r} is not one of {origin} "
                                    f"({', '.join(fixed[:8])}{', ...' if len(fixed) > 8 else ''}); fix the label or "
                                    f"give files of the same task")
        labels = fixed
    else:
        labels = sorted({ex.label for _, examples in read.values() for ex in examples})

    train_names = list(train_splits) if train_splits is not None else [s for s in read if s.startswith("train")]
    seen = {ex.label for s in train_names if s in read for ex in read[s][1]}
    if seen:
        for split, (_, examples) in read.items():
            if split in train_names:
                continue
            unseen = sorted({ex.label for ex in examples} - seen)
            if unseen:
                logger.warning("%s: %d label(s) never occur in the training data, the model cannot learn them: %s",
                               given[split], len(unseen), ", ".join(unseen[:10]))
    return {split: TaskData(task, given[split], fmt, examples, labels) for split, (fmt, examples) in read.items()}


# --------------------------------------------------------------------------------------------- forged keywords

# Words that carry no topic whatever their tf-idf in a short abstract (jieba keeps them whole).
_STOPWORDS = frozenset("""
本文 研究 方法 结果 提出 通过 进行 采用 利用 基于 以及 一种 我们 表明 具有 分析 问题 可以 并且 同时 对于 其中 由于
因此 从而 然后 以上 以下 这些 这种 这个 一个 不同 主要 进一步 相关 影响 作用 发现 情况 实现 能够 得到 作为 目前 已经
没有 如何 提高 建立 显著 较好 有效 重要 方面 之间 结果表明 研究表明 本研究 为了 根据 以及 对此 其他 各种 部分 方式
""".split())
_CANDIDATE_RE = re.compile(r"^[\u4e00-\u9fffA-Za-z][\u4e00-\u9fffA-Za-z0-9\-]*$")
_CJK_RE = re.compile(r"[\u4e00-\u9fff]")


def _normal(word: str) -> str:
    return "".join(word.split()).lower()


def candidate_words(text: str) -> list[str]:
    """jieba words of ``text`` that could pass for a keyword: 2+ characters with a CJK one, not a stopword."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [w for w in (w.strip() for w in jieba.lcut(text))
            if len(w) >= 2 and _CANDIDATE_RE.match(w) and _CJK_RE.search(w) and w not in _STOPWORDS]


@dataclass(frozen=True)
class KeywordExample:
    """One ``csl-keywords`` example built from a paper.

    Attributes:
        abstract: the paper's abstract.
        keywords: the keywords shown (real ones, some replaced by ``forged`` ones when the label is ``0``).
        real_keywords: the paper's own keywords.
        forged: the forged keywords among ``keywords`` (empty for a genuine example).
        label: ``1`` when every keyword is real, ``0`` otherwise.
        source, line: where the paper came from.
    """

    abstract: str
    keywords: tuple[str, ...]
    real_keywords: tuple[str, ...]
    forged: tuple[str, ...]
    label: str
    source: str = ""
    line: int = 0

    def to_example(self) -> TaskExample:
        """The pair ``(abstract, keywords joined by ；)`` with its label."""
        return TaskExample(self.abstract, KEYWORD_JOINER.join(self.keywords), self.label, self.source, self.line)


def forge_keywords(papers: Sequence[PaperRecord], seed: int, forged_fraction: float = 0.5) -> list[KeywordExample]:
    """CSL's keyword task built from papers, as CLUE built it: forged keywords by tf-idf from the abstract.

    Each paper ``i`` draws from a generator seeded by ``(seed, i)``, so the result depends on the seed and the
    file alone. With probability ``forged_fraction`` the paper becomes a negative: ``n`` of its ``K`` keywords
    (``n`` uniform in ``1..ceil(K/2)``, positions uniform) are replaced by the ``n`` words of its abstract with
    the highest tf-idf that are not real keywords (tf within the abstract, smoothed idf over all the file's
    abstracts: ``ln((1+N)/(1+df)) + 1``; ties by first occurrence). A paper whose abstract offers no such word
    stays genuine, so slightly fewer than ``forged_fraction`` become negatives.
    """
    if not 0.0 <= forged_fraction <= 1.0:
        raise TaskError(f"forged_fraction={forged_fraction} must be between 0 and 1")
    words = []
    for p in papers:
        if not p.abstract:
            raise TaskError(f"{p.source}:{p.line}: the paper has no abstract, which csl-keywords needs; "
                            f"fill it in or delete the row")
        if not p.keywords:
            raise TaskError(f"{p.source}:{p.line}: the paper has no keywords, which csl-keywords needs; "
                            f"fill them in or delete the row")
        words.append(candidate_words(p.abstract))
    df = Counter(w for doc in words for w in set(doc))
    n_docs = len(papers)
    out = []
    for i, (paper, doc) in enumerate(zip(papers, words)):
        rng = np.random.default_rng([seed & 0xFFFFFFFF, i])
        real = paper.keywords
        keywords, forged = real, ()
        if rng.random() < forged_fraction:
            real_keys = {_normal(k) for k in real}
            tf = Counter(doc)
            first = {w: doc.index(w) for w in tf}
            scored = sorted((w for w in tf if _normal(w) not in real_keys),
                            key=lambda w: (-(tf[w] / len(doc)) * (math.log((1 + n_docs) / (1 + df[w])) + 1), first[w]))
            if scored:
                n = int(rng.integers(1, min(math.ceil(len(real) / 2), len(scored)) + 1))
                positions = sorted(int(j) for j in rng.choice(len(real), size=n, replace=False))
                forged = tuple(scored[:n])
                shown = list(real)
                for position, word in zip(positions, forged):
                    shown[position] = word
                keywords = tuple(shown)
        out.append(KeywordExample(paper.abstract, keywords, real, forged, "0" if forged else "1", paper.source,
                                  paper.line))
    return out
