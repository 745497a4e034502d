"""NaN and infinite losses and weights on real DeepSpeed engines: the step is skipped and counted (bf16 through
DeepSpeed's wrapper, fp32 through the framework's guard), a run of them stops the run with its last finite
checkpoint intact, and non-finite weights are never saved nor exported."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from framework.config import DS_CONFIG_DIR, RunConfig, TrainingConfig
from framework.training.checkpoint import CheckpointManager, TrainState
from test_hot_path import _init_single_process_group, synthetic_batches, tiny_model

pytestmark = pytest.mark.slow


def engine_for(precision: str, tmp_path: Path, steps: int = 8) -> Any:
    """A tiny engine from ds_configs/cpu.json in ``bf16`` or ``fp32`` (ZeRO-0, LAMB, clipping 1.0)."""
    from framework.training.engine import build_engine

    _init_single_process_group()
    values = json.loads((DS_CONFIG_DIR / "cpu.json").read_text(encoding="utf-8"))
    values["bf16"] = {"enabled": precision == "bf16"}
    path = tmp_path / f"cpu-{precision}.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    training = TrainingConfig(deepspeed_config=str(path), max_steps=steps, micro_batch_size=4,
                              gradient_accumulation_steps=1, warmup_steps=1)
    return build_engine(tiny_model(0), training, 1, 64, is_main=False)[0]


class Parts:
    """Sampler, collator and reporter stand-ins; a real CheckpointManager saves into ``tmp``."""

    def __init__(self) -> None:
        self.records: list[dict] = []

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Fixed batches."""

    def log(self, step: int, split: str, record: dict) -> None:
        """Keep the record."""
        self.records.append(record)


def run_loop(engine: Any, batches: list[dict], steps: int, tmp_path: Path, log_every: int = 2,
             save_every: int = 0, max_bad_steps: int = 10) -> tuple[Parts, CheckpointManager]:
    from framework.training.trainer import _Loop

    cfg = RunConfig()
    cfg.training.log_every, cfg.training.eval_every, cfg.training.max_bad_steps = log_every, 0, max_bad_steps
    cfg.checkpoint.save_every, cfg.checkpoint.output_dir = save_every, str(tmp_path)
    parts, checkpoints = Parts(), CheckpointManager(tmp_path / "checkpoints", keep_last=3, rank=0)
    start = int(engine.global_steps)
    _Loop(cfg, engine, start + steps, TrainState(step=start), parts, parts, batches, None, checkpoints, parts,
          is_main=False).run()
    return parts, checkpoints


def poison_loss(engine: Any, bad_calls: set[int], value: float = math.nan) -> None:
    """Make the engine's forward return a ``value`` loss (NaN by default) on the given call numbers."""
    original, calls = engine.forward, [0]

    def forward(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if calls[0] in bad_calls:
            out.loss = out.loss * value
        calls[0] += 1
        return out
    engine.forward = forward


def weights(engine: Any) -> list[torch.Tensor]:
    return [p.detach().float().clone() for p in engine.module.parameters()]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_non_finite_loss_skips_its_step_and_is_counted(precision: str, value: float, tmp_path: Path) -> None:
    engine = engine_for(precision, tmp_path)
    batches = synthetic_batches(4)
    run_loop(engine, batches[:1], 1, tmp_path / "warm")  # one good step first
    before = weights(engine)
    poison_loss(engine, {0})
    parts, _ = run_loop(engine, batches[1:2], 1, tmp_path / "bad", log_every=1)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(engine)))  # the NaN step changed nothing
    record = parts.records[-1]
    assert record["nonfinite_losses"] == 1 and record["skipped_steps"] == 1 and math.isnan(record["loss"])
    parts, _ = run_loop(engine, batches[2:4], 2, tmp_path / "good", log_every=2)  # and training goes on
    assert all(torch.isfinite(w).all() for w in weights(engine))
    assert parts.records[-1]["skipped_steps"] == 0 and math.isfinite(parts.records[-1]["loss"])
    assert math.isfinite(parts.records[-1]["grad_norm"])  # fp32 used to log null here


def test_a_window_mixing_good_and_bad_losses_averages_the_good_ones(tmp_path: Path) -> None:
    engine = engine_for("bf16", tmp_path)
    poison_loss(engine, {1})
    parts, _ = run_loop(engine, synthetic_batches(4), 4, tmp_path, log_every=4)
    record = parts.records[-1]
    assert record["nonfinite_losses"] == 1 and math.isfinite(record["loss"]) and record["skipped_steps"] == 1


def test_fp32_nan_gradients_are_skipped_by_the_guard(tmp_path: Path) -> None:
    """A finite loss with a NaN gradient: DeepSpeed's fp32 path would write NaN into every weight."""
    from framework.training.engine import install_nonfinite_step_guard

    engine = engine_for("fp32", tmp_path)
    assert not install_nonfinite_step_guard(engine)  # installed once already, by build_engine
    original = engine.backward

    def backward(loss: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = original(loss, *args, **kwargs)
        next(engine.module.parameters()).grad.view(-1)[0] = math.nan
        return out
    engine.backward = backward
    before = weights(engine)
    parts, _ = run_loop(engine, synthetic_batches(1), 1, tmp_path, log_every=1)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(engine)))
    assert parts.records[-1]["skipped_steps"] == 1 and math.isnan(parts.records[-1]["grad_norm"])


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_run_of_bad_steps_stops_the_run_and_keeps_the_finite_checkpoint(precision: str, tmp_path: Path) -> None:
    from framework.training.trainer import NonFiniteError

    engine = engine_for(precision, tmp_path, steps=12)
    _, checkpoints = run_loop(engine, synthetic_batches(2), 2, tmp_path, save_every=2)
    good = checkpoints.latest()
    assert good is not None and good.name == "step-00000002"
    poison_loss(engine, set(range(100)))
    with pytest.raises(NonFiniteError, match="3 optimiser steps in a row") as info:
        run_loop(engine, synthetic_batches(8, seed=1), 8, tmp_path, log_every=1, save_every=2, max_bad_steps=3)
    # A checkpoint written during the bad run holds the last good step's weights (its updates were skipped).
    latest = checkpoints.latest()
    assert str(latest) in str(info.value) and latest.name in ("step-00000002", "step-00000004")
    from framework.training.checkpoint import verify_checkpoint

    assert verify_checkpoint(latest) is None
    states = torch.load(latest / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert all(torch.isfinite(t).all() for t in states.values() if torch.is_floating_point(t))


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    from framework.training.trainer import NonFiniteError

    engine = engine_for("bf16", tmp_path)
    _, checkpoints = run_loop(engine, synthetic_batches(1), 1, tmp_path, save_every=1)
    good = checkpoints.latest()
    with torch.no_grad():
        next(engine.module.parameters()).view(-1)[0] = math.inf  # weights that diverged under a finite loss
    with pytest.raises(NonFiniteError, match="not finite, so they were not saved"):
        run_loop(engine, synthetic_batches(1, seed=2), 1, tmp_path, save_every=1)
    assert checkpoints.latest() == good and not list((tmp_path / "checkpoints").glob(".saving-*"))


def test_export_refuses_non_finite_weights(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    from framework.training.export import ExportError, export_from_engine

    model = tiny_model(0)
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight[3, 0] = math.nan
    with pytest.raises(ExportError, match="NaN or infinite"):
        export_from_engine(model, str(tiny_tokenizer_dir), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_weights_are_finite_sees_nan_and_inf_and_not_large_values() -> None:
    from framework.training.engine import weights_are_finite

    model = tiny_model(0).to(torch.bfloat16)
    assert weights_are_finite(model)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = 1e30  # squares overflow fp32; the weights are still finite
    assert weights_are_finite(model)
    for bad in (math.nan, math.inf):
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] = bad
        assert not weights_are_finite(model)


def test_max_bad_steps_is_validated() -> None:
    from framework.config import ConfigError, load_run_config

    with pytest.raises(ConfigError, match="--max-bad-steps"):
        load_run_config(["--max-bad-steps", "0"])
