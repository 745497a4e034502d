"""Fine-tune a pretrained model on a CSL task (DeepSpeed, one process or the deepspeed launcher).

    python launch/finetune.py --model DIR --task TASK --train FILE --dev FILE [--test FILE] [options]
    python launch/finetune.py --model DIR --task csl-discipline --fewclue-splits ../shared/data/fewclue/csldcp
    deepspeed --num_gpus 2 launch/finetune.py ...       # data sharded by rank, metrics summed across ranks

Tasks: csl-category (title -> 13 categories), csl-discipline (abstract -> 67 disciplines, FewCLUE CSLDCP),
csl-keywords (abstract + keywords -> all real or not, FewCLUE CSL). Files: CSL benchmark TSVs, FewCLUE JSON
lines or CSL papers (TSV/JSONL); the format is detected. Dev selects the epoch (and stops early with
--patience); test is evaluated once, with the selected weights. ``--json`` prints the result as one JSON
object on the last line. ``docs/evaluation.md`` has the details and the published FewCLUE reference numbers.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASK_NAMES = ("csl-category", "csl-discipline", "csl-keywords")  # framework.evaluation.tasks.TASKS, for --help


def build_parser() -> argparse.ArgumentParser:
    """The command line (no framework import: ``--help`` stays instant)."""
    p = argparse.ArgumentParser(prog="launch/finetune.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="pretrained model folder (OUTPUT/model of launch/pretrain.py)")
    p.add_argument("--task", required=True, help=f"one of {', '.join(TASK_NAMES)}")
    p.add_argument("--train", help="training file")
    p.add_argument("--dev", help="dev file: selects the epoch and drives early stopping")
    p.add_argument("--test", help="test file, evaluated once with the selected weights")
    p.add_argument("--fewclue-splits", metavar="DIR",
                   help="FewCLUE protocol: train on DIR/train_k.json, select on DIR/dev_k.json, k = 0..4")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--epochs", type=int, default=5, help="passes over the training data (default 5)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the DeepSpeed file's, or 5e-5)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="examples per rank per step (default: file's)")
    p.add_argument("--max-seq-len", type=int, default=256, help="tokens per example, truncating (default 256)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after N epochs without a better dev score (default: run every epoch)")
    p.add_argument("--select-metric", default="accuracy", help="dev metric that selects: accuracy or macro_f1")
    p.add_argument("--deepspeed-config", "--deepspeed_config", dest="deepspeed_config", default=None,
                   help="DeepSpeed JSON (default ds_configs/finetune.json)")
    p.add_argument("--output-dir", default=None, help="write finetune_result.json here")
    p.add_argument("--record", action="store_true", help="add the result to the model folder's model card")
    p.add_argument("--report-to", default="none", help="wandb or none (default none)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--verbose", action="store_true",
                   help="also show DeepSpeed's start-up lines (accelerator, op build, scheduler warning)")
    # Added by the deepspeed launcher; the rank comes from the environment.
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--deepspeed", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, validate and read the task files (exit 2 on a bad input), then fine-tune and print the result."""
    args = build_parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    # Until setup_logging replaces it: the warnings of reading the task files must show, build chatter must not.
    from framework.console import configure_logging, quiet_deepspeed

    quiet_deepspeed(args.verbose)  # before DeepSpeed is imported (framework/console.py)
    configure_logging(logging.WARNING, rank)
    from framework.config import ConfigError
    from framework.training.hub import check_hub_names

    try:  # before torch: an unreachable hub answers in seconds, not after 50 s of retries and a traceback
        check_hub_names({"--model": args.model})
    except ConfigError as exc:
        print(f"launch/finetune.py: error: {exc}", file=sys.stderr)
        return 2
    from framework.evaluation.finetune import FinetuneConfig, finetune, prepare_finetune, print_result
    from framework.evaluation.tasks import TaskError

    cfg = FinetuneConfig(model=args.model, task=args.task, train=args.train, dev=args.dev, test=args.test,
                         fewclue_splits=args.fewclue_splits, seed=args.seed, epochs=args.epochs, lr=args.lr,
                         micro_batch_size=args.micro_batch_size, max_seq_len=args.max_seq_len,
                         patience=args.patience, select_metric=args.select_metric,
                         deepspeed_config=args.deepspeed_config, output_dir=args.output_dir, record=args.record,
                         report_to=args.report_to, progress=not args.no_progress)
    try:
        prepared = prepare_finetune(cfg)
    except (ConfigError, TaskError) as exc:
        print(f"launch/finetune.py: error: {exc}", file=sys.stderr)
        return 2
    from framework.training.distributed import init_distributed
    from framework.training.engine import setup_logging

    rank, _ = init_distributed()
    setup_logging(rank)
    try:
        result = finetune(cfg, prepared)
    except (ConfigError, TaskError, FileNotFoundError) as exc:
        print(f"launch/finetune.py: error: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        print_result(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
