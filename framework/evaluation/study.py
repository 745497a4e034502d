"""The masking-strategy study: does entity-enhanced WWM earn its place against WWM and token masking?

One command (``python launch/study.py --config studies/cpu.yaml``) runs, for every strategy and pretraining
seed, the framework's own commands in order and keeps what each produced:

1. **data** (once): the shared CSL text split by paper into pretraining papers and held-out papers (the MLM
   and entity-cloze questions; never seen in pretraining), the FewCLUE abstracts added to the pretraining text,
   the keywords of the pretraining papers as its lexicon, one WordPiece vocabulary for all runs;
2. **pretrain**: ``launch/pretrain.py`` with the same model size, steps, batch and seed for every strategy;
3. **evaluate**: ``launch/evaluate.py`` on the held-out sentences (the same masks for every model);
4. **finetune**: ``launch/finetune.py`` on each configured CSL task (FewCLUE's protocol where it applies).

Each stage writes one JSON file under ``results_dir`` (``RUN/evaluate.json``...), and a stage whose file is
there is skipped: the study resumes after an interruption, on another day or another machine, where the
results folder (small, kept in the repository) travels and the bulky run folders do not. :func:`write_report`
turns whatever is finished into ``docs/results.md`` with its table and plots, saying how much is still missing.

Commands run as subprocesses: each pretraining run starts its own DeepSpeed engine, exactly as a user's would.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from framework.evaluation.output import last_json_line

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH = REPO_ROOT / "launch"
STAGES = ("pretrain", "evaluate", "finetune")


MINED_SUFFIX = "@mined"
"""A strategy named ``entity_wwm@mined`` runs ``entity_wwm`` with terms mined from the pretraining text
(:mod:`framework.data.term_mining`, keywords hidden) as its lexicon, as many as the keyword lexicon holds."""


def strategy_lexicon(strategy: str) -> tuple[str, bool]:
    """``(masking strategy, whether it uses the mined lexicon)`` of a study strategy name."""
    if strategy.endswith(MINED_SUFFIX):
        return strategy[: -len(MINED_SUFFIX)], True
    return strategy, False


class StudyError(ValueError):
    """A study config that cannot work, or a stage that failed; the message names the file or stage."""


@dataclass
class FinetuneSpec:
    """One fine-tuning task of the study: ``launch/finetune.py --task TASK`` with ``args`` as flags."""

    task: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudyConfig:
    """The study, read from YAML (``studies/cpu.yaml``); paths may use ``{shared}`` and ``{data}``.

    Attributes:
        name: a label for the report.
        output_dir: run folders (checkpoints, exported models): bulky, not kept in the repository.
        results_dir: one JSON file per finished stage (kept; what makes the study resumable anywhere).
        report: the Markdown report; plots go beside it (``results_dir/*.png``).
        shared_data: the folder with CSL and FewCLUE (``../shared/data``).
        strategies: masking strategies to compare.
        seeds: pretraining seeds (each strategy runs every seed).
        heldout_papers: CSL papers kept out of pretraining for the MLM metrics and the probe.
        split_seed: draws the held-out papers.
        max_pretrain_sentences: keep at most this many pretraining sentences (smoke runs and tests).
        pretrain_args: ``launch/pretrain.py`` flags shared by every run (``max-steps``, ``lr``...).
        evaluate_args: ``launch/evaluate.py`` flags.
        finetune: the tasks.
        timeout_s: a stage running longer than this is stopped and reported.
    """

    name: str = "cpu"
    output_dir: str = "runs/study-cpu"
    results_dir: str = "docs/study/cpu"
    report: str = "docs/results.md"
    shared_data: str = "../shared/data"
    strategies: list[str] = field(default_factory=lambda: ["token", "wwm", "entity_wwm"])
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    heldout_papers: int = 200
    split_seed: int = 0
    max_pretrain_sentences: int | None = None
    pretrain_args: dict[str, Any] = field(default_factory=dict)
    evaluate_args: dict[str, Any] = field(default_factory=dict)
    finetune: list[FinetuneSpec] = field(default_factory=list)
    timeout_s: int = 7200

    @classmethod
    def from_yaml(cls, path: str | Path) -> "StudyConfig":
        """Read and validate a study YAML; unknown keys are errors naming the accepted ones."""
        path = Path(path)
        if not path.is_file():
            raise StudyError(f"--config {path}: no such file (the repository ships studies/cpu.yaml)")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise StudyError(f"{path}: not valid YAML ({exc})") from exc
        if not isinstance(raw, dict):
            raise StudyError(f"{path}: a study config is a mapping of keys")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise StudyError(f"{path}: unknown key(s) {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")
        specs = []
        for i, item in enumerate(raw.pop("finetune", None) or []):
            if not isinstance(item, dict) or "task" not in item or set(item) - {"task", "args"}:
                raise StudyError(f"{path}: finetune[{i}] must be a mapping with 'task' and optional 'args'")
            specs.append(FinetuneSpec(str(item["task"]), dict(item.get("args") or {})))
        cfg = cls(**raw, finetune=specs)
        cfg.source = str(path)  # type: ignore[attr-defined]
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`StudyError` for a setting that cannot work, before any run starts."""
        if not self.strategies or not self.seeds:
            raise StudyError("strategies and seeds must each name at least one value")
        if len(set(self.strategies)) != len(self.strategies) or len(set(self.seeds)) != len(self.seeds):
            raise StudyError("strategies and seeds must not repeat")
        if not (Path(self.shared_data) / "csl-dev.jsonl").is_file():
            raise StudyError(f"shared_data={self.shared_data}: no csl-dev.jsonl there; point it at ../shared/data")
        if self.heldout_papers < 10:
            raise StudyError("heldout_papers must be at least 10")
        for key in ("output-dir", "data", "masking", "seed", "resume", "tokenizer"):
            if key in self.pretrain_args:
                raise StudyError(f"pretrain_args.{key} is set by the study itself; remove it")
        from framework.masking.registry import available_strategies

        names = set(available_strategies())
        for s in self.strategies:
            if "@" in s and not s.endswith(MINED_SUFFIX):
                raise StudyError(f"strategy {s!r}: the one lexicon variant is NAME{MINED_SUFFIX} (entity_wwm{MINED_SUFFIX}: "
                                 "the lexicon mined from the pretraining text instead of its keywords)")
        bad = [s for s in self.strategies if strategy_lexicon(s)[0] not in names and ":" not in s]
        if bad:
            raise StudyError(f"unknown strategies {bad}; registered: {', '.join(sorted(names))}")

    @property
    def continues_pretrained(self) -> bool:
        """True when runs continue a pretrained checkpoint (``pretrain_args.model``) rather than start afresh."""
        return "model" in self.pretrain_args

    @property
    def data_dir(self) -> Path:
        """The study's prepared data (inside ``output_dir``)."""
        return Path(self.output_dir) / "data"

    def runs(self) -> list[tuple[str, str, int]]:
        """``(run name, strategy, seed)`` of every pretraining run, strategy-major."""
        return [(f"{s}-seed{seed}", s, seed) for s in self.strategies for seed in self.seeds]

    def expand(self, value: Any) -> Any:
        """Fill ``{shared}`` and ``{data}`` in a string value."""
        if isinstance(value, str):
            return value.replace("{shared}", str(Path(self.shared_data))).replace("{data}", str(self.data_dir))
        return value


# ------------------------------------------------------------------------------------------------- data


def prepare_data(cfg: StudyConfig) -> Path:
    """Build the study's data once (skipped when ``data/ready.json`` exists); returns the data folder.

    ``pretrain/`` (train.txt, valid.txt, keywords.txt of the pretraining papers), ``heldout/sentences.txt`` and
    ``heldout/keywords.txt`` (the held-out papers'), ``heldout/papers.jsonl`` (for a forged-keywords test set),
    ``csl-category/{train,dev}.tsv`` (the benchmark's training titles split 7:1 for selection), ``tokenizer/``
    (also kept in ``results_dir/tokenizer``, and taken from there when present).
    """
    from framework.data.corpus import PreprocessConfig, preprocess
    from framework.data.vocab import build_vocab_from_files

    data = cfg.data_dir
    if (data / "ready.json").is_file():
        return data
    shared = Path(cfg.shared_data)
    tmp = data.parent / (data.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(shared / "csl-dev.jsonl", encoding="utf-8") as f:
        papers = [line for line in f if line.strip()]
    order = list(range(len(papers)))
    random.Random(cfg.split_seed).shuffle(order)
    held = set(order[: cfg.heldout_papers])
    (tmp / "csl-pretrain.jsonl").write_text("".join(p for i, p in enumerate(papers) if i not in held), encoding="utf-8")
    (tmp / "heldout").mkdir()
    (tmp / "heldout" / "papers.jsonl").write_text("".join(papers[i] for i in sorted(held)), encoding="utf-8")
    common = dict(overwrite=True, progress=False, workers=1, seed=cfg.split_seed)
    preprocess(PreprocessConfig(inputs=[tmp / "csl-pretrain.jsonl"], output=tmp / "csl", valid_fraction=0.03, **common))
    fewclue = [shared / "fewclue" / "csldcp" / f"{name}.json" for name in ("unlabeled", "train_few_all")]
    preprocess(PreprocessConfig(inputs=fewclue, text_fields=["content"], keywords_field="", output=tmp / "fewclue",
                                valid_fraction=0.03, **common))
    preprocess(PreprocessConfig(inputs=[tmp / "heldout" / "papers.jsonl"], output=tmp / "heldout-pp",
                                valid_fraction=0.01, **common))
    heldout = _lines(tmp / "heldout-pp" / "train.txt") + _lines(tmp / "heldout-pp" / "valid.txt")
    _write_lines(tmp / "heldout" / "sentences.txt", heldout)
    shutil.copy(tmp / "heldout-pp" / "keywords.txt", tmp / "heldout" / "keywords.txt")
    # A sentence of a held-out paper that also stands in the FewCLUE text must not be pretrained on.
    exclude = set(heldout)
    (tmp / "pretrain").mkdir()
    for name in ("train.txt", "valid.txt"):
        seen: set[str] = set()
        kept = [s for s in _lines(tmp / "csl" / name) + _lines(tmp / "fewclue" / name)
                if s not in exclude and not (s in seen or seen.add(s))]
        if cfg.max_pretrain_sentences is not None and name == "train.txt":
            kept = kept[: cfg.max_pretrain_sentences]
        _write_lines(tmp / "pretrain" / name, kept)
    shutil.copy(tmp / "csl" / "keywords.txt", tmp / "pretrain" / "keywords.txt")
    # csl-category: the benchmark's 8,000 training titles, 7,000 to train and 1,000 to select on.
    titles = _lines(shared / "csl-benchmark" / "cls_ctg" / "train.tsv")
    random.Random(cfg.split_seed).shuffle(titles)
    (tmp / "csl-category").mkdir()
    _write_lines(tmp / "csl-category" / "dev.tsv", titles[:1000])
    _write_lines(tmp / "csl-category" / "train.tsv", titles[1000:])
    vocab_size = int(cfg.pretrain_args.get("vocab-size", 8000))
    kept_tokenizer = Path(cfg.results_dir) / "tokenizer"
    if cfg.continues_pretrained:
        pass  # a pretrained model brings its own tokenizer
    elif (kept_tokenizer / "vocab.txt").is_file():
        # The WordPiece trainer breaks frequency ties in a run-dependent order: a rebuilt vocabulary would
        # differ in rare pieces, so a resumed study reuses the one its finished stages were made with.
        shutil.copytree(kept_tokenizer, tmp / "tokenizer")
    else:
        build_vocab_from_files([tmp / "pretrain" / "train.txt"], tmp / "tokenizer", vocab_size=vocab_size)
        shutil.copytree(tmp / "tokenizer", kept_tokenizer, dirs_exist_ok=True)
    for sub in ("csl", "fewclue", "heldout-pp"):
        shutil.rmtree(tmp / sub)
    (tmp / "csl-pretrain.jsonl").unlink()
    stats = {"papers": len(papers), "heldout_papers": len(held), "pretrain_sentences": len(_lines(tmp / "pretrain" / "train.txt")),
             "pretrain_valid_sentences": len(_lines(tmp / "pretrain" / "valid.txt")),
             "heldout_sentences": len(heldout), "lexicon": len(_lines(tmp / "pretrain" / "keywords.txt")),
             "heldout_lexicon": len(_lines(tmp / "heldout" / "keywords.txt")), "vocab_size": vocab_size}
    (tmp / "ready.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    shutil.rmtree(data, ignore_errors=True)
    tmp.rename(data)
    logger.info("study data ready in %s: %s", data, stats)
    return data


FINGERPRINTED = ("pretrain/train.txt", "pretrain/valid.txt", "pretrain/keywords.txt", "heldout/sentences.txt",
                 "heldout/keywords.txt", "tokenizer/vocab.txt")


def data_fingerprint(data: Path) -> str:
    """A hash of the files every stage depends on: results made from other data must not be mixed in."""
    import hashlib

    h = hashlib.blake2b(digest_size=10)
    for name in FINGERPRINTED:
        path = data / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def check_results_data(cfg: StudyConfig, data: Path) -> None:
    """Tie ``results_dir`` to the data it was made from (``results_dir/data.json``); refuse a mismatch."""
    fingerprint = data_fingerprint(data)
    record = Path(cfg.results_dir) / "data.json"
    if record.is_file():
        known = json.loads(record.read_text(encoding="utf-8")).get("fingerprint")
        if known != fingerprint:
            raise StudyError(
                f"{record}: the finished stages were made from data with fingerprint {known}, but "
                f"{data} now has {fingerprint} (another split, corpus or vocabulary); delete {cfg.results_dir} "
                "to start the study afresh, or restore the data")
        return
    stats = json.loads((data / "ready.json").read_text(encoding="utf-8"))
    _save(record, {"fingerprint": fingerprint, "files": list(FINGERPRINTED), "stats": stats})


def ensure_mined_lexicon(cfg: StudyConfig, data: Path) -> Path:
    """The lexicon of the ``@mined`` strategies: terms mined from ``pretrain/train.txt`` (its keywords never
    seen), cut at the size of the keyword lexicon it stands in for, so the two differ in which terms they hold
    and not in how many. Mined once (deterministic), kept as ``data/mined/terms.txt``; what it holds and how much
    of it is keywords goes to ``results_dir/mined_terms.json``.
    """
    import hashlib

    from framework.data.lexicon import load_lexicon
    from framework.data.term_mining import TermMiningConfig, mine_terms_from_files, write_terms

    path = data / "mined" / "terms.txt"
    record = Path(cfg.results_dir) / "mined_terms.json"
    if not path.is_file():
        keywords = load_lexicon(data / "pretrain" / "keywords.txt")
        config = TermMiningConfig(max_terms=len(keywords), workers=1, progress=False)
        result = mine_terms_from_files([data / "pretrain" / "train.txt"], config)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_terms(result.terms, path)
        in_keywords = sum(t.text in keywords for t in result.terms)
        summary = {"terms": len(result.terms), "keyword_lexicon": len(keywords), "terms_that_are_keywords": in_keywords,
                   "precision_vs_keywords": round(in_keywords / max(1, len(result.terms)), 4),
                   "top_terms": [t.text for t in result.terms[:40]], "mining": result.stats.to_dict()}
        digest = hashlib.blake2b(path.read_bytes(), digest_size=10).hexdigest()
        if record.is_file() and json.loads(record.read_text(encoding="utf-8")).get("fingerprint") != digest:
            raise StudyError(f"{record}: the finished @mined stages used another mined lexicon than {path} now "
                             "holds (the miner changed); delete the @mined runs' results to redo them")
        _save(record, {"fingerprint": digest, **summary})
    return path


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


# ------------------------------------------------------------------------------------------------- stages


def _flags(args: dict[str, Any], cfg: StudyConfig) -> list[str]:
    out: list[str] = []
    for key, value in args.items():
        if value is False or value is None:
            continue
        out.append(f"--{key}")
        if value is not True:
            out.append(str(cfg.expand(value)))
    return out


_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


def _run(cmd: list[str], log: Path, timeout_s: int, env: dict[str, str] | None = None) -> str:
    """Run a command with its output streamed into ``log`` (``tail -f`` shows progress); returns the output.

    A failure raises :class:`StudyError` naming the log and quoting its last lines.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Each stage is a world of its own: a process group of the caller (its MASTER_PORT still bound) must not leak in.
    inherited = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARIABLES}
    with open(log, "w", encoding="utf-8") as out:
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout_s, env={**inherited, "PYTHONUNBUFFERED": "1", **(env or {})})
        except subprocess.TimeoutExpired as exc:
            raise StudyError(f"{' '.join(cmd[:3])} ran past {timeout_s} s; see {log}") from exc
    text = log.read_text(encoding="utf-8", errors="replace")
    if proc.returncode != 0:
        tail = "".join(text.splitlines(keepends=True)[-12:])
        raise StudyError(f"{' '.join(cmd[1:3])} failed (exit {proc.returncode}) after "
                         f"{time.perf_counter() - started:.0f} s; see {log}; its last lines:\n{tail}")
    return text


def _save(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # a half-written result is never mistaken for a finished stage


def run_stage_pretrain(cfg: StudyConfig, run: str, strategy: str, seed: int) -> dict[str, Any]:
    """Pretrain one model (resuming its own checkpoints) and keep its validation curve and final metrics."""
    out = Path(cfg.output_dir) / run
    data = cfg.data_dir
    tokenizer = [] if cfg.continues_pretrained else ["--tokenizer", str(data / "tokenizer")]
    masking, mined = strategy_lexicon(strategy)
    lexicon = ["--lexicon", str(ensure_mined_lexicon(cfg, data))] if mined else []
    cmd = [sys.executable, str(LAUNCH / "pretrain.py"), "--data", str(data / "pretrain"), *tokenizer, *lexicon,
           "--masking", masking, "--seed", str(seed), "--output-dir", str(out), "--resume", "auto",
           *_flags({k: v for k, v in cfg.pretrain_args.items() if k != "vocab-size"}, cfg)]
    started = time.perf_counter()
    _run(cmd, Path(cfg.output_dir) / "logs" / f"{run}-pretrain.log", cfg.timeout_s)
    records = [json.loads(line) for line in open(out / "metrics.jsonl", encoding="utf-8")]
    valid = {r["step"]: r for r in records if r.get("split") == "valid"}  # a resumed run's newest record wins
    train = [r for r in records if r.get("split") == "train"]
    return {
        "run": run, "strategy": strategy, "seed": seed, "command": _shown(cmd),
        "seconds": round(time.perf_counter() - started, 1),
        "valid_curve": [[s, valid[s]["loss"], valid[s].get("masked_accuracy")] for s in sorted(valid)],
        "final_valid": valid[max(valid)] if valid else {},
        "final_train_loss": train[-1]["loss"] if train else None,
        "tokens_per_s": float(np.median([r["tokens_per_s"] for r in train])) if train else None,
    }


def run_stage_evaluate(cfg: StudyConfig, run: str) -> dict[str, Any]:
    """Score the run's exported model on the held-out sentences; per-item probe scores go beside the JSON."""
    data = cfg.data_dir
    items = Path(cfg.results_dir) / run / "cloze_items.npz"
    cmd = [sys.executable, str(LAUNCH / "evaluate.py"), "--model", str(Path(cfg.output_dir) / run / "model"),
           "--data", str(data / "heldout" / "sentences.txt"), "--lexicon", str(data / "heldout" / "keywords.txt"),
           "--train-lexicon", str(data / "pretrain" / "keywords.txt"), "--baseline-corpus",
           str(data / "pretrain" / "train.txt"), "--cache-dir", str(data / "eval-cache"), "--save-items", str(items),
           "--json", *_flags(cfg.evaluate_args, cfg)]
    started = time.perf_counter()
    result = last_json_line(_run(cmd, Path(cfg.output_dir) / "logs" / f"{run}-evaluate.log", cfg.timeout_s))
    _compact_items(items)
    return {"command": _shown(cmd), "seconds": round(time.perf_counter() - started, 1), **result}


def _compact_items(path: Path) -> None:
    """Keep only what pairing needs (float32 scores, the groups): the file lives in the repository."""
    with np.load(path) as z:
        keep = {k: (z[k].astype(np.float32) if z[k].dtype == np.float64 else z[k])
                for k in ("index", "is_entity", "in_train_lexicon", "exact_match", "token_accuracy", "mean_logprob",
                          "baseline_mean_logprob")}
    np.savez_compressed(path, **keep)


def run_stage_finetune(cfg: StudyConfig, run: str, spec: FinetuneSpec) -> dict[str, Any]:
    """Fine-tune the run's model on one task and keep the result."""
    cmd = [sys.executable, str(LAUNCH / "finetune.py"), "--model", str(Path(cfg.output_dir) / run / "model"),
           "--task", spec.task, "--json", "--no-progress", *_flags(spec.args, cfg)]
    started = time.perf_counter()
    result = last_json_line(_run(cmd, Path(cfg.output_dir) / "logs" / f"{run}-finetune-{spec.task}.log", cfg.timeout_s))
    return {"command": _shown(cmd), "seconds": round(time.perf_counter() - started, 1), **result}


def code_version() -> str:
    """The repository's commit (``+dirty`` with uncommitted changes), so each result says what code made it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def _shown(cmd: list[str]) -> str:
    """A command as a user would type it from the repository root."""
    parts = ["python3" if c == sys.executable else os.path.relpath(c, REPO_ROOT) if c.startswith(str(REPO_ROOT)) else c
             for c in cmd]
    return " ".join(parts)


def result_path(cfg: StudyConfig, run: str, stage: str) -> Path:
    """Where a stage's result lives (its presence means the stage is done)."""
    return Path(cfg.results_dir) / run / f"{stage}.json"


def run_study(cfg: StudyConfig, only: Sequence[str] = STAGES, max_runs: int | None = None,
              keep_models: bool = True, runs: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every unfinished stage (pretraining runs in order, each followed by its evaluation and tasks).

    Args:
        cfg: the validated study.
        only: stages to run this time (the others are left for later).
        max_runs: stop after this many pretraining runs were worked on (to fit a sitting).
        keep_models: keep each run folder's exported model after its stages are done (else only results).
        runs: work only on these runs (``token-seed2`` ...), so that two workers with one thread each can share
            the study (on 2 cores they finish about 14% sooner than one worker with two threads).

    Returns:
        ``{"done": [...], "failed": [...], "seconds": ...}``.
    """
    started = time.perf_counter()
    known = [run for run, _, _ in cfg.runs()]
    unknown = sorted(set(runs or ()) - set(known))
    if unknown:
        raise StudyError(f"--runs {','.join(unknown)}: not runs of study {cfg.name}; its runs are {', '.join(known)}")
    check_results_data(cfg, prepare_data(cfg))
    done, failed, worked = [], [], 0
    for run, strategy, seed in cfg.runs():
        if runs is not None and run not in runs:
            continue
        if max_runs is not None and worked >= max_runs:
            break
        stages: list[tuple[str, Any]] = [("pretrain", lambda: run_stage_pretrain(cfg, run, strategy, seed)),
                                         ("evaluate", lambda: run_stage_evaluate(cfg, run))]
        stages += [(f"finetune-{spec.task}", (lambda spec=spec: run_stage_finetune(cfg, run, spec)))
                   for spec in cfg.finetune]
        todo = [(name, fn) for name, fn in stages if not result_path(cfg, run, name).is_file()
                and name.split("-")[0] in only]
        if not todo:
            continue
        worked += 1
        for name, fn in todo:
            logger.info("study %s: %s %s", cfg.name, run, name)
            try:
                _save(result_path(cfg, run, name), {**fn(), "code": code_version(), "finished": time.strftime(
                    "%Y-%m-%dT%H:%M:%S")})
                done.append(f"{run}/{name}")
            except StudyError as exc:
                logger.error("%s", exc)
                failed.append(f"{run}/{name}: {exc}")
                break  # later stages of this run need this one
        if not keep_models and all(result_path(cfg, run, n).is_file() for n, _ in stages):
            shutil.rmtree(Path(cfg.output_dir) / run / "checkpoints", ignore_errors=True)
    return {"done": done, "failed": failed, "seconds": round(time.perf_counter() - started, 1)}


# ------------------------------------------------------------------------------------------------- report


def load_results(cfg: StudyConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """``{run: {stage: result}}`` of every finished stage."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run, _, _ in cfg.runs():
        folder = Path(cfg.results_dir) / run
        if folder.is_dir():
            out[run] = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))}
    return out


def _get(result: dict[str, Any], path: str) -> float | None:
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


# (label, stage, path in the stage's result, path of the baseline or None, higher is better)
METRICS: list[tuple[str, str, str, str | None, bool]] = [
    ("pretraining valid loss", "pretrain", "final_valid.loss", None, False),
    ("held-out MLM loss", "evaluate", "mlm.loss", "mlm_baseline.loss", False),
    ("held-out masked accuracy", "evaluate", "mlm.masked_accuracy", "mlm_baseline.masked_accuracy", True),
    ("held-out top-5 accuracy", "evaluate", "mlm.top5_accuracy", "mlm_baseline.top5_accuracy", True),
    ("held-out whole-word accuracy", "evaluate", "mlm.whole_word_accuracy", "mlm_baseline.whole_word_accuracy", True),
    ("held-out entity-token accuracy", "evaluate", "mlm.entity_accuracy", "mlm_baseline.entity_accuracy", True),
    ("cloze entity (in lexicon) log-prob", "evaluate", "cloze.entity_in_lexicon.mean_logprob",
     "cloze_baseline.entity_in_lexicon.mean_logprob", True),
    ("cloze entity (not in lexicon) log-prob", "evaluate", "cloze.entity_out_of_lexicon.mean_logprob",
     "cloze_baseline.entity_out_of_lexicon.mean_logprob", True),
    ("cloze ordinary word log-prob", "evaluate", "cloze.word.mean_logprob", "cloze_baseline.word.mean_logprob", True),
    ("cloze entity token accuracy", "evaluate", "cloze.entity.token_accuracy", "cloze_baseline.entity.token_accuracy", True),
    ("cloze entity exact match", "evaluate", "cloze.entity.exact_match", "cloze_baseline.entity.exact_match", True),
]


def _finetune_metrics(cfg: StudyConfig) -> list[tuple[str, str, str, str | None, bool]]:
    rows = []
    for spec in cfg.finetune:
        stage = f"finetune-{spec.task}"
        rows.append((f"{spec.task} dev accuracy", stage, "dev.accuracy", "majority.dev_accuracy", True))
        rows.append((f"{spec.task} test accuracy", stage, "test.accuracy", "majority.test_accuracy", True))
        rows.append((f"{spec.task} test macro-F1", stage, "test.macro_f1", "majority.test_macro_f1", True))
    return rows


def aggregate(cfg: StudyConfig, results: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per metric: per strategy the values over seeds (mean, sd, n) and the baseline's mean."""
    table = []
    for label, stage, path, base_path, higher in METRICS + _finetune_metrics(cfg):
        row: dict[str, Any] = {"metric": label, "higher_is_better": higher, "strategies": {}, "baseline": None}
        base_values = []
        for strategy in cfg.strategies:
            values = []
            for run, s, _ in cfg.runs():
                result = results.get(run, {}).get(stage)
                if s != strategy or result is None:
                    continue
                value = _get(result, path)
                if value is not None and math.isfinite(value):
                    values.append(value)
                if base_path is not None and (b := _get(result, base_path)) is not None and math.isfinite(b):
                    base_values.append(b)
            row["strategies"][strategy] = values
        if base_values:
            row["baseline"] = float(np.mean(base_values))
        if any(row["strategies"].values()):
            table.append(row)
    return table


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def paired_cloze(cfg: StudyConfig, a: str, b: str, group: str) -> dict[str, Any] | None:
    """Strategy ``a`` minus ``b`` on the probe's mean log-probability, paired by item within each seed."""
    from framework.evaluation.cloze import paired_difference

    per_seed = []
    for seed in cfg.seeds:
        pa = Path(cfg.results_dir) / f"{a}-seed{seed}" / "cloze_items.npz"
        pb = Path(cfg.results_dir) / f"{b}-seed{seed}" / "cloze_items.npz"
        if not (pa.is_file() and pb.is_file()):
            continue
        with np.load(pa) as za, np.load(pb) as zb:
            mask = _group_mask(za, group)
            if not np.array_equal(za["index"], zb["index"]) or not mask.any():
                continue
            per_seed.append(paired_difference(za["mean_logprob"][mask], zb["mean_logprob"][mask]))
    if not per_seed:
        return None
    means = [d["mean"] for d in per_seed]
    return {"a": a, "b": b, "group": group, "seeds": len(per_seed), "per_seed": per_seed,
            "mean": float(np.mean(means)), "seed_sd": float(np.std(means, ddof=1)) if len(means) > 1 else math.nan,
            "mean_item_se": float(np.mean([d["se"] for d in per_seed]))}


def _group_mask(z: Any, group: str) -> np.ndarray:
    entity = z["is_entity"].astype(bool)
    lex = z["in_train_lexicon"].astype(bool)
    return {"entity": entity, "entity_in_lexicon": entity & lex, "entity_out_of_lexicon": entity & ~lex,
            "word": ~entity}[group]


def _fmt(value: float, sd: float | None = None, n: int | None = None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    digits = 3 if abs(value) < 10 else 2
    text = f"{value:.{digits}f}"
    if sd is not None and math.isfinite(sd):
        text += f" ± {sd:.{digits}f}"
    if n is not None:
        text += f" (n={n})"
    return text


def separations(table: list[dict[str, Any]], strategies: Sequence[str]) -> list[str]:
    """One sentence per metric: do the strategies differ by more than their seed spread?

    Two strategies count as separated when their means differ by more than twice the larger standard error
    of the mean over seeds (a rough two-sigma rule; with 3 seeds a cautious one). Needs 2+ seeds each.
    """
    lines = []
    for row in table:
        stats = {s: _mean_sd(v) + (len(v),) for s, v in row["strategies"].items() if len(v) >= 2}
        if len(stats) < 2:
            continue
        ordered = sorted(stats, key=lambda s: stats[s][0], reverse=row["higher_is_better"])
        best, runner = ordered[0], ordered[1]
        (m1, sd1, n1), (m2, sd2, n2) = stats[best], stats[runner]
        se = max(sd1 / math.sqrt(n1), sd2 / math.sqrt(n2))
        if math.isfinite(se) and abs(m1 - m2) > 2 * se:
            lines.append(f"{row['metric']}: {best} is best, ahead of {runner} by {abs(m1 - m2):.3g} "
                         f"(more than twice the seed standard error, {se:.2g}).")
        else:
            lines.append(f"{row['metric']}: no separation; {best} leads {runner} by {abs(m1 - m2):.3g}, within "
                         f"twice the seed standard error ({se:.2g}).")
    return lines


def write_report(cfg: StudyConfig, command: str) -> Path:
    """Write ``cfg.report`` (and plots in ``results_dir``) from every finished stage; returns the report path."""
    results = load_results(cfg)
    table = aggregate(cfg, results)
    plots = plot_study(cfg, results, table)
    expected = len(cfg.runs()) * (2 + len(cfg.finetune))
    finished = sum(len([k for k in stages if k in {"pretrain", "evaluate"} or k.startswith("finetune-")])
                   for stages in results.values())
    seconds = sum(stage.get("seconds", 0.0) for stages in results.values() for stage in stages.values())
    data_stats = {}
    if (cfg.data_dir / "ready.json").is_file():
        data_stats = json.loads((cfg.data_dir / "ready.json").read_text(encoding="utf-8"))
    elif (Path(cfg.results_dir) / "data.json").is_file():  # the run folders stayed on another machine
        data_stats = json.loads((Path(cfg.results_dir) / "data.json").read_text(encoding="utf-8")).get("stats", {})
    report = Path(cfg.report)
    lines = [f"# The masking study ({cfg.name} preset)", ""]
    lines += [f"Generated by `{command}` from the per-stage results in `{cfg.results_dir}/` "
              f"({finished} of {expected} stages finished; {seconds / 3600:.2f} hours of stage wall time so far).",
              ""]
    if finished < expected:
        lines += [f"**The study is incomplete**: {expected - finished} stages are still to run. Running the same "
                  "command again resumes it (finished stages are skipped).", ""]
    lines += ["## Set-up", "",
              f"- Strategies: {', '.join(cfg.strategies)}; pretraining seeds: {', '.join(map(str, cfg.seeds))}.",
              f"- Pretraining flags shared by every run: `{' '.join(_flags({k: v for k, v in cfg.pretrain_args.items() if k != 'vocab-size'}, cfg))}`.",
              f"- Data (from `{cfg.shared_data}`): {json.dumps(data_stats, ensure_ascii=False)}. "
              "Held-out papers are never pretrained on; the MLM metrics and the probe use only their sentences.",
              f"- Evaluation: `launch/evaluate.py` (masking `{cfg.evaluate_args.get('masking', 'wwm')}`, the same "
              "masks for every model), then fine-tuning: " + ", ".join(f"`{s.task}`" for s in cfg.finetune) + ".",
              f"- Machine: {platform.platform()}, {os.cpu_count()} CPU cores visible, Python {platform.python_version()}.",
              ""]
    lines += _sweep_section(Path(cfg.results_dir) / "lr_sweep.json")
    lines += ["## Results", "", "Mean ± standard deviation over pretraining seeds (n = seeds finished). The "
              "baseline column is the unigram model (MLM and probe: predict from corpus token frequencies) or the "
              "majority class (fine-tuning).", ""]
    header = "| metric | " + " | ".join(cfg.strategies) + " | baseline |"
    lines += [header, "|" + "---|" * (len(cfg.strategies) + 2)]
    for row in table:
        cells = []
        for s in cfg.strategies:
            values = row["strategies"].get(s, [])
            mean, sd = _mean_sd(values)
            cells.append(_fmt(mean, sd, len(values)) if values else "-")
        arrow = "↑" if row["higher_is_better"] else "↓"
        lines.append(f"| {row['metric']} {arrow} | " + " | ".join(cells) + f" | {_fmt(row['baseline'])} |")
    lines += [""]
    pairs = [(a, b) for i, a in enumerate(cfg.strategies) for b in cfg.strategies[i + 1:]]
    paired = [p for a, b in pairs for g in ("entity_in_lexicon", "entity_out_of_lexicon", "word")
              if (p := paired_cloze(cfg, b, a, g)) is not None]
    if paired:
        lines += ["### Entity-cloze probe, paired by item", "",
                  "Difference of mean log-probability of the true tokens (nats a token), the same items for both "
                  "models of a seed; mean over seeds, with the spread over seeds and the typical within-seed paired "
                  "standard error.", "", "| comparison | group | seeds | difference | seed sd | paired SE |",
                  "|---|---|---|---|---|---|"]
        for p in paired:
            lines.append(f"| {p['a']} − {p['b']} | {p['group']} | {p['seeds']} | {p['mean']:+.4f} | "
                         f"{_fmt(p['seed_sd'])} | {_fmt(p['mean_item_se'])} |")
        lines += [""]
    above = _above_baseline(cfg, results)
    lines += ["## What the numbers show", ""]
    for strategy, (n_above, n_total) in above.items():
        lines.append(f"- {strategy}: {n_above} of {n_total} evaluated models clearly beat the unigram baseline "
                     "(masked accuracy more than 1 point above it and ordinary-word probe log-probability more "
                     "than 3 paired standard errors above it, the same items scored by both).")
    if above and not any(n for n, _ in above.values()):
        lines.append("- **No model is clearly above the unigram baseline**, so the differences between strategies "
                     "below say nothing about their merit: the models learnt token frequencies, not context.")
    lines += [f"- {line}" for line in separations(table, cfg.strategies)]
    notes = Path(cfg.results_dir) / "interpretation.md"
    if notes.is_file():  # written by the people who ran the study, versioned beside its results
        lines += ["", "## What this means", "", notes.read_text(encoding="utf-8").strip()]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({os.path.relpath(p, report.parent)})" for p in plots]
    lines += ["", "## Commands of each stage", ""]
    for run, stages in results.items():
        for stage, value in sorted(stages.items(), key=lambda kv: (not kv[0].startswith("pretrain"),
                                                                   not kv[0].startswith("evaluate"), kv[0])):
            if "command" in value:
                lines.append(f"- {run} {stage} ({value.get('seconds', 0):.0f} s): `{value['command']}`")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _sweep_section(path: Path) -> list[str]:
    """The preset's learning-rate sweep (``results_dir/lr_sweep.json``), when one was recorded."""
    if not path.is_file():
        return []
    sweep = json.loads(path.read_text(encoding="utf-8"))
    rates = list(sweep["runs"])
    steps = sorted({r["step"] for runs in sweep["runs"].values() for r in runs})
    lines = ["## Choosing the preset", "", f"{sweep['what']}. Command: `{sweep['command']}`. {sweep.get('note', '')}",
             "", "Validation masked accuracy (loss) by step and peak learning rate:", "",
             "| step | " + " | ".join(f"lr {r}" for r in rates) + " |", "|---|" + "---|" * len(rates)]
    for step in steps:
        cells = []
        for rate in rates:
            rec = next((r for r in sweep["runs"][rate] if r["step"] == step), None)
            cells.append(f"{rec['masked_accuracy']:.3f} ({rec['valid_loss']:.2f})" if rec else "-")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines + [""] + [sweep.get("conclusion", "")] + [""]


def _above_baseline(cfg: StudyConfig, results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, tuple[int, int]]:
    from framework.evaluation.mlm import clearly_above_baseline

    out: dict[str, tuple[int, int]] = {}
    for run, strategy, _ in cfg.runs():
        ev = results.get(run, {}).get("evaluate")
        if ev is None:
            continue
        items = Path(cfg.results_dir) / run / "cloze_items.npz"
        if "cloze_vs_baseline" not in ev and items.is_file():
            # Results from before evaluate.py reported the paired difference: pair it from the saved items.
            from framework.evaluation.cloze import paired_difference

            with np.load(items) as z:
                words = _group_mask(z, "word")
                ev = {**ev, "cloze_vs_baseline": {"word": paired_difference(z["mean_logprob"][words],
                                                                            z["baseline_mean_logprob"][words])}}
        n_above, n_total = out.get(strategy, (0, 0))
        out[strategy] = (n_above + int(clearly_above_baseline(ev)), n_total + 1)
    return out


def plot_study(cfg: StudyConfig, results: dict[str, dict[str, dict[str, Any]]],
               table: list[dict[str, Any]]) -> list[Path]:
    """``valid_loss.png`` (curves per strategy and seed) and ``metrics.png`` (bars with seed error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(cfg.results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    colors = {s: f"C{i}" for i, s in enumerate(cfg.strategies)}
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for run, strategy, seed in cfg.runs():
        curve = results.get(run, {}).get("pretrain", {}).get("valid_curve")
        if curve:
            steps, losses = zip(*[(c[0], c[1]) for c in curve if c[1] is not None])
            ax.plot(steps, losses, color=colors[strategy], alpha=0.8,
                    label=strategy if seed == cfg.seeds[0] else None)
            drawn = True
    if drawn:
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("validation MLM loss (own masking)")
        ax.set_title("pretraining validation loss per strategy (one line per seed)")
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / "valid_loss.png")
        fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    rows = [r for r in table if any(r["strategies"].values())]
    if rows:
        cols = 3
        nrows = -(-len(rows) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
        for ax, row in zip(axes.flat, rows):
            means = [_mean_sd(row["strategies"].get(s, []))[0] for s in cfg.strategies]
            sds = [_mean_sd(row["strategies"].get(s, []))[1] for s in cfg.strategies]
            ax.bar(range(len(cfg.strategies)), means, yerr=[0 if not math.isfinite(v) else v for v in sds],
                   color=[colors[s] for s in cfg.strategies], capsize=4)
            if row["baseline"] is not None and math.isfinite(row["baseline"]):
                ax.axhline(row["baseline"], color="grey", linestyle="--", linewidth=1, label="baseline")
            ax.set_xticks(range(len(cfg.strategies)), cfg.strategies, fontsize=8)
            ax.set_title(row["metric"], fontsize=9)
            finite = [m for m in means if math.isfinite(m)]
            if finite and row["baseline"] is not None and math.isfinite(row["baseline"]):
                finite.append(row["baseline"])
            if finite:
                lo, hi = min(finite), max(finite)
                pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 0.01
                ax.set_ylim(lo - pad, hi + pad)
        for ax in list(axes.flat)[len(rows):]:
            ax.axis("off")
        fig.suptitle("masking study: mean over seeds, error bars one standard deviation; dashed: baseline", fontsize=10)
        fig.tight_layout()
        paths.append(out_dir / "metrics.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
