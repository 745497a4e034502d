"""Term mining measured against the truth CSL provides: its papers' keywords, hidden from the miner.

**Quality.** The papers (``csl-dev.tsv``: 1,000 real CSL papers) go through the corpus pipeline; the miner
sees only the sentences, the keywords are the answer key. For several K it reports, for the miner's top K and
for the baseline's top K, measured on the same sentences in the same run:

* **precision**: the share of the top K that are keywords of these papers (a lower bound: many mined terms are
  terms that no author listed);
* **recall (all)**: the share of the keywords occurring at least ``--min-occurrences`` times in the text that
  are in the top K;
* **recall (jieba splits)**: the same for the keywords that jieba, with its default dictionary (and HMM, its
  default), cuts into several words: the ones a miner is for.

The **baseline** ranks jieba word n-grams (2 to ``--max-words`` words, word characters only) by frequency
alone: what a recipe that takes a segmenter's words as they come could do.

**Speed.** The miner on the whole shared text (CSL-dev's and FewCLUE CSLDCP's abstracts, about 30,000
sentences) for each ``--speed-workers`` count, side by side in one run.

**Scale** (``--scale-mb N``, off by default). ``csl-dev.tsv`` replicated to N MB with every copy's CJK shifted
(the preprocessing benchmark's corpus: every copy is new text to the n-gram table, as more papers would be),
preprocessed, then mined from its ``train.txt`` with the default memory budget in a fresh process, whose peak
memory is reported with the prunings and the full CSL release's time at that rate. The shifted text is not
Chinese to jieba, so only time and memory mean anything there.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from framework.benchmarks.timing import machine, machine_line

DESCRIPTION = "term mining on CSL with its keywords hidden: precision/recall of the top K vs. jieba n-grams by frequency"
_WORD_RE = re.compile(r"[\u4e00-\u9fffA-Za-z0-9]+")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The term-mining benchmark's options (and the miner's own)."""
    from framework.benchmarks.masking import default_data_dir
    from framework.data.term_mining import add_mining_arguments

    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="the shared data folder (csl-dev.tsv, fewclue/csldcp/; default ../shared/data)")
    parser.add_argument("--papers", type=Path, default=None,
                        help="papers with keywords to measure on (default DATA/csl-dev.tsv)")
    parser.add_argument("--k", type=int, nargs="+", default=[1000, 2000, 5000, 10000],
                        help="list sizes to measure (default 1000 2000 5000 10000)")
    parser.add_argument("--min-occurrences", type=int, default=3,
                        help="a keyword counts for recall when it occurs this often in the text (default 3)")
    parser.add_argument("--speed-workers", type=int, nargs="*", default=[1, 0],
                        help="worker counts to time on the whole shared text, 0 for all cores (default 1 0; none "
                             "to skip)")
    parser.add_argument("--scale-mb", type=float, default=0.0,
                        help="also mine csl-dev.tsv replicated to this many MB (distinct shifted copies) for time "
                             "and peak memory under the --max-ngrams budget (default 0: skip)")
    add_mining_arguments(parser)


def sentences_of(inputs: Sequence[Path], folder: Path, **fields: Any) -> tuple[list[str], dict[str, int]]:
    """The sentences (train and valid) and keyword lexicon of ``inputs``, through the corpus pipeline."""
    from framework.data.corpus import PreprocessConfig, preprocess
    from framework.data.lexicon import load_lexicon

    result = preprocess(PreprocessConfig(inputs=list(inputs), output=folder, valid_fraction=0.001, progress=False,
                                         overwrite=True, **fields))
    sentences = [line.rstrip("\n") for path in (result.train, result.valid)
                 for line in open(path, encoding="utf-8") if line.strip()]
    return sentences, load_lexicon(result.keywords)


def jieba_ngram_baseline(sentences: Sequence[str], max_words: int = 4) -> list[str]:
    """jieba word n-grams of 2 to ``max_words`` words (word characters only), most frequent first (ties by
    text): the frequency-only baseline."""
    import jieba

    counts: Counter = Counter()
    for sentence in sentences:
        words = jieba.lcut(sentence)
        counts.update(g for n in range(2, max_words + 1) for i in range(len(words) - n + 1)
                      if _WORD_RE.fullmatch(g := "".join(words[i:i + n])))
    return sorted(counts, key=lambda g: (-counts[g], g))


def answer_key(sentences: Sequence[str], keywords: dict[str, int], min_occurrences: int) -> dict[str, Any]:
    """The keywords recall is measured on: those occurring ``min_occurrences`` times, and which jieba splits."""
    import jieba

    text = "\n".join(sentences)
    frequent = sorted(k for k in keywords if text.count(k) >= min_occurrences)
    split = [k for k in frequent if len(jieba.lcut(k)) > 1]
    return {"keywords": set(keywords), "frequent": frequent, "split": split}


def score_lists(ranked: Sequence[str], key: dict[str, Any], ks: Sequence[int]) -> list[dict[str, Any]]:
    """Precision and both recalls of ``ranked``'s top K for each K (K larger than the list: the whole list)."""
    rows = []
    for k in ks:
        top = list(ranked[:k])
        chosen = set(top)
        rows.append({"k": k, "listed": len(top),
                     "precision": sum(t in key["keywords"] for t in top) / max(1, len(top)),
                     "recall_all": sum(t in chosen for t in key["frequent"]) / max(1, len(key["frequent"])),
                     "recall_split": sum(t in chosen for t in key["split"]) / max(1, len(key["split"]))})
    return rows


def _mine_file_measured(corpus: str, config: Any) -> dict[str, Any]:
    """In a fresh process: mine ``corpus`` and report time, prunings and this process's peak memory."""
    import resource

    from framework.data.term_mining import mine_terms_from_files

    started = time.perf_counter()
    result = mine_terms_from_files([corpus], config)
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 1), "sentences": result.stats.sentences, "terms": len(result.terms),
            "prunings": result.stats.prunings, "pruned_below": result.stats.pruned_below,
            "table_entries": result.stats.char_ngrams + result.stats.word_ngrams,
            "parent_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "worker_peak_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}


def scale_run(data: Path, size_mb: float, config: Any, folder: Path) -> dict[str, Any]:
    """Mine ``size_mb`` MB of shifted CSL copies (see the module docstring); figures of that run."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from framework.benchmarks.preprocess import FULL_CSL_MB, make_benchmark_corpus
    from framework.data.corpus import PreprocessConfig, preprocess

    folder.mkdir(parents=True, exist_ok=True)
    corpus, papers = make_benchmark_corpus(data / "csl-dev.tsv", size_mb, folder)
    mb = corpus.stat().st_size / 1e6
    sentences = preprocess(PreprocessConfig(inputs=[corpus], output=folder / "scaled", progress=False,
                                            workers=config.workers)).train
    corpus.unlink()
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:  # a fresh process: its own peak
        out = pool.submit(_mine_file_measured, str(sentences), config).result()
    return {"input_mb": round(mb, 1), "papers": papers, **out,
            "full_csl_minutes": round(FULL_CSL_MB / mb * out["seconds"] / 60, 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Mine the papers' sentences, score miner and baseline against the keywords, time the miner."""
    import dataclasses

    import jieba

    from framework.data.term_mining import config_from_args, mine_terms

    jieba.setLogLevel(60)
    papers = args.papers or args.data / "csl-dev.tsv"
    if not papers.is_file():
        raise SystemExit(f"{papers}: no such file; pass --data (the shared data folder) or --papers")
    config = dataclasses.replace(config_from_args(args, progress=False), max_terms=0)  # the whole ranking
    tmp = Path(tempfile.mkdtemp(prefix="bench-terms-"))
    try:
        sentences, keywords = sentences_of([papers], tmp / "papers")
        key = answer_key(sentences, keywords, args.min_occurrences)
        started = time.perf_counter()
        mined = mine_terms(sentences, config)
        mine_seconds = time.perf_counter() - started
        started = time.perf_counter()
        baseline = jieba_ngram_baseline(sentences, config.max_words)
        baseline_seconds = time.perf_counter() - started
        miner_rows = score_lists([t.text for t in mined.terms], key, args.k)
        baseline_rows = score_lists(baseline, key, args.k)
        quality = [{"k": m["k"], "miner": m, "baseline": b,
                    "precision_ratio": m["precision"] / b["precision"] if b["precision"] else None}
                   for m, b in zip(miner_rows, baseline_rows)]
        speed = []
        if args.speed_workers:
            fewclue = sorted((args.data / "fewclue" / "csldcp").glob("*.json"))
            shared, _ = sentences_of([args.data / "csl-dev.tsv"], tmp / "shared-csl")
            more, _ = sentences_of(fewclue, tmp / "shared-fewclue", text_fields=["content"], keywords_field="")
            seen: set[str] = set()
            text = [s for s in shared + more if not (s in seen or seen.add(s))]
            for workers in args.speed_workers:
                started = time.perf_counter()
                result = mine_terms(text, dataclasses.replace(config, workers=workers))
                seconds = time.perf_counter() - started
                speed.append({"workers": result.stats.workers, "sentences": len(text), "seconds": round(seconds, 2),
                              "sentences_per_second": round(len(text) / seconds, 1), "terms": len(result.terms),
                              "prunings": result.stats.prunings})
        scale = scale_run(args.data, args.scale_mb, config, tmp / "scale") if args.scale_mb > 0 else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    at_5000 = next((q for q in quality if q["k"] == 5000), None)
    targets = {}
    if at_5000 is not None:
        targets = {"recall_split_at_5000": round(at_5000["miner"]["recall_split"], 4),
                   "precision_ratio_at_5000": round(at_5000["precision_ratio"] or 0.0, 3),
                   "recall_target_met": at_5000["miner"]["recall_split"] >= 0.60,
                   "precision_target_met": (at_5000["precision_ratio"] or 0.0) >= 2.0}
    if speed:
        targets["seconds_all_cores"] = speed[-1]["seconds"]
        targets["speed_target_met"] = speed[-1]["seconds"] < 60
    return {"machine": machine(), "papers": str(papers), "sentences": len(sentences), "keywords": len(keywords),
            "frequent_keywords": len(key["frequent"]), "split_keywords": len(key["split"]),
            "min_occurrences": args.min_occurrences, "config": dataclasses.asdict(config),
            "candidates": len(mined.terms), "mine_seconds": round(mine_seconds, 2),
            "baseline_seconds": round(baseline_seconds, 2), "quality": quality, "speed": speed, "scale": scale,
            "targets": targets,
            "top_terms": [t.text for t in mined.terms[:30]]}


def tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The precision/recall table (miner beside baseline) and the speed table."""
    rows = []
    for q in result["quality"]:
        m, b = q["miner"], q["baseline"]
        rows.append({"K": f"{q['k']:,}", "miner precision": f"{m['precision']:.1%}",
                     "baseline precision": f"{b['precision']:.1%}",
                     "ratio": f"{q['precision_ratio']:.2f}x" if q["precision_ratio"] else "-",
                     "miner recall (jieba splits)": f"{m['recall_split']:.1%}",
                     "baseline recall (jieba splits)": f"{b['recall_split']:.1%}",
                     "miner recall (all)": f"{m['recall_all']:.1%}", "baseline recall (all)": f"{b['recall_all']:.1%}"})
    title = (f"{result['papers']}: {result['sentences']:,} sentences, {result['keywords']:,} keywords hidden; recall over "
             f"the {result['frequent_keywords']:,} occurring {result['min_occurrences']}+ times, of which "
             f"{result['split_keywords']:,} jieba splits; the miner ranked {result['candidates']:,} candidates in "
             f"{result['mine_seconds']:.1f} s\n{machine_line(result['machine'])}")
    out = [(title, rows)]
    if result["speed"]:
        speed = [{"workers": s["workers"], "sentences": f"{s['sentences']:,}", "seconds": f"{s['seconds']:.1f}",
                  "sent/s": f"{s['sentences_per_second']:,.0f}", "terms": f"{s['terms']:,}",
                  "prunings": s["prunings"]} for s in result["speed"]]
        first = result["speed"][0]["seconds"]
        out.append((f"mining the shared text (CSL-dev + FewCLUE CSLDCP); speed-up of the last row over the first: "
                    f"{first / result['speed'][-1]['seconds']:.2f}x", speed))
    scale = result.get("scale")
    if scale:
        out.append((f"scale: csl-dev.tsv replicated to {scale['input_mb']} MB ({scale['papers']:,} papers, shifted "
                    f"copies), budget {result['config']['max_ngrams']:,} entries",
                    [{"sentences": f"{scale['sentences']:,}", "seconds": f"{scale['seconds']:.1f}",
                      "prunings": scale["prunings"], "pruned below": scale["pruned_below"],
                      "table entries": f"{scale['table_entries']:,}", "parent peak MB": scale["parent_peak_mb"],
                      "worker peak MB": scale["worker_peak_mb"], "full CSL": f"{scale['full_csl_minutes']} min"}]))
    return out
