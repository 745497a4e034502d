"""Benchmark the corpus pipeline on the shared CSL data replicated to a realistic size.

    python launch/benchmark_preprocess.py [--size-mb 50] [--workers 1 0] [--data ../shared/data]

The input is ``csl-dev.tsv`` (the full CSL release's layout and text) copied until it reaches ``--size-mb``.
Copy k > 0 has every CJK ideograph shifted by k * 7919 code points (modulo the basic CJK block): punctuation,
digits, Latin text, keywords' separators and sentence lengths stay those of the real data, but every sentence
of every copy is distinct, so deduplication does not skip the copies and each one costs what real text costs.

For each worker count (0 = all cores) it runs the whole pipeline into a temporary folder and prints
sentences per second, MB of input per second, peak memory, and the time the full CSL release (396,209
papers, about 270 MB) would take at that rate. The machine's load average is printed too: figures from a
shared machine are lower bounds.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.data.corpus import PreprocessConfig, preprocess  # noqa: E402

FULL_CSL_MB = 270.0
FULL_CSL_PAPERS = 396_209
_CJK_FIRST, _CJK_SIZE = 0x4E00, 0x9FA5 - 0x4E00 + 1


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


def _peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory of this process and of its largest finished child, in MB (Linux: ru_maxrss in kB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_once(corpus: Path, workers: int, folder: Path) -> tuple[dict, float, float]:
    """Preprocess ``corpus`` with ``workers`` processes into a fresh folder.

    Returns ``stats.json``'s content and the CPU seconds spent in this (the parent) process and in the
    worker processes. The parent's share is the serial part of the pipeline: it bounds the speed-up more
    cores can give (Amdahl), which a busy shared machine's wall-clock figures cannot show reliably.
    """
    out = folder / f"out-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    config = PreprocessConfig(output=out, inputs=[corpus], workers=workers, progress=False)
    parent0, children0 = _cpu_seconds(resource.RUSAGE_SELF), _cpu_seconds(resource.RUSAGE_CHILDREN)
    stats = preprocess(config).stats
    parent = _cpu_seconds(resource.RUSAGE_SELF) - parent0
    return stats, parent, _cpu_seconds(resource.RUSAGE_CHILDREN) - children0


def main(argv: list[str] | None = None) -> int:
    """Build the corpus, time each worker count, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=50.0, help="input size to replicate to (default 50)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="worker counts (0: all cores)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data",
                        help="the shared data folder holding csl-dev.tsv")
    parser.add_argument("--keep", type=Path, default=None, help="build in this folder and keep it")
    args = parser.parse_args(argv)
    source = args.data / "csl-dev.tsv"
    if not source.is_file():
        parser.error(f"{source} not found: pass --data pointing at the shared data folder")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench-preprocess-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        corpus, papers = make_benchmark_corpus(source, args.size_mb, folder)
        size_mb = corpus.stat().st_size / 1e6
        print(f"input: {corpus} ({size_mb:.1f} MB, {papers:,} papers; built in {time.perf_counter() - started:.1f} s)")
        print(f"cores available: {len(os.sched_getaffinity(0))}; load average before: "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{'workers':>7} {'seconds':>8} {'sentences':>10} {'sent/s':>9} {'MB/s':>6} {'full CSL':>9} "
              f"{'parent CPU s':>12} {'worker CPU s':>12} {'parent MB':>9} {'child MB':>8}")
        for workers in args.workers:
            stats, parent_cpu, worker_cpu = run_once(corpus, workers, folder)
            own, child = _peak_rss_mb()
            full_s = FULL_CSL_MB / stats["mb_per_second"]
            print(f"{stats['workers']:>7} {stats['seconds']:>8.1f} {stats['sentences_kept']:>10,} "
                  f"{stats['sentences_per_second']:>9,.0f} {stats['mb_per_second']:>6.2f} {full_s / 60:>7.1f} m "
                  f"{parent_cpu:>12.1f} {worker_cpu:>12.1f} {own:>9.0f} {child:>8.0f}")
        print(f"full CSL = {FULL_CSL_MB:.0f} MB ({FULL_CSL_PAPERS:,} papers) at the measured MB/s; "
              "peak memory is cumulative over the runs above")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
