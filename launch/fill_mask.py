"""What a model predicts at each [MASK]; a run of masks is also decoded as one whole word.

    python launch/fill_mask.py --model runs/demo/model [--top-k 5] [--beam 8] [--json] TEXT [TEXT ...]
    python launch/fill_mask.py --model runs/demo/model "本文研究了[MASK][MASK]材料的力学性能"

Several texts may follow the options. For every [MASK]: the top-k tokens with their probabilities. A run of
two or more consecutive [MASK]s is also filled as one word: the best top-k fillings by beam search, left to
right, each step re-running the model with the run's earlier masks filled in, scored by summed
log-probability (see framework/evaluation/fill_mask.py). With --json the last line is one JSON object
{"model", "device", "top_k", "beam", "results": [one per text]}. Runs on CUDA when a GPU is visible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_parser() -> argparse.ArgumentParser:
    """The command line (cheap: torch and transformers are imported only once the arguments are checked)."""
    parser = argparse.ArgumentParser(prog="launch/fill_mask.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="text with one or more [MASK]")
    parser.add_argument("--model", required=True, help="exported model folder (OUTPUT/model) or hub name")
    parser.add_argument("--top-k", type=int, default=5, help="predictions per mask and words per run (default 5)")
    parser.add_argument("--beam", type=int, default=8, help="beam width for runs of masks (default 8; at least top-k)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse, load the model, fill every text's masks and print them; a bad model or text exits with 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error(f"--top-k {args.top_k}: must be at least 1")
    if args.beam < 1:
        parser.error(f"--beam {args.beam}: must be at least 1")

    from framework.training.hub import HubError, check_hub_names

    try:  # before torch: an unreachable hub answers in seconds, not after 50 s of retries and a traceback
        check_hub_names({"--model": args.model})
    except HubError as exc:
        print(f"launch/fill_mask.py: error: {exc}", file=sys.stderr)
        return 2
    from framework.evaluation.fill_mask import FillMaskError, check_model_folder, fill_mask, load_model, result_tables
    from framework.evaluation.output import emit

    try:
        check_model_folder(args.model)  # before the heavy imports: a typo answers at once
        import transformers

        transformers.logging.set_verbosity_error()  # a failed load must read as one line, not a page of warnings
        transformers.logging.disable_progress_bar()
        model, tokenizer = load_model(args.model)
        results = [fill_mask(model, tokenizer, text, top_k=args.top_k, beam=args.beam) for text in args.texts]
    except FillMaskError as err:
        print(f"launch/fill_mask.py: error: {err}", file=sys.stderr)
        return 2
    device = str(next(model.parameters()).device)
    tables = [table for result in results for table in result_tables(result)]
    emit({"model": args.model, "device": device, "top_k": args.top_k, "beam": max(args.beam, args.top_k),
          "results": results}, tables, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
