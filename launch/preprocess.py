"""Turn papers into a clean sentence corpus, an entity lexicon and statistics (and, optionally, the
segmented dataset for training).

    python launch/preprocess.py --output data/corpus                      # the embedded demo corpus
    python launch/preprocess.py --input csl.tsv --output data/csl         # the full CSL release
    python launch/preprocess.py --input fewclue/csl/*.json --text-fields abst --keywords-field keyword \\
        --output data/fewclue
    python launch/preprocess.py --input csl.tsv --output data/csl --tokenizer hfl/chinese-roberta-wwm-ext
    python launch/preprocess.py --input theses.jsonl --text-fields abstract --output data/theses --mine-terms

Writes train.txt, valid.txt (one sentence a line), keywords.txt (a jieba user dictionary) and stats.json
into --output; --mine-terms adds mined_terms.txt (terms mined from the text, merged into keywords.txt). Formats, cleaning rules and drop reasons: docs/data.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.data.corpus import PreprocessConfig, PreprocessResult, preprocess  # noqa: E402
from framework.data.readers import FORMATS, BadInputError  # noqa: E402

logger = logging.getLogger("preprocess")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface (every option maps to a :class:`PreprocessConfig` field)."""
    defaults = PreprocessConfig(output=".")  # only read for the option defaults
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", action="extend", default=[], metavar="PATH",
                   help="input files (.gz allowed); default: the embedded demo corpus")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (must be empty unless --overwrite)")
    p.add_argument("--format", choices=FORMATS, default=None, help="input format (default: detected per file)")
    p.add_argument("--text-fields", default=None, metavar="F1,F2",
                   help="comma-separated text fields of json/jsonl/tsv/csv inputs (default: title,abstract)")
    p.add_argument("--keywords-field", default=None, metavar="F",
                   help="keywords field ('' for none; default: keywords, or none when --text-fields is given)")
    p.add_argument("--workers", type=int, default=defaults.workers, help="worker processes (default 0: all cores)")
    p.add_argument("--min-chars", type=int, default=defaults.min_chars, help="shortest sentence kept (default 10)")
    p.add_argument("--max-chars", type=int, default=defaults.max_chars, help="longest sentence kept (default 128)")
    p.add_argument("--no-dedup", action="store_true", help="keep exact duplicate sentences")
    p.add_argument("--valid-fraction", type=float, default=defaults.valid_fraction,
                   help="share of papers for valid.txt (default 0.01; at least one paper)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the train/valid split")
    p.add_argument("--on-bad-row", choices=("skip", "error"), default=defaults.on_bad_row,
                   help="skip (count, log the first few) or stop at a bad input row (default skip)")
    p.add_argument("--extra-lexicon", nargs="+", default=[], metavar="FILE",
                   help="further jieba user dictionaries or word lists merged into keywords.txt")
    p.add_argument("--mine-terms", action="store_true",
                   help="also mine domain terms from train.txt (mined_terms.txt) and merge them into keywords.txt: "
                        "the entity lexicon of inputs without keywords (launch/mine_terms.py for its options)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="also build the segmented dataset of train.txt and valid.txt for this tokenizer")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    return p


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    """The :class:`PreprocessConfig` the parsed arguments describe."""
    text_fields = [f.strip() for f in args.text_fields.split(",")] if args.text_fields is not None else None
    return PreprocessConfig(
        inputs=args.input, output=args.output, format=args.format, text_fields=text_fields,
        keywords_field=args.keywords_field, workers=args.workers, min_chars=args.min_chars,
        max_chars=args.max_chars, dedup=not args.no_dedup, valid_fraction=args.valid_fraction, seed=args.seed,
        on_bad_row=args.on_bad_row, extra_lexicons=args.extra_lexicon, overwrite=args.overwrite,
        progress=not args.no_progress, mine_terms=args.mine_terms,
    )


def build_segmented(result: PreprocessResult, tokenizer: str, workers: int, progress: bool) -> None:
    """Build (or reuse) the segmented datasets of ``train.txt`` and ``valid.txt`` next to them."""
    # Imported here: the segmented dataset needs tokenizers/numpy, which plain preprocessing does not.
    from framework.data.segmented import build_segmented_dataset

    for corpus in (result.train, result.valid):
        dataset = build_segmented_dataset(
            corpus, tokenizer, lexicon_paths=[result.keywords], workers=workers or None, progress=progress,
        )
        logger.info("segmented %s: %d examples", corpus.name, len(dataset))


def check_tokenizer_arg(name: str) -> None:
    """Refuse a ``--tokenizer`` that cannot load before the corpus is written (docs/data.md: a run that fails
    writes nothing): a missing folder, a file given for its folder, a folder without a vocabulary, or a hub
    name that is neither cached nor reachable.

    Raises:
        ValueError: naming the problem and the fix.
    """
    from framework.training.hub import check_hub_names, is_hub_name

    path = Path(name).expanduser()
    if path.is_file():
        raise ValueError(f"--tokenizer {name} is a file; give the folder holding it (--tokenizer {path.parent})")
    if path.is_dir():
        if not any((path / f).is_file() for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json")):
            raise ValueError(f"--tokenizer {name}: no vocab.txt or tokenizer.json in this folder; give a tokenizer "
                             "folder (launch/build_vocab.py writes one) or a hub name")
        return
    if not is_hub_name(name):
        raise ValueError(f"--tokenizer {name}: no such folder; give a tokenizer folder (vocab.txt) or a hub name")
    check_hub_names({"--tokenizer": name})  # HubError is a ValueError


def main(argv: list[str] | None = None) -> int:
    """Run preprocessing; returns the exit status (2 for bad options or input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from framework.console import configure_logging

    configure_logging(logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr)  # pretrain's format
    config = config_from_args(args)
    try:
        config.validate()
        if args.tokenizer:
            check_tokenizer_arg(args.tokenizer)  # before the corpus is written, not after
        result = preprocess(config)
    except BadInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        parser.error(str(exc))  # exits with status 2 and the usage line
    stats = result.stats
    print(
        f"{stats['sentences_kept']} sentences ({stats['sentences_train']} train / {stats['sentences_valid']} valid) "
        f"from {stats['papers_read']} papers, {stats['keywords']['lexicon_entries']} lexicon entries, "
        f"{stats['bad_rows_total']} bad rows skipped, in {stats['seconds']:.1f} s "
        f"({stats['sentences_per_second']:.0f} sentences/s, {stats['mb_per_second']:.2f} MB/s) -> {result.output}"
    )
    if args.tokenizer:
        build_segmented(result, args.tokenizer, config.workers, config.progress)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
