"""framework.training.schedule: a resume with another length or peak keeps the schedule's shape (issue 11, item 3).

DeepSpeed's real ``WarmupDecayLR`` over a plain SGD optimizer stands in for the engine: it is what the engine
steps, and what DeepSpeed saves of it (``last_batch_iteration``) is all a checkpoint held before this fix.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from deepspeed.runtime.lr_schedules import WarmupDecayLR

from framework.training.schedule import capture_schedule, continue_schedule, run_config_changes


def engine_with(total: int, warmup: int, peak: float = 5e-2) -> SimpleNamespace:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=peak)
    sched = WarmupDecayLR(optimizer, total_num_steps=total, warmup_min_lr=0.0, warmup_max_lr=peak,
                          warmup_num_steps=warmup, warmup_type="linear")
    return SimpleNamespace(lr_scheduler=sched, optimizer=optimizer)


def run_steps(engine: SimpleNamespace, steps: int) -> list[float]:
    """The rate each optimiser step uses (DeepSpeed: optimizer.step() with the group's lr, then scheduler.step())."""
    used = []
    for _ in range(steps):
        used.append(engine.optimizer.param_groups[0]["lr"])
        engine.lr_scheduler.step()
    return used


def resume(old: SimpleNamespace, total: int, warmup: int, peak: float = 5e-2) -> tuple[SimpleNamespace, list[str]]:
    """A new engine built for the new settings, loaded as DeepSpeed loads a checkpoint of ``old``."""
    saved, position = capture_schedule(old), old.lr_scheduler.state_dict()
    new = engine_with(total, warmup, peak)
    new.optimizer.param_groups[0]["lr"] = old.optimizer.param_groups[0]["lr"]  # the optimizer state's lr
    new.lr_scheduler.load_state_dict(position)
    return new, continue_schedule(new, saved, position["last_batch_iteration"] + 1)


def test_longer_run_continues_the_decay_without_a_jump() -> None:
    old = engine_with(total=100, warmup=10)
    before = run_steps(old, 90)  # resumed from the step-90 checkpoint of a 100-step run
    new, notes = resume(old, total=150, warmup=15)  # --max-steps 150: "auto" warm-up would be 15 steps now
    after = run_steps(new, 60)
    slope = before[-2] - before[-1]
    # The first resumed step uses the rate the old run would have used next, within float tolerance ...
    assert after[0] == pytest.approx(before[-1] - slope, rel=1e-9)
    # ... and the decay carries on linearly from there to 0 at the new end (scheduler iteration 150; the step-90
    # checkpoint is at iteration 89, DeepSpeed's scheduler counting from -1).
    assert after == pytest.approx([after[0] * (61 - i) / 61 for i in range(60)], rel=1e-9)
    assert len(notes) == 1 and "continues from" in notes[0] and "150" in notes[0]
    # Without the fix DeepSpeed rebuilds the decay for 150 steps: 5e-2 * 60/135 = 2.2e-2 instead of ~5e-3.
    rebuilt = engine_with(total=150, warmup=15)
    rebuilt.lr_scheduler.load_state_dict(old.lr_scheduler.state_dict())
    rebuilt.lr_scheduler.step(90)
    assert rebuilt.optimizer.param_groups[0]["lr"] > 3 * after[0]


def test_a_second_resume_keeps_the_extended_schedule() -> None:
    first = engine_with(total=100, warmup=10)
    run_steps(first, 90)
    second, _ = resume(first, total=150, warmup=15)
    used = run_steps(second, 30)
    third, notes = resume(second, total=150, warmup=15)  # same settings as the checkpoint: nothing to say
    assert notes == []
    assert run_steps(third, 1)[0] == pytest.approx(used[-1] - (used[-2] - used[-1]), rel=1e-9)


def test_resume_in_the_warmup_keeps_the_warmup() -> None:
    old = engine_with(total=100, warmup=10)
    before = run_steps(old, 5)
    new, notes = resume(old, total=200, warmup=20)
    after = run_steps(new, 7)
    assert after[0] == pytest.approx(before[-1] + 5e-3, rel=1e-9)  # still 5e-2/10 a step
    assert after[6] == pytest.approx(5e-2)  # the peak after 10 warm-up iterations, as before
    assert "warm-up of 10 steps is kept" in notes[0]


def test_a_new_peak_scales_the_rest_and_says_so() -> None:
    old = engine_with(total=100, warmup=10)
    before = run_steps(old, 50)
    new, notes = resume(old, total=100, warmup=10, peak=1e-2)
    after = run_steps(new, 1)
    assert after[0] == pytest.approx((before[-1] - (before[-2] - before[-1])) / 5, rel=1e-9)
    assert "scaled by 0.2" in notes[0]


def test_a_checkpoint_without_a_schedule_is_said() -> None:
    new = engine_with(total=150, warmup=15)
    assert "may jump" in continue_schedule(new, None, 100)[0]


def test_run_config_changes_one_line_each() -> None:
    saved = {"training": {"max_steps": 100, "lr": None, "micro_batch_size": 16}, "data": {"seq_len": 64}}
    now = {"training": {"max_steps": 150, "lr": None, "micro_batch_size": 8}, "data": {"seq_len": 64}}
    notes = run_config_changes(saved, now)
    assert len(notes) == 2
    assert notes[0].startswith("training.max_steps: 100") and "150" in notes[0]
    assert "micro_batch_size" in notes[1] and "shape is kept" in notes[1]
    assert math.isfinite(len(notes))
