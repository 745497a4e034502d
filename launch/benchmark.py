"""Run one of the project's benchmarks and print its figures (``--json``: one JSON object on the last line).

    python launch/benchmark.py masking [--examples 4096] [--batch-size 32] [--repeats 5] [--json]
    python launch/benchmark.py segmentation [--size-mb 20] [--workers 1 0]
    python launch/benchmark.py preprocess [--size-mb 50] [--workers 1 0]
    python launch/benchmark.py mlm-head [--preset small] [--batch 8] [--steps 5]
    python launch/benchmark.py hot-path [--preset small] [--window-steps 4] [--threads 1]
    python launch/benchmark.py train [--preset small] [--precision bf16] [--micro-batch 32] [--seq-len 128]
    python launch/benchmark.py terms [--k 1000 2000 5000 10000] [--speed-workers 1 0]

``python launch/benchmark.py NAME --help`` lists a benchmark's options. The benchmarks live in
``framework/benchmarks/`` (one module each; see that package for adding one); results and how they were
measured are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.benchmarks import BENCHMARKS, load  # noqa: E402 - no heavy import before parsing


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per entry of ``BENCHMARKS``, each with its module's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in BENCHMARKS:
        module = load(name)
        child = sub.add_parser(name, help=module.DESCRIPTION, description=module.__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(child)
        child.add_argument("--json", action="store_true",
                           help="also print the result as one JSON object on the last line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, run the chosen benchmark, print its tables (and JSON)."""
    args = build_parser().parse_args(argv)
    from framework.evaluation.output import emit

    module = load(args.benchmark)
    result = module.run(args)
    emit(result, module.tables(result), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
