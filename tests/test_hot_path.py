"""The GPU-clean hot path (issue 9 item 3), checked on CPU: no host synchronisation in the training loop's
micro-batches, none in the foreach LAMB step, one fused overflow test in DeepSpeed's fp16/bf16 wrapper instead of
one per tensor, SDPA attention, and ``--compile`` through DeepSpeed's ``engine.compile()``.

On CPU nothing is asynchronous, so a "sync" is counted as what would be one on a GPU: a call that turns a tensor
into a Python value (``item``, ``tolist``, ``bool()``, ``float()``, ``int()``, ``cpu()``), attributed by the
stack to the loop, the LAMB step or the engine (DeepSpeed and the model). The CUDA-only tests at the end run the
same steps under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import logging
import os
import sys
import types
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from framework.config import DS_CONFIG_DIR, RunConfig, TrainingConfig, load_run_config
from framework.training.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
TRAINER = str(ROOT / "framework" / "training" / "trainer.py")
LAMB = str(ROOT / "framework" / "training" / "lamb.py")
HERE = str(Path(__file__).resolve())
TORCH_DIR = os.path.dirname(torch.__file__)
VOCAB = 300
def requires_cuda(test: Any) -> Any:
    """Mark a test ``gpu`` (launch/gpu_check.sh runs those) and skip it without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))

# The Tensor -> Python conversions that wait for the device when the tensor lives on a GPU.
SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu")


# --------------------------------------------------------------------------------------------- counting syncs


class SyncCounter:
    """Counts tensor-to-host conversions by who asked for them, while :meth:`counting` is active.

    Categories: ``loop`` (the innermost frame outside torch is in trainer.py's training path), ``log`` (inside
    ``_Loop._log_train``/``_save``/``_evaluate``: once per log step, allowed), ``lamb`` (inside
    framework/training/lamb.py) and ``engine`` (everything else: DeepSpeed, transformers, the model).
    """

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sites: Counter[tuple[str, str]] = Counter()
        self.active = False

    def _category(self) -> tuple[str, str]:
        frame = sys._getframe(2)
        innermost = None
        in_lamb = False
        while frame is not None:
            code = frame.f_code
            if code.co_filename == TRAINER and code.co_name in ("_log_train", "_save", "_evaluate"):
                return "log", code.co_name
            if code.co_filename == LAMB:
                in_lamb = True
            if innermost is None and not code.co_filename.startswith(TORCH_DIR) and code.co_filename != HERE:
                innermost = frame
            frame = frame.f_back
        site = "?"
        if innermost is not None:
            path = Path(innermost.f_code.co_filename)
            site = f"{path.parent.name}/{path.name}:{innermost.f_lineno}:{innermost.f_code.co_name}"
        if in_lamb:
            return "lamb", site
        if innermost is not None and innermost.f_code.co_filename == TRAINER:
            return "loop", site
        return "engine", site

    @contextmanager
    def patched(self) -> Iterator[SyncCounter]:
        """Install the counting wrappers on ``torch.Tensor`` (restored on exit); counting starts inactive."""
        originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

        def wrap(name: str, original: Any) -> Any:
            def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
                if self.active:
                    category, site = self._category()
                    self.counts[category] += 1
                    self.sites[(category, f"{name} at {site}")] += 1
                return original(tensor, *args, **kwargs)
            return counted

        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(name, original))
        try:
            yield self
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Count the conversions made inside the block."""
        self.active = True
        try:
            yield
        finally:
            self.active = False


# --------------------------------------------------------------------------------------------- a tiny run


def _init_single_process_group() -> None:
    """A world of one (gloo) for DeepSpeed, unless a previous test already started one."""
    import deepspeed

    if torch.distributed.is_initialized():
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)


def tiny_model(seed: int = 0) -> torch.nn.Module:
    """A 2-layer, hidden-32 ``BertForMaskedLMAtLabels`` (SDPA attention), initialised from ``seed``."""
    from transformers import BertConfig

    from framework.training.masked_lm import BertForMaskedLMAtLabels
    from framework.training.model import attention_implementation

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation=attention_implementation())
    return BertForMaskedLMAtLabels(config)


def synthetic_batches(count: int, micro: int = 4, length: int = 24, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Collator-shaped CPU micro-batches: padded rows, about 15% of the real tokens labelled."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(5, VOCAB, (micro, length), generator=g)
        lengths = torch.randint(length // 2, length + 1, (micro,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        ids = ids * mask
        labels = torch.where((torch.rand(micro, length, generator=g) < 0.15) & mask.bool(), ids, -100)
        labels[:, 1] = ids[:, 1]  # at least one label per row
        batches.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                        "labels": labels})
    return batches


def on_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch's tensors on ``device`` (for tests that call the engine directly)."""
    return {k: v.to(device) for k, v in batch.items()}


def build_tiny_engine(steps: int, accumulation: int, compile: bool = False, model_seed: int = 0):  # noqa: ANN201
    """A real DeepSpeed engine from ds_configs/cpu.json (bf16, LAMB as a client optimizer) via build_engine."""
    from framework.training.engine import build_engine

    _init_single_process_group()
    training = TrainingConfig(deepspeed_config=str(DS_CONFIG_DIR / "cpu.json"), max_steps=steps, micro_batch_size=4,
                              gradient_accumulation_steps=accumulation, warmup_steps=1, compile=compile)
    engine, ds = build_engine(tiny_model(model_seed), training, 1, 64, is_main=False)
    return engine, ds


class _Stub:
    """Sampler, collator, reporter and checkpoint manager stand-ins: the loop's only collaborators here."""

    def __init__(self) -> None:
        self.records: list[tuple[int, str, dict]] = []

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Nothing to reshuffle: the batches are fixed."""

    def log(self, step: int, split: str, record: dict) -> None:
        """Keep the record."""
        self.records.append((step, split, record))

    def save(self, engine: Any, state: Any, cfg: Any) -> None:
        """No checkpoint is written."""


def make_loop(engine: Any, batches: list[dict], steps: int, log_every: int, tmp_path: Path):  # noqa: ANN201
    """The trainer's real ``_Loop`` over fixed batches, without evaluation or checkpoints."""
    from framework.training.checkpoint import TrainState
    from framework.training.trainer import _Loop

    cfg = RunConfig()
    cfg.training.log_every, cfg.training.eval_every = log_every, 0
    cfg.checkpoint.save_every, cfg.checkpoint.output_dir = 0, str(tmp_path)
    stub = _Stub()
    loop = _Loop(cfg, engine, steps, TrainState(), stub, stub, batches, None, stub, stub, is_main=False)
    return loop, stub


# --------------------------------------------------------------------------------------------- the loop


def test_loop_makes_no_host_sync_between_log_steps(tmp_path: Path) -> None:
    """Count every conversion in the micro-batches between the first and the second log record."""
    from framework.training.trainer import _Loop

    accumulation, log_every, steps = 2, 2, 4
    engine, _ = build_tiny_engine(steps, accumulation)
    loop, stub = make_loop(engine, synthetic_batches(steps * accumulation), steps, log_every, tmp_path)
    counter = SyncCounter()
    logs = 0
    original_log = _Loop._log_train

    def log_train(self: Any, bar: Any) -> None:
        nonlocal logs
        counter.active = False  # the log record itself reads the window: allowed, once per window
        original_log(self, bar)
        logs += 1
        counter.active = logs == 1  # count from the first record to the second

    loop._log_train = types.MethodType(log_train, loop)
    with counter.patched():
        loop.run()
    assert logs == 2 and [r[0] for r in stub.records] == [2, 4]

    window_micro = log_every * accumulation  # micro-batches between the two records
    window_steps = log_every
    detail = dict(counter.sites)
    assert counter.counts["loop"] == 0, detail
    assert counter.counts["lamb"] == 0, detail
    # What DeepSpeed 0.19.8 and transformers 5 still do on this path (measured): transformers' SDPA mask check
    # (one bool per forward), and per optimiser step the fused overflow test (1), DeepSpeed's 1-byte overflow
    # flag read (1) and its per-group gradient norms (2 groups x float + item). One more conversion per
    # micro-batch anywhere (say, the loop reading the loss again) breaks this bound.
    bound = window_micro * 1 + window_steps * 6
    assert counter.counts["engine"] <= bound, detail
    # And the per-tensor overflow test is gone: it alone was one bool per parameter tensor (42 here) per step.
    overflow_tests = sum(n for (_, site), n in counter.sites.items() if site.endswith("has_overflow_serial"))
    assert overflow_tests == window_steps, detail


def test_logged_loss_is_the_window_mean_of_the_micro_batch_losses(tmp_path: Path) -> None:
    """The device-side sum gives exactly the old record: Python float sum of each ``loss.item()``, over micro."""
    accumulation, log_every, steps = 2, 2, 4
    engine, _ = build_tiny_engine(steps, accumulation)
    losses: list[float] = []
    original_backward = engine.backward

    def backward(loss: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        losses.append(float(loss.detach().float().item()))  # what the loop used to read per micro-batch
        return original_backward(loss, *args, **kwargs)

    engine.backward = backward
    batches = synthetic_batches(steps * accumulation)
    loop, stub = make_loop(engine, batches, steps, log_every, tmp_path)
    loop.run()
    window = log_every * accumulation
    expected = []
    for w in range(steps // log_every):
        total = 0.0
        for value in losses[w * window:(w + 1) * window]:
            total += value
        expected.append(total / window)
    assert [r[2]["loss"] for r in stub.records] == expected  # bit for bit
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    assert loop.state.tokens_seen == tokens and loop.state.epoch_position == sum(len(b["input_ids"]) for b in batches)


def test_host_counts_refuses_what_is_not_on_the_host() -> None:
    from framework.training.trainer import _Loop

    _host_counts = _Loop._host_counts
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert _host_counts({"attention_mask": mask}) == (2, 3)
    # A device tensor (meta stands in for a GPU here) has no .numpy() view: the count fails loudly instead of
    # silently synchronising.
    with pytest.raises(TypeError, match="numpy"):
        _host_counts({"attention_mask": mask.to("meta")})


# --------------------------------------------------------------------------------------------- LAMB


def bert_small_parameters(dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    """The 74 parameter tensors of the ``small`` preset's BertForMaskedLM (8k vocabulary), with random grads."""
    from transformers import BertConfig, BertForMaskedLM

    from framework.training.model import PRESETS

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=8000, **PRESETS["small"]))
    params = [torch.nn.Parameter(p.detach().clone().to(dtype)) for p in model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 0.01
    return params


@pytest.mark.parametrize("foreach", [True, False])
def test_lamb_step_makes_no_host_sync(foreach: bool) -> None:
    from framework.training.lamb import Lamb

    params = bert_small_parameters()
    assert len(params) == 74
    opt = Lamb([{"params": params[:40]}, {"params": params[40:], "weight_decay": 0.0}], lr=1e-3, foreach=foreach)
    opt.step()  # state initialisation
    counter = SyncCounter()
    with counter.patched(), counter.counting():
        opt.step()
        opt.step()
    assert sum(counter.counts.values()) == 0, dict(counter.sites)
    with counter.patched(), counter.counting():
        coeffs = opt.get_lamb_coeffs()  # reading the ratios is what synchronises, and only when asked
    assert len(coeffs) == 74 and counter.counts["lamb"] >= 1


# --------------------------------------------------------------------------------------------- fused overflow test


def _grad_cases() -> dict[str, list[torch.Tensor]]:
    """Gradient sets: finite, +inf, -inf, NaN, in fp16/bf16/fp32, with gradient-less and empty tensors."""
    def params(*grads: torch.Tensor | None) -> list[torch.Tensor]:
        out = []
        for g in grads:
            p = torch.nn.Parameter(torch.zeros(1 if g is None else g.shape, dtype=torch.float32 if g is None else g.dtype))
            p.grad = g
            out.append(p)
        return out

    torch.manual_seed(0)
    finite16 = torch.randn(64, 8).half() * 1000  # large fp16 values: their fp16 norm would overflow, fp32 not
    cases = {
        "finite": params(finite16, torch.randn(33).bfloat16(), torch.randn(5, 5), None, torch.zeros(0)),
        "fp16 max everywhere": params(torch.full((256, 256), 65504.0, dtype=torch.float16)),
        "all grads None": params(None, None),
    }
    for name, bad in (("+inf", float("inf")), ("-inf", float("-inf")), ("nan", float("nan"))):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            g = torch.randn(17, 3).to(dtype)
            g[4, 1] = bad
            cases[f"{name} {dtype}"] = params(torch.randn(8).half(), g, None)
    return cases


@pytest.mark.parametrize("case", list(_grad_cases()))
def test_fused_overflow_test_agrees_with_deepspeed(case: str) -> None:
    from deepspeed.runtime.utils import CheckOverflow

    from framework.training.engine import _fused_has_overflow_serial, grads_have_inf_or_nan

    params = _grad_cases()[case]
    checker = CheckOverflow([params])
    theirs = CheckOverflow.has_overflow_serial(checker, params)
    ours = _fused_has_overflow_serial(checker, params)
    assert ours == theirs == (("inf" in case) or ("nan" in case))
    flag = grads_have_inf_or_nan(params)
    assert flag.dtype == torch.bool and flag.dim() == 0


def test_fused_overflow_test_is_one_sync_instead_of_one_per_tensor() -> None:
    from deepspeed.runtime.utils import CheckOverflow

    from framework.training.engine import _fused_has_overflow_serial

    params = bert_small_parameters(torch.float16)
    checker = CheckOverflow([params])
    counter = SyncCounter()
    with counter.patched(), counter.counting():
        CheckOverflow.has_overflow_serial(checker, params)
    theirs = sum(counter.counts.values())
    counter.counts.clear()
    with counter.patched(), counter.counting():
        _fused_has_overflow_serial(checker, params)
    assert theirs == 74 and sum(counter.counts.values()) == 1


def test_fused_overflow_test_is_installed_and_skips_a_bad_step() -> None:
    """Through a real bf16 engine (DeepSpeed wraps LAMB in FP16_UnfusedOptimizer at ZeRO-0, as for fp16)."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    engine, _ = build_tiny_engine(steps=4, accumulation=1)
    assert isinstance(engine.optimizer, FP16_UnfusedOptimizer)
    checker = engine.optimizer.overflow_checker
    assert checker.has_overflow_serial.__func__.__name__ == "_fused_has_overflow_serial"

    batch = on_device(synthetic_batches(1)[0], engine.device)
    engine.backward(engine(**batch).loss)
    engine.step()
    assert not engine.optimizer.overflow
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    engine.backward(engine(**batch).loss)
    next(p for p in engine.module.parameters() if p.grad is not None).grad.view(-1)[0] = float("nan")
    engine.step()
    assert engine.optimizer.overflow  # the step was skipped...
    for n, p in engine.module.named_parameters():
        assert torch.equal(p.detach(), before[n]), n  # ...and no weight moved


def test_fused_overflow_test_falls_back_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    from framework.training.engine import install_fused_overflow_check

    assert install_fused_overflow_check(torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)) is False
    unexpected = object.__new__(FP16_UnfusedOptimizer)  # a wrapper of some other DeepSpeed version
    unexpected.overflow_checker = types.SimpleNamespace(check=lambda: False)
    with caplog.at_level(logging.INFO, logger="framework.training"):
        assert install_fused_overflow_check(unexpected) is False
    assert sum("keeping its per-tensor overflow test" in r.getMessage() for r in caplog.records) == 1


# --------------------------------------------------------------------------------------------- SDPA and compile


def test_models_are_built_and_loaded_with_sdpa(tmp_path: Path, tiny_tokenizer_dir: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from transformers import AutoTokenizer

    from framework.config import ModelConfig
    from framework.training.model import build_model

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    with caplog.at_level(logging.INFO, logger="framework.training.model"):
        scratch = build_model(ModelConfig(config="tiny"), tokenizer, seed=0)
    assert scratch.config._attn_implementation == "sdpa"
    assert sum("attention sdpa" in r.getMessage() for r in caplog.records) == 1
    # A checkpoint saved while running eager attention still loads with SDPA; the choice is not saved.
    scratch.config._attn_implementation = "eager"
    scratch.save_pretrained(tmp_path / "saved")
    assert "attn_implementation" not in (tmp_path / "saved" / "config.json").read_text()
    loaded = build_model(ModelConfig(name_or_path=str(tmp_path / "saved")), tokenizer, seed=0)
    assert loaded.config._attn_implementation == "sdpa"


def test_compile_flag_reaches_the_config() -> None:
    assert load_run_config(["--max-steps", "3"]).training.compile is False
    assert load_run_config(["--max-steps", "3", "--compile"]).training.compile is True


def test_compile_runs_through_engine_compile_with_identical_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    """``training.compile`` goes through DeepSpeed's ``engine.compile()``; dynamo's ``eager`` backend (graph
    capture without code generation, seconds on CPU) must give the uncompiled losses exactly, and the
    state-dict keys (checkpoints, export) must not change."""
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "get_compile_backend", lambda self: "eager")
    batches = synthetic_batches(3)

    def losses(compile: bool) -> tuple[list[float], list[str]]:
        engine, _ = build_tiny_engine(steps=3, accumulation=1, compile=compile)
        assert engine.is_compiled == compile
        out = []
        for batch in batches:
            loss = engine(**on_device(batch, engine.device)).loss
            engine.backward(loss)
            engine.step()
            out.append(loss.item())
        return out, list(engine.module.state_dict())

    torch._dynamo.reset()
    compiled, compiled_keys = losses(True)
    plain, plain_keys = losses(False)
    torch._dynamo.reset()
    assert compiled == plain
    assert compiled_keys == plain_keys and not any("_orig_mod" in k for k in compiled_keys)


@pytest.mark.slow
def test_compile_with_inductor_trains_a_few_steps() -> None:
    """The real backend (inductor, C++ code generation): about 45 s for the first step on 2 busy cores with a
    cold cache, seconds once inductor has cached the generated code (~/.cache, /tmp/torchinductor_*)."""
    torch._dynamo.reset()
    engine, _ = build_tiny_engine(steps=3, accumulation=1, compile=True)
    try:
        losses = []
        for batch in synthetic_batches(3):
            loss = engine(**on_device(batch, engine.device)).loss
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
    finally:
        torch._dynamo.reset()
    assert engine.is_compiled and all(np.isfinite(losses))


# --------------------------------------------------------------------------------------------- on a GPU


@contextmanager
def _sync_mode(mode: str | int) -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(mode)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


@requires_cuda
def test_cuda_loop_and_lamb_never_synchronise(tmp_path: Path) -> None:
    """The loop's own code and the LAMB step under ``set_sync_debug_mode("error")``; DeepSpeed's engine calls
    (forward, backward, step: the model's label gather, the fp16/bf16 wrapper's overflow decision) and the log
    record run with the mode off, since they synchronise by design."""
    from framework.training.lamb import Lamb
    from framework.training.trainer import _Loop

    engine, _ = build_tiny_engine(steps=4, accumulation=2)
    assert engine.device.type == "cuda"
    for name in ("forward", "backward", "step"):
        original = getattr(engine, name)

        def allowed(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with _sync_mode(0):
                return _original(*args, **kwargs)
        setattr(engine, name, allowed)
    lamb_step = Lamb.step

    def strict_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        with _sync_mode("error"):
            return lamb_step(self, *args, **kwargs)

    batches = [{k: v.pin_memory() for k, v in b.items()} for b in synthetic_batches(8)]
    loop, stub = make_loop(engine, batches, 4, 2, tmp_path)
    original_log = _Loop._log_train
    loop._log_train = types.MethodType(lambda self, bar: _with_mode_off(original_log, self, bar), loop)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Lamb, "step", strict_step)
        with _sync_mode("error"):
            loop.run()
    assert [r[0] for r in stub.records] == [2, 4]


def _with_mode_off(fn: Any, *args: Any) -> Any:
    with _sync_mode(0):
        return fn(*args)


@requires_cuda
def test_cuda_fused_overflow_test_agrees_with_deepspeed() -> None:
    from deepspeed.runtime.utils import CheckOverflow

    from framework.training.engine import _fused_has_overflow_serial

    for case, params in _grad_cases().items():
        cuda_params = []
        for p in params:
            q = torch.nn.Parameter(p.detach().cuda())
            q.grad = None if p.grad is None else p.grad.cuda()
            cuda_params.append(q)
        checker = CheckOverflow([cuda_params])
        assert _fused_has_overflow_serial(checker, cuda_params) == CheckOverflow.has_overflow_serial(
            checker, cuda_params), case


# --------------------------------------------------------------------------------------------- the benchmark


@pytest.mark.slow
def test_hot_path_benchmark_runs_and_counts_fewer_conversions() -> None:
    """``launch/benchmark.py hot-path`` at its smallest: both measurements, a JSON-ready result, tables."""
    import argparse
    import json

    from framework.benchmarks import hot_path

    parser = argparse.ArgumentParser()
    hot_path.add_arguments(parser)
    args = parser.parse_args(["--preset", "tiny", "--vocab-size", "500", "--lamb-rounds", "2", "--window-steps", "1",
                              "--window-rounds", "1", "--micro-batch", "2", "--seq-len", "16", "--threads", "1"])
    result = hot_path.run(args)
    json.dumps(result)
    lamb, window = result["lamb"], result["window"]
    assert lamb["tensors"] == 42 and lamb["syncs_per_step_foreach"] == 0
    assert window["fused_overflow_test"] and window["optimizer_wrapper"] == "FP16_UnfusedOptimizer"
    # before: a loss.item() per micro-batch and one bool per tensor in the overflow test; after: neither
    assert window["syncs_per_window_before"] - window["syncs_per_window_after"] >= 42 + 2
    assert [title for title, _ in hot_path.tables(result)][1].startswith("training window")
