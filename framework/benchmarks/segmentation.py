"""The segmented-dataset build (jieba + tokenizer + entity matching) on real CSL sentences.

Unlike the preprocessing benchmark, whose copies shift every CJK character so that deduplication cannot
skip them, segmentation must see real words (jieba's cost depends on its dictionary hits), and the build
does not deduplicate. So the input here is the real sentences of ``csl-dev.tsv`` and the FewCLUE
abstracts, preprocessed once and then repeated until the corpus reaches ``--size-mb``; the lexicon is
their real keywords and the tokenizer a 21,128-token vocabulary trained on them.

For each worker count (0 = all cores) it reports sentences per second, MB of sentence text per second and
the time the full CSL release would take: its 270 MB of TSV give about ``ratio`` times that as sentence
text (measured on csl-dev by the preprocessing step here). One build per worker count.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from framework.benchmarks.timing import machine, machine_line

DESCRIPTION = "segmented-dataset build (jieba, tokenizer, entities) on real CSL sentences repeated to --size-mb"
FULL_CSL_MB = 270.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The segmentation benchmark's options."""
    from framework.benchmarks.masking import default_data_dir

    parser.add_argument("--size-mb", type=float, default=20.0, help="sentence text to segment (default 20 MB)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 0],
                        help="worker counts to time, 0 for all cores (default: 1 0)")
    parser.add_argument("--data", type=Path, default=default_data_dir(),
                        help="the shared data folder holding csl-dev.tsv (default: ../shared/data)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Prepare the corpus, time each worker count, return the figures."""
    from framework.data.corpus import PreprocessConfig, preprocess
    from framework.data.parallel import available_cores
    from framework.data.segmented import build_segmented_dataset
    from framework.data.vocab import build_vocab_from_files

    tsv = args.data / "csl-dev.tsv"
    if not tsv.is_file():
        raise SystemExit(f"{tsv} not found: pass --data pointing at the shared data folder")
    info = machine()
    folder = Path(tempfile.mkdtemp(prefix="bench-segment-"))
    rows = []
    try:
        unlabeled = args.data / "fewclue" / "csldcp" / "unlabeled.json"
        result = preprocess(PreprocessConfig(inputs=[tsv], output=folder / "corpus", progress=False, workers=1))
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
        for workers in args.workers:
            n = workers or available_cores()
            shutil.rmtree(folder / "segmented", ignore_errors=True)
            started = time.perf_counter()
            ds = build_segmented_dataset(corpus, tokenizer, [result.keywords], cache_dir=folder / "segmented",
                                         workers=n, progress=False)
            seconds = time.perf_counter() - started
            mb_s = size_mb / seconds
            rows.append({"workers": n, "seconds": seconds, "sentences_per_second": len(ds) / seconds,
                         "mb_per_second": mb_s, "full_csl_minutes": FULL_CSL_MB * ratio / mb_s / 60})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"benchmark": "segmentation", "machine": info, "load_average_after": machine()["load_average"],
            "corpus": {"mb": size_mb, "sentences": sentences, "text_to_tsv_ratio": ratio}, "rows": rows}


def tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """One row per worker count."""
    rows = [{"workers": r["workers"], "seconds": f"{r['seconds']:.1f}", "sent/s": f"{r['sentences_per_second']:,.0f}",
             "MB/s": f"{r['mb_per_second']:.2f}", "full CSL": f"{r['full_csl_minutes']:.1f} min"}
            for r in result["rows"]]
    c = result["corpus"]
    title = (f"corpus: {c['mb']:.1f} MB of real CSL sentences ({c['sentences']:,}); sentence text is "
             f"{c['text_to_tsv_ratio']:.2f} x the TSV's bytes\n{machine_line(result['machine'])}; "
             f"load after: {result['load_average_after']}")
    return [(title, rows)]
