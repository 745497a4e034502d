"""Benchmark the segmented-dataset build (jieba + tokenizer + entity matching) on real CSL sentences.

    python launch/benchmark_segmentation.py [--size-mb 20] [--workers 1 0] [--data ../shared/data]

Unlike the preprocessing benchmark, whose copies shift every CJK character so that deduplication cannot
skip them, segmentation must see real words (jieba's cost depends on its dictionary hits), and the build
does not deduplicate. So the input here is the real sentences of ``csl-dev.tsv`` and the FewCLUE
abstracts, preprocessed once and then repeated until the corpus reaches ``--size-mb``; the lexicon is
their real keywords and the tokenizer a vocabulary trained on them.

For each worker count (0 = all cores) it prints sentences per second, MB of sentence text per second and
the time the full CSL release would take: its 270 MB of TSV give about ``--corpus-ratio`` of that as
sentence text (measured on csl-dev by the preprocessing step here and printed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.data.corpus import PreprocessConfig, available_cores, preprocess  # noqa: E402
from framework.data.segmented import build_segmented_dataset  # noqa: E402
from framework.data.vocab import build_vocab_from_files  # noqa: E402

FULL_CSL_MB = 270.0


def main(argv: list[str] | None = None) -> int:
    """Prepare the corpus, time each worker count, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=20.0, help="sentence text to segment (default 20 MB)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="worker counts (0: all cores)")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args(argv)
    tsv = args.data / "csl-dev.tsv"
    if not tsv.is_file():
        parser.error(f"{tsv} not found: pass --data pointing at the shared data folder")
    folder = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    try:
        inputs = [tsv]
        unlabeled = args.data / "fewclue" / "csldcp" / "unlabeled.json"
        result = preprocess(PreprocessConfig(inputs=inputs, output=folder / "corpus", progress=False, workers=1))
        ratio = (result.train.stat().st_size + result.valid.stat().st_size) / tsv.stat().st_size
        if unlabeled.is_file():  # more distinct text, same lexicon
            extra = preprocess(PreprocessConfig(inputs=[unlabeled], output=folder / "extra", text_fields=["content"],
                                                progress=False, workers=1))
            base = result.train.read_bytes() + extra.train.read_bytes()
        else:
            base = result.train.read_bytes()
        corpus = folder / "bench.txt"
        with open(corpus, "wb") as f:
            written = 0
            while written < args.size_mb * 1e6:
                f.write(base)
                written += len(base)
        size_mb = corpus.stat().st_size / 1e6
        sentences = base.count(b"\n") * round(written / len(base))
        tokenizer = build_vocab_from_files([corpus], folder / "tokenizer", vocab_size=21128)
        print(f"corpus: {size_mb:.1f} MB of real CSL sentences ({sentences:,}); sentence text is "
              f"{ratio:.2f} x the TSV's bytes; cores: {available_cores()}; load average "
              f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print(f"{'workers':>7} {'seconds':>8} {'sent/s':>9} {'MB/s':>6} {'full CSL':>9}")
        for workers in args.workers:
            n = workers or available_cores()
            shutil.rmtree(folder / "segmented", ignore_errors=True)
            started = time.perf_counter()
            ds = build_segmented_dataset(corpus, tokenizer, [result.keywords], cache_dir=folder / "segmented",
                                         workers=n, progress=False)
            seconds = time.perf_counter() - started
            mb_s = size_mb / seconds
            full = FULL_CSL_MB * ratio / mb_s
            print(f"{n:>7} {seconds:>8.1f} {len(ds) / seconds:>9,.0f} {mb_s:>6.2f} {full / 60:>7.1f} m")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
