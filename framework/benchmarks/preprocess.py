"""The corpus pipeline (read, split, clean, filter, dedup, write) on the shared CSL data replicated to a size.

The input is ``csl-dev.tsv`` (the full CSL release's layout and text) copied until it reaches ``--size-mb``.
Copy k > 0 has every CJK ideograph shifted by k * 7919 code points (modulo the basic CJK block): punctuation,
digits, Latin text, keywords' separators and sentence lengths stay those of the real data, but every sentence
of every copy is distinct, so deduplication does not skip the copies and each one costs what real text costs.

For each worker count (0 = all cores) it runs the whole pipeline into a temporary folder and reports
sentences per second, MB of input per second, the CPU seconds of the parent (the serial part) and of the
workers, peak memory, and the time the full CSL release (396,209 papers, about 270 MB) would take at that
rate. One run per worker count (each is seconds long); the load average is recorded: figures from a shared
machine are lower bounds.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from framework.benchmarks.timing import machine, machine_line

DESCRIPTION = "corpus preprocessing throughput on csl-dev.tsv replicated to --size-mb (distinct shifted copies)"
FULL_CSL_MB = 270.0
FULL_CSL_PAPERS = 396_209
_CJK_FIRST, _CJK_SIZE = 0x4E00, 0x9FA5 - 0x4E00 + 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The preprocessing benchmark's options."""
    from framework.benchmarks.masking import default_data_dir

    parser.add_argument("--size-mb", type=float, default=50.0, help="input size to replicate to (default 50)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0],
                        help="worker counts to time, 0 for all cores (default: 1 0)")
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="the shared data folder holding csl-dev.tsv (default: ../shared/data)")
    parser.add_argument("--keep", type=Path, default=None, help="build in this folder and keep it")


def _shift_table(k: int) -> dict[int, int]:
    shift = k * 7919
    return {cp: _CJK_FIRST + (cp - _CJK_FIRST + shift) % _CJK_SIZE for cp in range(_CJK_FIRST, _CJK_FIRST + _CJK_SIZE)}


def make_benchmark_corpus(source: Path, target_mb: float, folder: Path) -> tuple[Path, int]:
    """Write ``source`` (a CSL TSV) and shifted copies of it to ``folder/csl-bench.tsv`` until it holds at
    least ``target_mb`` MB; returns the path and the number of papers."""
    text = source.read_text(encoding="utf-8")
    if not text.endswith("\n"):
        text += "\n"
    papers_per_copy = text.count("\n")
    out = folder / "csl-bench.tsv"
    written, copies = 0, 0
    with open(out, "w", encoding="utf-8") as f:
        while written < target_mb * 1e6:
            chunk = text if copies == 0 else text.translate(_shift_table(copies))
            f.write(chunk)
            written += len(chunk.encode("utf-8"))
            copies += 1
    return out, copies * papers_per_copy


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_once(corpus: Path, workers: int, folder: Path) -> tuple[dict, float, float]:
    """Preprocess ``corpus`` with ``workers`` processes into a fresh folder.

    Returns ``stats.json``'s content and the CPU seconds spent in this (the parent) process and in the
    worker processes. The parent's share is the serial part of the pipeline: it bounds the speed-up more
    cores can give (Amdahl), which a busy shared machine's wall-clock figures cannot show reliably.
    """
    from framework.data.corpus import PreprocessConfig, preprocess

    out = folder / f"out-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    config = PreprocessConfig(output=out, inputs=[corpus], workers=workers, progress=False)
    parent0, children0 = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    stats = preprocess(config).stats
    parent = _cpu_seconds(resource.RUSAGE_SELF) - parent0
    return stats, parent, _cpu_seconds(resource.RUSAGE_CHILDREN) - children0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the corpus, time each worker count, return the figures."""
    source = args.data / "csl-dev.tsv"
    if not source.is_file():
        raise SystemExit(f"{source} not found: pass --data pointing at the shared data folder")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    folder.mkdir(parents=True, exist_ok=True)
    info = machine()
    rows = []
    try:
        started = time.perf_counter()
        corpus, papers = make_benchmark_corpus(source, args.size_mb, folder)
        built = time.perf_counter() - started
        size_mb = corpus.stat().st_size / 1e6
        for workers in args.workers:
            stats, parent_cpu, worker_cpu = run_once(corpus, workers, folder)
            rows.append({
                "workers": stats["workers"], "seconds": stats["seconds"], "sentences_kept": stats["sentences_kept"],
                "sentences_per_second": stats["sentences_per_second"], "mb_per_second": stats["mb_per_second"],
                "full_csl_minutes": FULL_CSL_MB / stats["mb_per_second"] / 60,
                "parent_cpu_seconds": parent_cpu, "worker_cpu_seconds": worker_cpu,
                "parent_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "child_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            })
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return {"benchmark": "preprocess", "machine": info, "load_average_after": machine()["load_average"],
            "input": {"path": str(corpus), "mb": size_mb, "papers": papers, "built_seconds": built},
            "full_csl": {"mb": FULL_CSL_MB, "papers": FULL_CSL_PAPERS}, "rows": rows}


def tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """One row per worker count."""
    rows = [{"workers": r["workers"], "seconds": f"{r['seconds']:.1f}", "sentences": f"{r['sentences_kept']:,}",
             "sent/s": f"{r['sentences_per_second']:,.0f}", "MB/s": f"{r['mb_per_second']:.2f}",
             "full CSL": f"{r['full_csl_minutes']:.1f} min", "parent CPU s": f"{r['parent_cpu_seconds']:.1f}",
             "worker CPU s": f"{r['worker_cpu_seconds']:.1f}", "parent MB": f"{r['parent_peak_mb']:.0f}",
             "child MB": f"{r['child_peak_mb']:.0f}"} for r in result["rows"]]
    inp = result["input"]
    title = (f"input: {inp['mb']:.1f} MB, {inp['papers']:,} papers (built in {inp['built_seconds']:.1f} s); full CSL = "
             f"{FULL_CSL_MB:.0f} MB at the measured MB/s; peak memory is cumulative over the rows\n"
             f"{machine_line(result['machine'])}; load after: {result['load_average_after']}")
    return [(title, rows)]
