"""Continued pretraining of a Chinese BERT with DeepSpeed.

    deepspeed launch/pretrain.py [--config run.yaml] [--deepspeed_config ds_configs/X.json] [overrides]
    python launch/pretrain.py [...]          # one process, no launcher needed
    python launch/pretrain.py                # the demo: embedded corpus, tiny model, entity_wwm, 2-8 minutes on 2 cores

Examples::

    # one RTX 2080 Ti, continuing chinese-roberta-wwm-ext (fp16, LAMB)
    deepspeed --num_gpus 1 launch/pretrain.py --data data/csl --model hfl/chinese-roberta-wwm-ext \\
        --deepspeed_config ds_configs/2080ti.json --output-dir runs/csl-2080ti
    # resume the latest complete checkpoint
    deepspeed --num_gpus 1 launch/pretrain.py ... --resume auto

Run ``python launch/pretrain.py --help`` for every flag; ``docs/configs.md`` explains the DeepSpeed configs.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from framework.config import ConfigError, load_run_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Validate the configuration, then train; a configuration error exits with status 2 and one message."""
    import logging
    import os

    from framework.console import configure_logging, quiet_deepspeed

    # Before DeepSpeed is imported: its start-up lines stay out of the console unless --verbose asks for them,
    # and what the start waits for (the CPU op build, the rendezvous) is logged in the run's format.
    quiet_deepspeed(verbose="--verbose" in (sys.argv[1:] if argv is None else argv))
    rank = int(os.environ.get("RANK", "0") or 0)
    configure_logging(logging.INFO if rank == 0 else logging.WARNING, rank)
    try:
        cfg = load_run_config(argv)
    except ConfigError as exc:
        print(f"launch/pretrain.py: configuration error: {exc}", file=sys.stderr)
        return 2
    from framework.training.hub import HubError, check_hub_names

    try:  # before torch and any rank's work: an unreachable hub answers in seconds, not after 50 s of retries
        check_hub_names({"--model": cfg.model.name_or_path, "--tokenizer": cfg.model.tokenizer})
    except HubError as exc:
        print(f"launch/pretrain.py: error: {exc}", file=sys.stderr)
        return 2
    from framework.data.readers import BadInputError
    from framework.masking.base import MaskingConfigError
    from framework.training.checkpoint import CheckpointError
    from framework.training.safe_load import UnsafeFileError
    from framework.training.trainer import NonFiniteError, run_pretraining

    try:
        result = run_pretraining(cfg)
    except (ConfigError, MaskingConfigError) as exc:
        print(f"launch/pretrain.py: configuration error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, BadInputError) as exc:  # a model, tokenizer or corpus is missing or unreadable
        print(f"launch/pretrain.py: {exc}", file=sys.stderr)
        return 2
    except CheckpointError as exc:  # --resume named a damaged checkpoint, or none of the run's verifies
        print(f"launch/pretrain.py: {exc}", file=sys.stderr)
        return 2
    except NonFiniteError as exc:  # the training diverged; its last finite checkpoint is kept
        print(f"launch/pretrain.py: training stopped: {exc}", file=sys.stderr)
        return 3
    except UnsafeFileError as exc:  # a checkpoint or --model file pickles code (docs/security.md); nothing ran
        print(f"launch/pretrain.py: error: {exc}", file=sys.stderr)
        return 2
    if result.exported_model is not None or result.loss_plot is not None:
        # Only what the run wrote: --no-export leaves no model, a run without matplotlib no plot.
        parts = [f"done: {result.steps} steps", f"checkpoint {result.checkpoint}"]
        parts += [f"model {result.exported_model}"] if result.exported_model is not None else []
        parts += [f"metrics {result.output_dir / 'metrics.jsonl'}"]
        parts += [f"plot {result.loss_plot}"] if result.loss_plot is not None else []
        print("; ".join(parts), flush=True)
    return 0


if __name__ == "__main__":
    status = main()
    if status == 0:
        # Leave the process group together (see shutdown_distributed), here and not in main(): a caller that runs
        # main() in its own process keeps the group it made. After an error the other ranks may be gone.
        from framework.training.distributed import shutdown_distributed

        shutdown_distributed()
    raise SystemExit(status)
