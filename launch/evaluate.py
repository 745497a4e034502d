"""Score a pretrained model on held-out sentences: MLM metrics and the entity-cloze probe, beside a baseline.

    python launch/evaluate.py --model runs/csl/model --data data/csl [--lexicon keywords.txt] [--masking wwm]
        [--seed 0] [--json] [--record] [--report-to wandb]

``--data`` is a one-sentence-a-line file or a ``launch/preprocess.py`` folder (its ``valid.txt``; its
``keywords.txt`` is the default probe lexicon). Two models evaluated with the same ``--seed`` (and tokenizer)
answer the same masked questions. ``--record`` adds the figures to the model folder's README.md (model card);
``--report-to wandb`` sends them to the W&B project of the run that trained the model. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    """The command line (documented in docs/evaluation.md)."""
    p = argparse.ArgumentParser(prog="launch/evaluate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="exported model folder (OUTPUT/model) or hub name")
    p.add_argument("--data", required=True, help="sentence file, or a preprocess output folder (uses valid.txt)")
    p.add_argument("--lexicon", help="entity lexicon of the evaluation text (default: keywords.txt beside it)")
    p.add_argument("--train-lexicon", help="the pretraining lexicon: splits probe entities into seen / unseen")
    p.add_argument("--baseline-corpus", help="sentence file for the unigram baseline (default: the evaluation text)")
    p.add_argument("--masking", default="wwm", help="strategy that masks the MLM questions (default wwm)")
    p.add_argument("--masking-args", default=None, metavar="JSON", help="strategy options, e.g. '{\"mask_prob\": 0.2}'")
    p.add_argument("--seed", type=int, default=0, help="fixes masks and probe items (default 0)")
    p.add_argument("--seq-len", type=int, default=128, help="example length in tokens (default 128)")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per forward pass (default 64)")
    p.add_argument("--max-examples", type=int, default=None, help="only the first N sentences")
    p.add_argument("--max-cloze-items", type=int, default=4000, help="probe items of each kind at most (default 4000)")
    p.add_argument("--cache-dir", help="segmented-cache folder (default: beside the data)")
    p.add_argument("--device", help="cuda or cpu (default: cuda where available)")
    p.add_argument("--save-items", metavar="NPZ", help="write per-item probe scores here (to pair models)")
    p.add_argument("--record", action="store_true", help="add the results to the model folder's README.md")
    p.add_argument("--report-to", choices=("wandb", "none"), default="none", help="also send the figures to W&B")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, evaluate, print; bad input exits 2 with one line."""
    args = build_parser().parse_args(argv)
    from framework.console import configure_logging

    configure_logging(logging.WARNING, stream=sys.stderr)
    from framework.training.hub import HubError, check_hub_names

    try:  # before torch: an unreachable hub answers in seconds, not after 50 s of retries and a traceback
        check_hub_names({"--model": args.model})
    except HubError as exc:
        print(f"launch/evaluate.py: {exc}", file=sys.stderr)
        return 2
    from framework.evaluation.mlm import EvaluateConfig, EvaluateError, evaluate, result_tables
    from framework.evaluation.output import emit, report_to_wandb
    from framework.masking.base import MaskingConfigError
    from framework.masking.registry import parse_masking_args

    try:
        cfg = EvaluateConfig(model=args.model, data=args.data, lexicon=args.lexicon, train_lexicon=args.train_lexicon,
                             baseline_corpus=args.baseline_corpus, masking=args.masking,
                             masking_args=parse_masking_args(args.masking_args) if args.masking_args else {},
                             seed=args.seed, seq_len=args.seq_len, batch_size=args.batch_size,
                             max_examples=args.max_examples, max_cloze_items=args.max_cloze_items,
                             cache_dir=args.cache_dir, device=args.device)
        result = evaluate(cfg, items_out=args.save_items)
    except (EvaluateError, MaskingConfigError, FileNotFoundError) as exc:
        print(f"launch/evaluate.py: {exc}", file=sys.stderr)
        return 2
    if args.record:
        from framework.training.model_card import record_results

        print(f"recorded in {record_results(args.model, 'evaluate', result)}", file=sys.stderr)
    if args.report_to == "wandb":
        report_to_wandb(args.model, "eval", result)
    emit(result, result_tables(result), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
