"""Mine domain terms from a sentence corpus: an entity lexicon for text that has no keywords.

    python launch/mine_terms.py --input data/corpus/train.txt --output data/corpus/terms.txt
    python launch/mine_terms.py --input a.txt b.txt.gz --output terms.txt --min-count 5 --max-terms 20000
    python launch/pretrain.py --data data/corpus --lexicon data/corpus/terms.txt          # use it
    python launch/preprocess.py --input papers.jsonl --output data/x --extra-lexicon terms.txt  # merge it

--input takes one-sentence-a-line text (the train.txt that launch/preprocess.py writes; preprocess.py
--mine-terms does both steps at once). Writes --output as a lexicon (``term count`` a line, the format of
keywords.txt, so --lexicon and --extra-lexicon take it), the ranked terms with their statistics beside it
(OUTPUT with .tsv) and the run's statistics (OUTPUT with .stats.json). How terms are scored and how well it
works on CSL: docs/data.md, "Mining terms".
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.data.term_mining import add_mining_arguments  # noqa: E402 - light: jieba is imported when mining

_PAPER_SUFFIXES = (".json", ".jsonl", ".tsv", ".csv")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="launch/mine_terms.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, metavar="CORPUS",
                   help="sentence files, one sentence a line (.gz allowed)")
    p.add_argument("--output", required=True, metavar="FILE", help="the lexicon to write (terms.txt)")
    add_mining_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_inputs(paths: list[str]) -> None:
    """Refuse what is not a sentence corpus before any work, saying what to run instead.

    Raises:
        ValueError: a missing file, a folder, or a papers file (JSON, TSV, CSV).
    """
    for name in paths:
        path = Path(name)
        if path.is_dir():
            raise ValueError(f"--input {path} is a folder: give the sentence file in it (--input {path / 'train.txt'})")
        if not path.is_file():
            raise ValueError(f"--input {path}: no such file")
        suffixes = "".join(path.suffixes[-2:]).removesuffix(".gz")
        if any(suffixes.endswith(s) for s in _PAPER_SUFFIXES):
            raise ValueError(f"--input {path} looks like a papers file, not sentences: run "
                             f"launch/preprocess.py --input {path} --output DIR --mine-terms (it splits the papers "
                             "into sentences and mines them), or mine DIR/train.txt")


def main(argv: list[str] | None = None) -> int:
    """Mine, write the lexicon, its ranked table and statistics; exit 2 on bad options or input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from framework.console import configure_logging

    configure_logging(logging.INFO, stream=sys.stderr)
    from framework.data.readers import BadInputError
    from framework.data.term_mining import config_from_args, mine_terms_from_files, write_term_table, write_terms

    output = Path(args.output)
    try:
        check_inputs(args.input)
        config = config_from_args(args, progress=not args.no_progress)
        config.validate()
        if output.is_dir():
            raise ValueError(f"--output {output} is a folder: give the file to write (--output {output / 'terms.txt'})")
        if not output.parent.is_dir():
            raise ValueError(f"--output {output}: the folder {output.parent} does not exist; create it first")
    except ValueError as exc:
        parser.error(str(exc))  # status 2 with the usage line
    try:
        result = mine_terms_from_files(args.input, config)
    except BadInputError as exc:
        print(f"launch/mine_terms.py: {exc}", file=sys.stderr)
        return 2
    write_terms(result.terms, output)
    table = write_term_table(result.terms, output.with_suffix(".tsv"))
    stats = output.with_suffix(".stats.json")
    stats.write_text(json.dumps({"inputs": [str(p) for p in args.input], **result.stats.to_dict()}, indent=2,
                                ensure_ascii=False) + "\n", encoding="utf-8")
    top = ", ".join(t.text for t in result.terms[:8])
    print(f"{len(result.terms)} terms (of {result.stats.candidates} candidates) from {result.stats.sentences} sentences "
          f"in {result.stats.seconds:.1f} s -> {output} (ranked with statistics: {table}); best: {top}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
