"""The training hot path before and after issue 9 item 3: the LAMB step, and a whole training window.

Two measurements, each candidate pair timed in alternating rounds (:mod:`framework.benchmarks.timing`):

* **LAMB step**: :class:`framework.training.lamb.Lamb` with ``foreach=False`` (the per-tensor loop it had before)
  and with ``foreach=True`` (multi-tensor ops), on the parameter tensors of ``BertForMaskedLM`` of a preset
  (``small``: 74 tensors, 5.4M parameters with the 8k study vocabulary) with fixed random gradients.
* **Training window**: ``--window-steps`` optimiser steps of a real DeepSpeed engine built by
  :func:`framework.training.engine.build_engine` from ``ds_configs/cpu.json`` (bf16 on CPU, so LAMB runs inside
  DeepSpeed's ``FP16_UnfusedOptimizer`` exactly as on the 2080 Ti's fp16 path). *Before*: the previous loop body
  (``loss.item()`` per micro-batch), DeepSpeed's per-tensor overflow test and the per-tensor LAMB. *After*: the
  trainer's real ``_Loop`` (loss summed on the device, read once per window), the fused overflow test and the
  foreach LAMB. Both engines start from the same weights and see the same micro-batches (random token ids
  with padding and 15% labels, shaped like the collator's).

Each also counts the tensor-to-host conversions of one window (``item``, ``tolist``, ``bool()``, ``float()``,
``int()``, ``cpu()``): on CPU they cost little, on a GPU each is a synchronisation that stalls the queue.

Run it as ``python launch/benchmark.py hot-path`` or, standalone, ``python -m framework.benchmarks.hot_path``.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from framework.benchmarks.timing import alternating_medians, machine, machine_line

DESCRIPTION = "LAMB step and training window: per-tensor + per-micro-batch syncs (before) vs foreach + fused (after)"
PRESETS = {
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
}
SYNC_METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The hot-path benchmark's options."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small",
                        help="model shape for both measurements (default small: 74 tensors)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="vocabulary rows (default 8000, the study's)")
    parser.add_argument("--lamb-rounds", type=int, default=20, help="timed LAMB steps per candidate (default 20)")
    parser.add_argument("--window-steps", type=int, default=4,
                        help="optimiser steps per training window (default 4); 0 skips the window measurement")
    parser.add_argument("--window-rounds", type=int, default=5, help="timed windows per candidate (default 5)")
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per micro-batch (default 8)")
    parser.add_argument("--seq-len", type=int, default=64, help="padded micro-batch length (default 64)")
    parser.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimiser step (default 2)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default 0: torch's default); 1 avoids threads waiting for "
                             "each other on a machine busy with other jobs")


# --------------------------------------------------------------------------------------------- helpers


class _SyncCount:
    """Counts tensor-to-host conversions made while :meth:`counting` is active (all callers alike)."""

    def __init__(self) -> None:
        self.count = 0

    @contextmanager
    def counting(self) -> Iterator[None]:
        """Patch the conversion methods of ``torch.Tensor`` for the block, restore them after."""
        import torch

        originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

        def wrap(original: Any) -> Any:
            def counted(tensor: Any, *args: Any, **kwargs: Any) -> Any:
                self.count += 1
                return original(tensor, *args, **kwargs)
            return counted

        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(original))
        try:
            yield
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)


def _bert(preset: str, vocab_size: int, seed: int = 0) -> Any:
    """A freshly initialised ``BertForMaskedLMAtLabels`` of ``preset`` (SDPA attention, as training builds it)."""
    import torch
    from transformers import BertConfig

    from framework.training.masked_lm import BertForMaskedLMAtLabels
    from framework.training.model import attention_implementation

    torch.manual_seed(seed)
    extra = {"attn_implementation": attention_implementation()} if attention_implementation() else {}
    return BertForMaskedLMAtLabels(BertConfig(vocab_size=vocab_size, **PRESETS[preset], **extra))


def _batches(count: int, micro: int, length: int, vocab_size: int, seed: int = 0) -> list[dict[str, Any]]:
    """Collator-shaped CPU micro-batches: rows padded from half to full length, 15% of real tokens labelled."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        ids = torch.randint(5, vocab_size, (micro, length), generator=g)
        lengths = torch.randint(length // 2, length + 1, (micro,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        ids = ids * mask
        labels = torch.where((torch.rand(micro, length, generator=g) < 0.15) & mask.bool(), ids, -100)
        labels[:, 1] = ids[:, 1]
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": labels})
    if torch.cuda.is_available():
        out = [{k: v.pin_memory() for k, v in b.items()} for b in out]  # as build_loader does on CUDA
    return out


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------- LAMB step


def _lamb_step(args: argparse.Namespace) -> dict[str, Any]:
    """Per-tensor vs foreach LAMB steps on the preset's parameter list; medians and conversions per step."""
    import torch

    from framework.training.lamb import Lamb

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    template = [p.detach().to(device) for p in _bert(args.preset, args.vocab_size).parameters()]
    g = torch.Generator(device="cpu").manual_seed(1)
    grads = [(torch.randn(p.shape, generator=g) * 0.01).to(device) for p in template]
    optimizers = {}
    for name, foreach in (("per_tensor", False), ("foreach", True)):
        params = [torch.nn.Parameter(p.clone()) for p in template]
        for p, grad in zip(params, grads):
            p.grad = grad
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        optimizers[name] = Lamb([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4,
                                weight_decay=0.01, foreach=foreach)

    def step(opt: Lamb) -> Any:
        def one() -> None:
            opt.step()
            _synchronize()
        return one

    timings = alternating_medians({name: step(opt) for name, opt in optimizers.items()}, 1, args.lamb_rounds)
    syncs = {}
    for name, opt in optimizers.items():
        counter = _SyncCount()
        with counter.counting():
            opt.step()
        syncs[name] = counter.count
    return {
        "device": str(device), "tensors": len(template), "parameters": sum(p.numel() for p in template),
        "rounds": args.lamb_rounds,
        "ms_per_tensor": timings["per_tensor"].median * 1000, "ms_foreach": timings["foreach"].median * 1000,
        "spread_per_tensor": timings["per_tensor"].spread, "spread_foreach": timings["foreach"].spread,
        "speedup": timings["per_tensor"].median / timings["foreach"].median,
        "syncs_per_step_per_tensor": syncs["per_tensor"], "syncs_per_step_foreach": syncs["foreach"],
    }


# --------------------------------------------------------------------------------------------- training window


def _old_window(engine: Any, batches: list[dict[str, Any]]) -> None:
    """The loop body before issue 9 item 3 (one ``loss.item()`` per micro-batch), then its log record."""
    from framework.training.distributed import all_reduce_sum
    from framework.training.trainer import MODEL_INPUTS, _grad_norm, _loss_scale, _memory_gb

    window = {"loss": 0.0, "micro": 0, "tokens": 0, "samples": 0}
    epoch_position = tokens_seen = 0
    for batch in batches:
        inputs = {k: batch[k].to(engine.device) for k in MODEL_INPUTS}
        loss = engine(**inputs).loss
        engine.backward(loss)
        engine.step()
        epoch_position += int(batch["input_ids"].shape[0])
        tokens_seen += int(batch["attention_mask"].sum())  # a CPU tensor: no device sync
        window["loss"] += float(loss.detach().float().item())
        window["micro"] += 1
        window["tokens"] += int(batch["attention_mask"].sum())
        window["samples"] += int(batch["input_ids"].shape[0])
    loss_sum, micro, _, _ = all_reduce_sum([window["loss"], window["micro"], window["tokens"], window["samples"]],
                                           engine.device)
    _ = (loss_sum / max(micro, 1), float(engine.get_lr()[0]), _grad_norm(engine), _loss_scale(engine),
         _memory_gb(engine.device))
    _synchronize()


def _new_window(engine: Any, batches: list[dict[str, Any]], steps: int) -> None:
    """The trainer's real ``_Loop`` for ``steps`` optimiser steps over ``batches``, one log record at the end."""
    from framework.benchmarks.train import run_training_loop

    run_training_loop(engine, batches, steps)


def _training_window(args: argparse.Namespace) -> dict[str, Any]:
    """Old vs new loop on two identically initialised engines; medians and conversions per window."""
    from framework.config import DS_CONFIG_DIR, TrainingConfig
    from framework.training.distributed import init_distributed
    from framework.training.engine import build_engine

    init_distributed()
    steps = args.window_steps
    batches = _batches(steps * args.grad_accum, args.micro_batch, args.seq_len, args.vocab_size)
    training = TrainingConfig(deepspeed_config=str(Path(DS_CONFIG_DIR) / "cpu.json"), max_steps=10**6,
                              micro_batch_size=args.micro_batch, gradient_accumulation_steps=args.grad_accum,
                              warmup_steps=1)
    engines = {}
    for name in ("before", "after"):
        engine, ds = build_engine(_bert(args.preset, args.vocab_size), training, 1, 10**6, is_main=False)
        engines[name] = engine
    before = engines["before"]
    # Undo the hot-path fixes on the "before" engine: DeepSpeed's per-tensor overflow test (the class's own
    # method again) and the per-tensor LAMB loop.
    checker = getattr(before.optimizer, "overflow_checker", None)
    fused_installed = checker is not None and "has_overflow_serial" in vars(checker)
    if fused_installed:
        del checker.has_overflow_serial
    basic = getattr(before.optimizer, "optimizer", before.optimizer)
    if hasattr(basic, "foreach"):
        basic.foreach = False

    candidates = {"before": lambda: _old_window(before, batches),
                  "after": lambda: _new_window(engines["after"], batches, steps)}
    timings = alternating_medians(candidates, steps, args.window_rounds)
    syncs = {}
    for name, run_once in candidates.items():
        counter = _SyncCount()
        with counter.counting():
            run_once()
        syncs[name] = counter.count
    micro_batches = steps * args.grad_accum
    return {
        "device": str(engines["after"].device), "precision": ds.precision,
        "optimizer_wrapper": type(engines["after"].optimizer).__name__, "fused_overflow_test": fused_installed,
        "steps_per_window": steps, "micro_batches_per_window": micro_batches, "micro_batch": args.micro_batch,
        "seq_len": args.seq_len, "rounds": args.window_rounds,
        "s_before": timings["before"].median, "s_after": timings["after"].median,
        "spread_before": timings["before"].spread, "spread_after": timings["after"].spread,
        "speedup": timings["before"].median / timings["after"].median,
        "syncs_per_window_before": syncs["before"], "syncs_per_window_after": syncs["after"],
        "tokens_per_window": sum(int(b["attention_mask"].sum()) for b in batches),
        "tensors": sum(1 for _ in engines["after"].module.parameters()),
    }


# --------------------------------------------------------------------------------------------- entry points


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both measurements (the window unless ``--window-steps 0``); returns a JSON-ready result."""
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    info = machine()
    result: dict[str, Any] = {"benchmark": "hot-path", "machine": info, "preset": args.preset,
                              "vocab_size": args.vocab_size, "threads": torch.get_num_threads(),
                              "torch": torch.__version__}
    result["lamb"] = _lamb_step(args)
    if args.window_steps > 0:
        result["window"] = _training_window(args)
    return result


def tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """One table per measurement: before, after, speed-up and host conversions."""
    lamb = result["lamb"]
    out = [(
        f"LAMB step, {result['preset']} preset: {lamb['tensors']} tensors, {lamb['parameters'] / 1e6:.1f}M parameters, "
        f"{lamb['device']}, {result['threads']} threads; median of {lamb['rounds']} alternating steps\n"
        f"{machine_line(result['machine'])}",
        [{"LAMB": "per-tensor loop (before)", "ms per step": f"{lamb['ms_per_tensor']:.2f}",
          "spread": f"{lamb['spread_per_tensor']:.0%}", "host conversions per step": lamb["syncs_per_step_per_tensor"]},
         {"LAMB": "foreach (after)", "ms per step": f"{lamb['ms_foreach']:.2f}",
          "spread": f"{lamb['spread_foreach']:.0%}", "host conversions per step": lamb["syncs_per_step_foreach"],
          "speed-up": f"{lamb['speedup']:.2f}x"}],
    )]
    window = result.get("window")
    if window:
        out.append((
            f"training window: {window['steps_per_window']} steps = {window['micro_batches_per_window']} micro-batches "
            f"of {window['micro_batch']} x {window['seq_len']}, {window['precision']} on {window['device']} "
            f"({window['optimizer_wrapper']}, {window['tensors']} tensors); median of {window['rounds']} alternating "
            f"windows",
            [{"loop": "before: item() per micro-batch, per-tensor overflow test and LAMB",
              "s per window": f"{window['s_before']:.3f}", "spread": f"{window['spread_before']:.0%}",
              "host conversions per window": window["syncs_per_window_before"]},
             {"loop": "after: device-side loss, fused overflow test, foreach LAMB",
              "s per window": f"{window['s_after']:.3f}", "spread": f"{window['spread_after']:.0%}",
              "host conversions per window": window["syncs_per_window_after"], "speed-up": f"{window['speedup']:.2f}x"}],
        ))
    return out


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m framework.benchmarks.hot_path [options] [--json]``."""
    parser = argparse.ArgumentParser(prog="python -m framework.benchmarks.hot_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON object on the last line")
    args = parser.parse_args(argv)
    from framework.evaluation.output import emit

    result = run(args)
    emit(result, tables(result), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
