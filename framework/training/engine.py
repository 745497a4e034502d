"""Process set-up and the DeepSpeed engine, shared by pretraining and fine-tuning.

Both :func:`framework.training.trainer.run_pretraining` and :func:`framework.evaluation.finetune.finetune`
turn a model into a DeepSpeed engine the same way, so a fine-tuning run gets exactly the hardware fallbacks,
"auto" filling and parameter groups of pretraining:

1. :func:`~framework.training.deepspeed_config.resolve_deepspeed_config` fills and fits the JSON file;
2. :func:`~framework.training.deepspeed_config.optimizer_param_groups` splits decayed and undecayed weights;
3. the framework's LAMB replaces FusedLamb where that cannot load (a client optimizer);
4. ``deepspeed.initialize``, then one log line with the batch geometry (rank 0).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np
import torch

from framework.config import TrainingConfig

logger = logging.getLogger("framework.training")


def setup_logging(rank: int) -> None:
    """Rank 0 logs at INFO; other ranks only warnings, with their rank in front. DeepSpeed's chatter is muted."""
    level = logging.INFO if rank == 0 else logging.WARNING
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if rank == 0 else f"[rank {rank}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stdout, force=True)
    try:
        from deepspeed.utils import logger as ds_logger

        ds_logger.setLevel(logging.WARNING)
    except ImportError:  # pragma: no cover - deepspeed is a hard dependency
        pass
    for noisy in ("jieba", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (initialisation of new weights and dropout)."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_engine(model: torch.nn.Module, training: TrainingConfig, world_size: int, num_train_examples: int,
                 is_main: bool = True, what: str = "examples") -> tuple[Any, Any]:
    """Wrap ``model`` in a DeepSpeed engine configured by ``training.deepspeed_config``.

    Args:
        model: the module to train (its parameters are split into weight-decay groups here).
        training: the run's training section: the DeepSpeed JSON and the overrides of its entries.
        world_size: data-parallel ranks.
        num_train_examples: training examples per epoch (turns ``training.epochs`` into optimiser steps).
        is_main: rank 0 logs the hardware switches, overrides and the geometry line; other ranks stay quiet.
        what: the unit of an example in the geometry line (``sequences``, ``examples``...).

    Returns:
        ``(engine, resolved)``: the ``DeepSpeedEngine`` and the
        :class:`~framework.training.deepspeed_config.ResolvedDeepSpeedConfig` it was built from (its
        ``total_steps``, ``micro_batch_size`` and ``precision`` drive the caller's loop and reports).
    """
    from framework.training.deepspeed_config import optimizer_param_groups, resolve_deepspeed_config

    ds = resolve_deepspeed_config(training.deepspeed_config, training, world_size, num_train_examples)
    groups = optimizer_param_groups(model)
    client_optimizer = ds.build_client_optimizer(groups)
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups if client_optimizer is None else None,
                                           optimizer=client_optimizer, config=ds.config)
    if is_main:
        ds.log_changes()
        logger.info("DeepSpeed %s: %s from %s, ZeRO-%d, %d rank(s) x micro-batch %d x accumulation %d = %d "
                    "%s per step, %d steps", deepspeed.__version__, ds.precision, ds.source, ds.zero_stage,
                    world_size, ds.micro_batch_size, ds.gradient_accumulation_steps, ds.config["train_batch_size"],
                    what, ds.total_steps)
    return engine, ds
