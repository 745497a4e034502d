"""Resuming with other settings: say what changed against the checkpoint, and keep the schedule's shape.

DeepSpeed saves only ``last_batch_iteration`` of a ``WarmupLR``/``WarmupDecayLR``; the rest of the schedule
(warm-up length, peak, total steps) is rebuilt from the *new* run's DeepSpeed config. A resume with a longer
``--max-steps`` therefore used to recompute the decay for the new length, and the learning rate jumped at the
resume (5.6e-4 back up to 1.5e-2 on a 100-step run resumed to 150).

What this module does instead (docs/training.md, "Resuming with other settings"):

* every checkpoint holds the schedule as it was run (:func:`capture_schedule`, in DeepSpeed's client state);
* on resume that schedule is put back (:func:`continue_schedule`) and then extended explicitly: a changed
  length keeps the warm-up, and past the warm-up the linear decay *continues from the current learning rate*
  down to the minimum at the new last step. The rate at the first resumed step is the one the run would have
  used next: no jump, and the optimiser moments (LAMB/Adam) keep matching the step sizes they were built on;
* a changed peak learning rate (``--lr``) is the one deliberate jump: the remaining schedule is scaled by
  new/old, and that is said;
* :func:`run_config_changes` names each setting that differs from the checkpoint's ``run_config.json``,
  one log line each.

Stretching the whole schedule to the new length was the alternative; it raises the rate of every step after
the resume (the decay restarts higher), which is the jump this avoids.
"""

from __future__ import annotations

import math
from typing import Any

# Settings whose change on resume gets a line of its own (dotted run-config keys).
WATCHED = (
    "training.max_steps", "training.epochs", "training.micro_batch_size", "training.gradient_accumulation_steps",
    "training.lr", "training.warmup_steps", "training.weight_decay", "training.gradient_clipping",
    "training.deepspeed_config", "training.seed", "data.seq_len", "data.packing", "masking.name", "masking.args",
)
_CONSEQUENCE = {
    "training.max_steps": "the run's length; the learning-rate schedule is extended as said below",
    "training.epochs": "the run's length; the learning-rate schedule is extended as said below",
    "training.micro_batch_size": "each optimiser step sees another number of examples; the schedule counts "
                                 "optimiser steps, so its shape is kept",
    "training.gradient_accumulation_steps": "each optimiser step sees another number of examples; the schedule "
                                            "counts optimiser steps, so its shape is kept",
    "training.lr": "the peak learning rate; the rest of the schedule is scaled by new/old (a deliberate jump)",
    "training.warmup_steps": "ignored: the checkpoint's warm-up is kept so the schedule's shape does not change",
}


def _tolerant_equal(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def capture_schedule(engine: Any) -> dict[str, Any] | None:
    """The learning-rate schedule as this run uses it, for a checkpoint's client state (``None`` without one).

    Plain numbers and lists only: checkpoints are read with ``torch.load(weights_only=True)``.
    """
    sched = getattr(engine, "lr_scheduler", None)
    if sched is None or not hasattr(sched, "max_lrs"):
        return None
    return {
        "type": type(sched).__name__,
        "warmup_num_steps": int(sched.warmup_num_steps),
        "total_num_steps": int(getattr(sched, "total_num_steps", 0) or 0),
        "min_lrs": [float(v) for v in sched.min_lrs],
        "max_lrs": [float(v) for v in sched.max_lrs],
        # The peak the run was configured with; max_lrs differs from it once a resume has extended the decay.
        "peak_lrs": [float(v) for v in getattr(sched, "framework_peak_lrs", sched.max_lrs)],
    }


def _set(sched: Any, warmup: int, total: int, min_lrs: list[float], max_lrs: list[float], peak: list[float]) -> None:
    sched.warmup_num_steps = max(2, int(warmup))  # WarmupLR's own floor
    sched.inverse_log_warm_up = 1.0 / math.log(sched.warmup_num_steps)
    if hasattr(sched, "total_num_steps"):
        sched.total_num_steps = int(total)
    sched.min_lrs, sched.max_lrs = list(min_lrs), list(max_lrs)
    sched.delta_lrs = [big - small for big, small in zip(sched.max_lrs, sched.min_lrs)]
    sched.framework_peak_lrs = list(peak)


def continue_schedule(engine: Any, saved: dict[str, Any] | None, step: int) -> list[str]:
    """Put the checkpoint's schedule back into ``engine.lr_scheduler`` and extend it to the new run's length.

    Args:
        engine: the DeepSpeed engine, its scheduler already loaded (``last_batch_iteration`` restored) and built
            from the new run's config (so its ``total_num_steps`` and ``max_lrs`` are what the new run asks for).
        saved: :func:`capture_schedule` of the checkpoint, or ``None`` for a checkpoint written before it existed.
        step: optimiser steps done at the checkpoint.

    Returns:
        What was done, one sentence each, for the log.
    """
    sched = getattr(engine, "lr_scheduler", None)
    if sched is None or not hasattr(sched, "max_lrs"):
        return []
    if saved is None or saved.get("type") != type(sched).__name__ or len(saved["max_lrs"]) != len(sched.max_lrs):
        return ["the checkpoint holds no learning-rate schedule of this type; the schedule is rebuilt from the "
                "new settings (the learning rate may jump at this resume)"]
    notes: list[str] = []
    new_total = int(getattr(sched, "total_num_steps", 0) or 0)
    new_peak = [float(v) for v in sched.max_lrs]
    warmup, total = saved["warmup_num_steps"], saved["total_num_steps"]
    min_lrs, max_lrs, peak = list(saved["min_lrs"]), list(saved["max_lrs"]), list(saved["peak_lrs"])
    _set(sched, warmup, total, min_lrs, max_lrs, peak)
    before = [float(v) for v in sched.get_lr()] if sched.last_batch_iteration >= 0 else list(min_lrs)

    if not all(_tolerant_equal(a, b) for a, b in zip(new_peak, peak)):
        ratio = [n / p if p else 1.0 for n, p in zip(new_peak, peak)]
        max_lrs = [lo + (hi - lo) * r for lo, hi, r in zip(min_lrs, max_lrs, ratio)]
        notes.append(f"peak learning rate {peak[0]:.3g} -> {new_peak[0]:.3g}: the rest of the schedule is scaled by "
                     f"{ratio[0]:.3g} (the learning rate jumps from {before[0]:.3g} to {before[0] * ratio[0]:.3g})")
        peak = new_peak
        _set(sched, warmup, total, min_lrs, max_lrs, peak)
        before = [float(v) for v in sched.get_lr()] if sched.last_batch_iteration >= 0 else list(min_lrs)

    if hasattr(sched, "total_num_steps") and new_total != total:
        it = int(sched.last_batch_iteration)
        if it < warmup or new_total <= it:
            # In the warm-up the rate does not depend on the length; past the new end the loop stops anyway.
            _set(sched, warmup, new_total, min_lrs, max_lrs, peak)
            notes.append(f"schedule length {total} -> {new_total} steps: the warm-up of {warmup} steps is kept and "
                         f"the linear decay after it spans steps {warmup}..{new_total}")
        else:
            # Past the warm-up: WarmupDecayLR gives lr(s) = min + delta * (T - s) / (T - W). Choose delta for the
            # new T so that lr(it) is today's rate: the decay carries on from here to min at the new last step.
            delta = [(b - lo) * (new_total - warmup) / (new_total - it) for b, lo in zip(before, min_lrs)]
            max_lrs = [lo + d for lo, d in zip(min_lrs, delta)]
            _set(sched, warmup, new_total, min_lrs, max_lrs, peak)
            notes.append(f"schedule length {total} -> {new_total} steps: the linear decay continues from "
                         f"{before[0]:.3g} at step {step} down to {min_lrs[0]:.3g} at step {new_total} "
                         "(no jump; docs/training.md, \"Resuming with other settings\")")
            if before[0] <= min_lrs[0] + 1e-12:
                notes.append("the checkpoint's learning rate is already at its minimum, so the extra steps train at "
                             "it; for a fresh schedule start a new run from the exported model (--model OUTPUT/model)")
    if sched.last_batch_iteration >= 0:
        # The optimizer's param groups still hold the rate the old schedule picked for the next step.
        for group, lr in zip(sched.optimizer.param_groups, sched.get_lr()):
            group["lr"] = lr
        sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]
    return notes


def _get(mapping: dict[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".")
    return (mapping.get(section) or {}).get(key)


def run_config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One sentence per :data:`WATCHED` setting that differs between the checkpoint's run config and this run's.

    Both are :meth:`RunConfig.to_dict` mappings; the checkpoint's ``run_config.json`` is one.
    """
    notes = []
    for dotted in WATCHED:
        old, new = _get(saved, dotted), _get(current, dotted)
        if old == new:
            continue
        what = _CONSEQUENCE.get(dotted, "different from the checkpoint's run")
        notes.append(f"{dotted}: {old!r} in the checkpoint's run config, {new!r} now: {what}")
    return notes
