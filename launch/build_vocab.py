"""Train a BERT WordPiece vocabulary (every CJK character its own token) from a sentence corpus.

    python launch/build_vocab.py --input train.txt --output DIR [--vocab-size N] [--min-frequency K]

The folder loads with ``BertTokenizer.from_pretrained(DIR)``; use it with ``--model-config tiny|base`` to
pretrain from scratch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.data.vocab import build_vocab_from_files  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and build the vocabulary."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", action="extend", required=True,
                        help="one-sentence-a-line UTF-8 files (repeatable)")
    parser.add_argument("--output", required=True, help="tokenizer folder to write")
    parser.add_argument("--vocab-size", type=int, default=21128, help="upper bound on the vocabulary (default 21128)")
    parser.add_argument("--min-frequency", type=int, default=1, help="minimum count of a character or piece")
    parser.add_argument("--no-lowercase", action="store_true", help="keep Latin case (Chinese BERT lowercases)")
    args = parser.parse_args(argv)
    from framework.console import configure_logging

    configure_logging(logging.INFO, stream=sys.stderr)
    for path in args.input:
        if not Path(path).is_file():
            parser.error(f"--input {path}: no such file (give the train.txt written by launch/preprocess.py)")
    out = build_vocab_from_files(
        args.input, args.output, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
        lowercase=not args.no_lowercase,
    )
    print(f"vocabulary written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
