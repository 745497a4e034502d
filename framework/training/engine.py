"""Process set-up and the DeepSpeed engine, shared by pretraining and fine-tuning.

Both :func:`framework.training.trainer.run_pretraining` and :func:`framework.evaluation.finetune.finetune`
turn a model into a DeepSpeed engine the same way, so a fine-tuning run gets exactly the hardware fallbacks,
"auto" filling and parameter groups of pretraining:

1. :func:`~framework.training.deepspeed_config.resolve_deepspeed_config` fills and fits the JSON file;
2. :func:`~framework.training.deepspeed_config.optimizer_param_groups` splits decayed and undecayed weights;
3. the framework's LAMB replaces FusedLamb where that cannot load (a client optimizer);
4. ``deepspeed.initialize``, then one log line with the batch geometry (rank 0);
5. the hot-path fixes DeepSpeed 0.19 needs: the fp16/bf16 wrapper's per-tensor overflow test becomes one fused
   test (:func:`install_fused_overflow_check`), and ``training.compile`` compiles the model through
   ``engine.compile()``;
6. where DeepSpeed has no overflow test at all (fp32 at ZeRO-0, a plain optimizer), a step with a NaN or infinite
   gradient would write NaN into every weight: :func:`install_nonfinite_step_guard` makes that step skipped and
   counted exactly as DeepSpeed's fp16/bf16 wrappers do.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from framework.config import TrainingConfig

logger = logging.getLogger("framework.training")


def setup_logging(rank: int) -> None:
    """Rank 0 logs at INFO; other ranks only warnings, with their rank in front. DeepSpeed's chatter is muted, and
    configured secrets are scrubbed from every record (:func:`framework.secrets.install_log_redaction`)."""
    from framework.console import configure_logging

    configure_logging(logging.INFO if rank == 0 else logging.WARNING, rank)
    # Every log line of the run passes the secret filter: a key that reaches a message (a path, a run name,
    # an exception from a library) is scrubbed like the saved configs are.
    from framework.secrets import install_log_redaction

    install_log_redaction()
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
    install_fused_overflow_check(engine.optimizer, is_main)
    install_nonfinite_step_guard(engine)
    if getattr(training, "compile", False):
        compile_engine(engine, is_main)
    return engine, ds


def compile_engine(engine: Any, is_main: bool = True, backend: str | None = None) -> None:
    """``torch.compile`` the engine's model the way DeepSpeed 0.19 supports: ``engine.compile()``.

    ``engine.compile()`` calls ``nn.Module.compile`` on the wrapped module, which compiles it in place: parameter
    names, state-dict keys, DeepSpeed checkpoints and the export stay those of the uncompiled model (wrapping the
    model in ``torch.compile()`` before ``deepspeed.initialize`` would prefix every key with ``_orig_mod.``).
    ``backend`` defaults to the accelerator's (inductor on CUDA and CPU). Graphs are built on the first
    micro-batches (and again for each new padded length), so the first steps are slow.
    """
    from deepspeed.accelerator import get_accelerator

    backend = backend or get_accelerator().get_compile_backend()
    engine.compile(backend=backend)
    if is_main:
        logger.info("torch.compile: model compiled in place by DeepSpeed's engine.compile() (backend %s); the first "
                    "steps include graph compilation", backend)


# --------------------------------------------------------------------------------------------- fused overflow check


def grads_have_inf_or_nan(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Whether any gradient of ``params`` holds an inf or a NaN, as one 0-dim bool tensor on the gradients' device.

    One ``torch._foreach_norm`` per (device, dtype) bucket and one ``isfinite(...).all()`` over the stacked norms:
    nothing is read back to the host here, the caller decides when to pay the single synchronisation.

    The test is on fp32 L2 norms rather than on max-abs: a sum propagates NaN and inf whatever the reduction
    kernel does with NaN in a max, which is what an overflow test must be sure of. It flags one more case than
    DeepSpeed's per-tensor ``amax``/``amin`` test: finite gradients whose fp32 sum of squares overflows (entries
    beyond about 1e19, impossible in fp16). ``FP16_UnfusedOptimizer`` computes exactly that fp32 norm right after
    the overflow test and skips the step when it is not finite, so the step is skipped in the same cases either way.
    Sparse gradients are tested on their stored values, as DeepSpeed does (implicit zeros cannot overflow).
    """
    buckets: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for param in params:
        grad = param.grad
        if grad is None:
            continue
        if grad.is_sparse:
            grad = grad._values()
        buckets.setdefault((grad.device, grad.dtype), []).append(grad)
    norms: list[torch.Tensor] = []
    for (_, dtype), grads in buckets.items():
        # Half-precision norms would overflow long before their elements do: accumulate and return in fp32.
        out_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
        norms.extend(torch._foreach_norm(grads, 2.0, dtype=out_dtype))
    if not norms:
        return torch.zeros((), dtype=torch.bool)
    device = norms[0].device
    return torch.isfinite(torch.stack([n.to(device) for n in norms])).all().logical_not()


def _fused_has_overflow_serial(self: Any, params: Iterable[torch.Tensor]) -> bool:
    """``CheckOverflow.has_overflow_serial`` with one fused test and one host synchronisation for all tensors."""
    return bool(grads_have_inf_or_nan(params))


def install_fused_overflow_check(optimizer: Any, is_main: bool = True) -> bool:
    """Replace the per-tensor overflow test of DeepSpeed's ``FP16_UnfusedOptimizer`` by :func:`grads_have_inf_or_nan`.

    At ZeRO-0 with a client optimizer (our LAMB), DeepSpeed 0.19 wraps it for fp16 (the 2080 Ti recipe) and for
    bf16 in ``FP16_UnfusedOptimizer``, whose ``overflow_checker.has_overflow_serial`` tests the gradients one tensor
    at a time and turns each answer into a Python bool: one host-device synchronisation per parameter tensor
    (about 200 for BERT-base) in every optimiser step. Only that method of this one optimizer's checker is
    replaced (an instance attribute, no global patch); DeepSpeed's ``has_overflow`` around it, with its
    all-reduce of the flag, is kept.

    Returns:
        True when installed; False for another optimizer (fp32, ZeRO, DeepSpeed's own fused optimizers), or,
        with one log line, when this DeepSpeed version's wrapper lacks the expected methods (its own check stays).
    """
    try:
        from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer
    except ImportError:
        return False
    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return False
    checker = getattr(optimizer, "overflow_checker", None)
    if not (callable(getattr(checker, "has_overflow_serial", None)) and callable(getattr(checker, "has_overflow", None))
            and isinstance(getattr(checker, "params", None), list)):
        if is_main:
            import deepspeed

            logger.info("DeepSpeed %s: FP16_UnfusedOptimizer has no overflow_checker.has_overflow_serial; keeping its "
                        "per-tensor overflow test (one host sync per tensor and step)", deepspeed.__version__)
        return False
    checker.has_overflow_serial = types.MethodType(_fused_has_overflow_serial, checker)
    return True


# --------------------------------------------------------------------------------------------- non-finite step guard


def install_nonfinite_step_guard(engine: Any) -> bool:
    """Skip (and count) an optimiser step whose gradients are not finite, where DeepSpeed itself does not.

    DeepSpeed's fp16 and bf16 wrappers and its ZeRO optimizers test the gradients for inf/NaN and skip the step
    (``engine.skipped_steps`` counts it, the learning-rate schedule waits). A plain optimizer (fp32 at ZeRO-0)
    has no such test: one NaN loss makes every weight NaN. This guard gives that optimizer the same contract:
    its ``step`` first takes the global gradient norm (the one the engine's clipping computed, else one fused
    norm), sets ``optimizer.overflow`` (which the engine reads to count the skip and hold the schedule) and
    ``optimizer._global_grad_norm`` (so fp32 runs log a ``grad_norm``), and returns without updating when the
    norm is not finite. The finiteness test is one host synchronisation per step, on the fp32 path only.

    Returns:
        True when installed; False where DeepSpeed's optimizer already tests for overflow.
    """
    optimizer = engine.optimizer
    if optimizer is None or hasattr(optimizer, "overflow"):
        return False
    from deepspeed.runtime.utils import clip_grad_norm_

    kept: dict[str, Any] = {}

    def clip_and_keep_norm() -> None:
        # The engine's own clip_fp32_gradients discards the norm it computes; keep it for the guard and the log.
        kept["norm"] = clip_grad_norm_(parameters=engine.module.parameters(), max_norm=engine.gradient_clipping(),
                                       mpu=engine.mpu)

    engine.clip_fp32_gradients = clip_and_keep_norm
    original_step = optimizer.step

    def guarded_step(*args: Any, **kwargs: Any) -> Any:
        norm = kept.pop("norm", None)
        if norm is None:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            norm = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0))) if grads
                    else torch.zeros(()))
        norm = norm.reshape(())
        optimizer._global_grad_norm = norm
        optimizer.overflow = not bool(torch.isfinite(norm))
        if optimizer.overflow:
            return None
        return original_step(*args, **kwargs)

    optimizer.step = guarded_step
    optimizer.overflow = False  # also marks the guard as installed (a second call finds the attribute)
    return True


def weights_are_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (one fused max-abs per dtype, one host synchronisation).

    Max-abs (the inf-norm) rather than an L2 norm: squares of large but finite weights must not overflow into a
    false alarm, and a NaN still propagates through the max.
    """
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for param in module.parameters():
        by_dtype.setdefault(param.dtype, []).append(param.detach())
    for dtype, params in by_dtype.items():
        out = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
        norms = torch._foreach_norm(params, float("inf"), dtype=out)
        if not bool(torch.isfinite(torch.stack([n.to(norms[0].device) for n in norms])).all()):
            return False
    return True
