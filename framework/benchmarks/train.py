"""Training throughput: padded vs packed batches, dense vs labelled-only MLM head, on real CSL sentences.

Every candidate is the trainer's own step: the real masking strategy and batch builders
(:class:`~framework.batching.collator.MaskingCollator`, :class:`~framework.batching.packing.PackingCollator`),
a DeepSpeed engine from :func:`framework.training.engine.build_engine` and the training loop
(``framework.training.trainer._Loop``), fed by a loader that times its own collation. A candidate is a batch
layout and a head:

* layouts: ``padded128`` (one sentence a row, every row padded to ``--seq-len``: the seed run's layout),
  ``padded`` (one sentence a row, padded to the micro-batch's longest: the CPU default) and ``packed``
  (several sentences a row up to ``--seq-len`` with a block-diagonal mask: ``--packing``, the GPU default);
* heads: ``dense`` (transformers' ``BertForMaskedLM``, the vocabulary projection at every position) and
  ``sparse`` (:class:`~framework.training.masked_lm.BertForMaskedLMAtLabels`, only at labelled positions).

A micro-batch is ``--micro-batch`` sentences in every layout (packing needs fewer rows for them), so all
candidates do the same useful work per step and real (non-padding) tokens per second compare directly. They
run in alternating rounds on the same sentences (:mod:`framework.benchmarks.timing`); the two heads have one
engine each (same initial weights), shared by the layouts.

Reported per candidate: real tokens and sentences per second, step time, the share of the step spent building
batches in the loop's process (masking, padding or packing, pinning: an upper bound, since loader workers
overlap it with compute), the real-token fraction of the batches, peak device memory (CUDA), and model-FLOPs
utilisation on real tokens: ``real tokens/s x FLOPs per real token / peak``, with both factors printed. FLOPs
per real token count the work the model needs for a token of its sentence, the same for every layout:
``3 x 2 x (L x (4h^2 + 2h x ff) + labelled fraction x (h^2 + hV)) + 3 x 4 x L x h x c``, where ``c`` is the
token-weighted mean sentence length (the context a token attends to). Work on padding, on other sentences of a
packed row, or of the head at unlabelled positions, is not counted: that is what utilisation on real tokens
means. The peak is ``--peak-tflops`` if given, else the GPU's datasheet dense tensor peak for the precision
(a small table below), else a dense matmul in that precision timed on this device (named as such).

The headline ratio ``packed_sparse_vs_padded_dense`` is ``packed-sparse`` over ``padded128-dense`` real tokens
per second, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from framework.benchmarks.masking import add_data_arguments, positive_int
from framework.benchmarks.timing import alternating_medians, machine, machine_line

DESCRIPTION = "training throughput: padded vs packed batches, dense vs labelled-only head, MFU on real tokens"
LAYOUTS = ("padded128", "padded", "packed")
HEADS = ("dense", "sparse")
CANDIDATES = tuple(f"{layout}-{head}" for layout in LAYOUTS for head in HEADS)
REFERENCE, BEST = "padded128-dense", "packed-sparse"

# Dense tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets, matched on the device name. fp16 on
# GeForce cards is the rate with fp32 accumulation, which PyTorch uses.
GPU_PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9}),   # SXM; the PCIe card is lower: pass --peak-tflops
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
    ("4090", {"bf16": 165.2, "fp16": 165.2, "fp32": 82.6}),
    ("3090", {"bf16": 71.0, "fp16": 71.0, "fp32": 35.6}),
    ("2080 Ti", {"fp16": 53.8, "fp32": 13.4}),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The train benchmark's options."""
    parser.add_argument("--preset", choices=("tiny", "small", "base"), default="small",
                        help="model shape (framework.training.model.PRESETS; default small, 4 layers x 256; "
                             "base is BERT-base)")
    parser.add_argument("--deepspeed-config", default=None,
                        help="DeepSpeed JSON (default: what training picks, ds_configs/cpu.json on CPU, "
                             "ds_configs/2080ti.json on a GPU)")
    parser.add_argument("--precision", choices=("config", "bf16", "fp16", "fp32"), default="config",
                        help="override the JSON's precision (default config: keep it)")
    parser.add_argument("--seq-len", type=positive_int, default=128,
                        help="row length of padded128 and packed rows; longer sentences are dropped (default 128)")
    parser.add_argument("--micro-batch", type=positive_int, default=32, help="sentences per micro-batch (default 32)")
    parser.add_argument("--grad-accum", type=positive_int, default=1,
                        help="micro-batches per optimiser step; packing packs a whole step together (default 1)")
    parser.add_argument("--steps", type=positive_int, default=2, help="optimiser steps per timed run (default 2)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="timed rounds, each running every candidate once, rotating the order (default 3)")
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help=f"comma-separated layout-head pairs (default all: {','.join(CANDIDATES)}); the "
                             f"headline ratio needs {REFERENCE} and {BEST}")
    parser.add_argument("--masking", default="entity_wwm", help="masking strategy (default entity_wwm)")
    add_data_arguments(parser, "fast BERT tokenizer folder (e.g. a downloaded chinese-roberta-wwm-ext)")
    parser.add_argument("--examples", type=positive_int, default=4096,
                        help="sentences to read (they are reused cyclically; default 4096)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak TFLOP/s for the MFU (default: the datasheet table for known GPUs, "
                             "else a matmul timed on this device)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default 0: torch's default)")
    parser.add_argument("--seed", type=int, default=0, help="masking, data order and initialisation seed (default 0)")


# --------------------------------------------------------------------------------------------- pieces


def parse_candidates(text: str) -> list[tuple[str, str]]:
    """``"packed-sparse,padded128-dense"`` -> ``[("packed", "sparse"), ("padded128", "dense")]``; bad names raise."""
    out = []
    for name in (c.strip() for c in text.split(",")):
        if not name:
            continue
        layout, _, head = name.rpartition("-")
        if layout not in LAYOUTS or head not in HEADS:
            raise SystemExit(f"--candidates: {name!r} is not a candidate; use some of {', '.join(CANDIDATES)}")
        out.append((layout, head))
    if not out:
        raise SystemExit("--candidates: give at least one candidate")
    return out


def flops_per_real_token(hidden: int, layers: int, intermediate: int, vocab: int, context: float,
                         labelled_fraction: float) -> dict[str, float]:
    """Training FLOPs the model needs per real token (forward x 3), split into their parts (see the module doc)."""
    encoder = 2.0 * layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 4.0 * layers * hidden * context
    head = 2.0 * labelled_fraction * (hidden * hidden + hidden * vocab)
    return {"encoder": 3 * encoder, "attention": 3 * attention, "head": 3 * head,
            "total": 3 * (encoder + attention + head)}


def datasheet_peak(device_name: str, precision: str) -> float | None:
    """The GPU's datasheet dense peak in TFLOP/s for ``precision``, or None for a device not in the table."""
    for key, peaks in GPU_PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peaks.get(precision)
    return None


def measured_matmul_peak(device: Any, dtype: Any, size: int = 2048, repeats: int = 5) -> float:
    """TFLOP/s of the best of ``repeats`` dense ``size x size`` matmuls in ``dtype`` on ``device``."""
    import torch

    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        (a @ b).sum()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e12


def _deepspeed_json(args: argparse.Namespace, folder: Path, cuda: bool) -> Path:
    """The DeepSpeed JSON to build engines from, rewritten in ``folder`` when ``--precision`` overrides it."""
    from framework.training.deepspeed_config import default_deepspeed_config_path, load_deepspeed_json

    source = Path(args.deepspeed_config) if args.deepspeed_config else default_deepspeed_config_path(cuda)
    if args.precision == "config":
        return source
    values = load_deepspeed_json(source)
    fp16 = dict(values.get("fp16") or {"loss_scale": 0, "initial_scale_power": 16})
    fp16["enabled"] = args.precision == "fp16"
    values["fp16"] = fp16
    values["bf16"] = {"enabled": args.precision == "bf16"}
    path = folder / f"{source.stem}-{args.precision}.json"
    path.write_text(json.dumps(values, indent=1), encoding="utf-8")
    return path


class NoOpLoopParts:
    """The sampler, collator, reporter and checkpoint manager the training loop calls, doing nothing.

    ``records`` keeps what the loop logged, so its own ``real_token_fraction`` can be read back.
    """

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The batches are fixed by the benchmark."""

    def log(self, step: int, split: str, record: dict) -> None:
        """Keep the loop's record."""
        self.records.append(record)

    def save(self, engine: Any, state: Any, cfg: Any) -> None:
        """No checkpoint."""


class TimedBatches:
    """An iterable of training micro-batches built from step groups of examples, timing its own batch building.

    Args:
        builder: ``group -> list of micro-batches`` (a step collator) or ``group -> batch`` (a plain collator).
        groups: the step groups (lists of examples) to serve, in order.
        pin: pin each batch's memory (as ``build_loader`` does on CUDA), inside the clock.
    """

    def __init__(self, builder: Any, groups: Sequence[Sequence[Any]], pin: bool) -> None:
        self.builder, self.groups, self.pin = builder, groups, pin
        self.seconds = 0.0
        self.real_tokens = self.positions = self.sentences = self.labelled = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from framework.batching.groups import batch_counts

        for group in self.groups:
            started = time.perf_counter()
            built = self.builder(group)
            batches = built if isinstance(built, list) else [built]
            if self.pin:
                batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
            self.seconds += time.perf_counter() - started
            for batch in batches:
                sentences, tokens, positions = batch_counts(batch)
                self.sentences += sentences
                self.real_tokens += tokens
                self.positions += positions
                self.labelled += int((batch["labels"] != -100).sum())
                yield batch


def run_training_loop(engine: Any, batches: Any, steps: int) -> None:
    """The trainer's loop for ``steps`` optimiser steps over ``batches`` (no evaluation, no checkpoint)."""
    import torch

    from framework.config import RunConfig
    from framework.training.checkpoint import TrainState
    from framework.training.trainer import _Loop

    cfg = RunConfig()
    cfg.training.log_every, cfg.training.eval_every, cfg.checkpoint.save_every = 10**9, 0, 0
    start = int(engine.global_steps)
    parts = NoOpLoopParts()
    _Loop(cfg, engine, start + steps, TrainState(step=start), parts, parts, batches, None, parts, parts,
          is_main=False).run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --------------------------------------------------------------------------------------------- entry points


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build the data, the engines and the candidates; time them alternately; return the figures."""
    import numpy as np
    import torch
    from transformers import BertForMaskedLM

    from framework.batching.collator import MaskingCollator
    from framework.batching.packing import PackingCollator
    from framework.benchmarks.masking import load_examples
    from framework.config import TrainingConfig
    from framework.masking import MaskingContext, build_strategy
    from framework.training.distributed import init_distributed
    from framework.training.engine import build_engine
    from framework.training.masked_lm import BertForMaskedLMAtLabels
    from framework.training.model import attention_implementation, bert_config

    candidates = parse_candidates(args.candidates)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    info = machine()
    init_distributed()
    group_size = args.micro_batch * args.grad_accum
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        examples, dataset, _, summary = load_examples(args, Path(tmp))
        context = MaskingContext(vocab=dataset.vocab_info, entities=dataset.entity_table())
        ds_json = _deepspeed_json(args, Path(tmp), cuda)
        strategy = build_strategy(args.masking, None, context)
        collator = MaskingCollator(strategy, context.vocab, seed=args.seed)
        # Masking may add tokens (deletion removes some): keep the sentences whose masked form fits a row.
        masked_lengths = [len(m) for m in collator.mask(examples)]
        fitting = [ex for ex, n in zip(examples, masked_lengths) if n <= args.seq_len]
        order = np.random.default_rng(args.seed).permutation(len(fitting))
        pool = [fitting[i] for i in order]
        per_run = args.steps * group_size
        if len(pool) < per_run:
            raise SystemExit(f"{len(pool)} sentences of at most {args.seq_len} tokens cannot fill {args.steps} steps "
                             f"of {group_size}; lower --micro-batch/--steps or raise --examples")
        runs_needed = 1 + args.rounds  # the warm-up, then one per round
        schedule = [[pool[(r * per_run + i) % len(pool)] for i in range(per_run)] for r in range(runs_needed)]

        attention = attention_implementation()
        config = bert_config(args.preset, dataset.vocab_info.vocab_size, context.vocab.pad_token_id,
                             attn_implementation=attention)
        torch.manual_seed(args.seed)
        template = BertForMaskedLMAtLabels(config)
        training = TrainingConfig(deepspeed_config=str(ds_json), max_steps=10**6, micro_batch_size=args.micro_batch,
                                  gradient_accumulation_steps=args.grad_accum, warmup_steps=1, lr=1e-4)
        engines: dict[str, Any] = {}
        precision = None
        for head in sorted({h for _, h in candidates}):
            model = (BertForMaskedLM(config) if head == "dense" else BertForMaskedLMAtLabels(config))
            model.load_state_dict(template.state_dict())
            engines[head], resolved = build_engine(model, training, 1, 10**6, is_main=False)
            precision = resolved.precision
        del template

        def builder(layout: str) -> Any:
            if layout == "packed":
                return PackingCollator(collator, args.seq_len, args.grad_accum)
            pad = MaskingCollator(strategy, context.vocab, seed=args.seed,
                                  max_length=args.seq_len if layout == "padded128" else None)
            return lambda group: [pad(group[i:i + args.micro_batch]) for i in range(0, len(group), args.micro_batch)]

        stats: dict[str, dict[str, Any]] = {}

        def candidate(layout: str, head: str) -> Any:
            name = f"{layout}-{head}"
            build = builder(layout)
            stats[name] = {"runs": 0, "data_seconds": [], "run_seconds": [], "real_tokens": [], "positions": [],
                           "sentences": [], "labelled": [], "peak_memory_gb": None}

            def one() -> None:
                st = stats[name]
                batches = TimedBatches(build, [g[i:i + group_size] for g in [schedule[st["runs"]]]
                                               for i in range(0, len(g), group_size)], pin=cuda)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                started = time.perf_counter()
                run_training_loop(engines[head], batches, args.steps)
                st["run_seconds"].append(time.perf_counter() - started)
                st["data_seconds"].append(batches.seconds)
                for key in ("real_tokens", "positions", "sentences", "labelled"):
                    st[key].append(getattr(batches, key))
                if cuda:
                    peak = torch.cuda.max_memory_allocated() / 2**30
                    st["peak_memory_gb"] = max(st["peak_memory_gb"] or 0.0, peak)
                st["runs"] += 1
            return one

        timings = alternating_medians({f"{l}-{h}": candidate(l, h) for l, h in candidates}, args.steps, args.rounds)

    # Model FLOPs per real token, from the sentences a run sees (the same for every candidate).
    lengths = np.array([len(m) for m in collator.mask([ex for g in schedule[1:] for ex in g])], dtype=np.float64)
    context_len = float((lengths**2).sum() / lengths.sum())
    first = stats[next(iter(stats))]
    labelled_fraction = sum(first["labelled"][1:]) / max(sum(first["real_tokens"][1:]), 1)
    flops = flops_per_real_token(config.hidden_size, config.num_hidden_layers, config.intermediate_size,
                                 config.vocab_size, context_len, labelled_fraction)
    device = engines[next(iter(engines))].device
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops, "--peak-tflops"
    elif cuda and datasheet_peak(torch.cuda.get_device_name(), precision):
        peak = datasheet_peak(torch.cuda.get_device_name(), precision)
        peak_source = f"datasheet dense {precision} peak of {torch.cuda.get_device_name()}"
    else:
        peak = measured_matmul_peak(device, dtype)
        peak_source = f"measured: best 2048x2048 {precision} matmul on {device.type}"

    rows: dict[str, dict[str, Any]] = {}
    for name, timing in timings.items():
        # The warm-up run (index 0) is left out; each timed run's own counts over its own clock.
        st = {k: np.array(v[1:], dtype=np.float64) if isinstance(v, list) else v for k, v in stats[name].items()}
        tokens_per_s = float(np.median(st["real_tokens"] / st["run_seconds"]))
        rows[name] = {
            "layout": name.rsplit("-", 1)[0], "head": name.rsplit("-", 1)[1],
            "real_tokens_per_s": tokens_per_s, "samples_per_s": float(np.median(st["sentences"] / st["run_seconds"])),
            "step_time_s": float(np.median(st["run_seconds"])) / args.steps, "spread": timing.spread,
            "data_loading_share": float(np.median(st["data_seconds"] / st["run_seconds"])),
            "real_token_fraction": float(st["real_tokens"].sum() / max(st["positions"].sum(), 1)),
            "labelled_fraction": float(st["labelled"].sum() / max(st["real_tokens"].sum(), 1)),
            "peak_memory_gb": st["peak_memory_gb"],
            "model_tflops_per_s": tokens_per_s * flops["total"] / 1e12,
            "mfu": tokens_per_s * flops["total"] / 1e12 / peak,
        }
    ratios = {f"{name}_vs_{REFERENCE}": rows[name]["real_tokens_per_s"] / rows[REFERENCE]["real_tokens_per_s"]
              for name in rows if REFERENCE in rows and name != REFERENCE}
    result: dict[str, Any] = {
        "benchmark": "train", "machine": info, "device": str(device),
        "device_name": torch.cuda.get_device_name() if cuda else info["cpu"], "torch": torch.__version__,
        "threads": torch.get_num_threads(), "preset": args.preset, "parameters": sum(
            p.numel() for p in engines[next(iter(engines))].module.parameters()),
        "vocab_size": config.vocab_size, "precision": precision, "deepspeed_config": str(
            args.deepspeed_config or ds_json), "attention": config._attn_implementation, "masking": args.masking,
        "seq_len": args.seq_len, "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
        "steps_per_run": args.steps, "rounds": args.rounds, "data": summary,
        "mean_sentence_tokens": float(lengths.mean()), "context_tokens": context_len,
        "labelled_fraction": labelled_fraction,
        "flops_per_real_token": flops, "peak_tflops": peak, "peak_source": peak_source,
        "process_peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "candidates": rows, "ratios": ratios,
    }
    if REFERENCE in rows and BEST in rows:
        result["packed_sparse_vs_padded_dense"] = rows[BEST]["real_tokens_per_s"] / rows[REFERENCE]["real_tokens_per_s"]
    return result


def tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """One table of candidates (throughput, data share, fill, memory, MFU) with the set-up in its title."""
    flops = result["flops_per_real_token"]
    title = (
        f"training throughput, {result['preset']} BERT ({result['parameters'] / 1e6:.1f}M parameters, vocabulary "
        f"{result['vocab_size']}), {result['precision']} on {result['device_name']} ({result['threads']} threads), "
        f"{result['masking']} masking, micro-batch {result['micro_batch']} sentences x accumulation "
        f"{result['grad_accum']}, rows of {result['seq_len']}; median of {result['rounds']} alternating runs of "
        f"{result['steps_per_run']} steps\n"
        f"{machine_line(result['machine'])}\n"
        f"MFU = real tokens/s x {flops['total'] / 1e6:.1f} MFLOP per real token (encoder {flops['encoder'] / 1e6:.1f}, "
        f"attention {flops['attention'] / 1e6:.2f} at {result['context_tokens']:.0f} tokens of context, labelled-only "
        f"head {flops['head'] / 1e6:.2f}) / peak {result['peak_tflops']:.2f} TFLOP/s ({result['peak_source']})"
    )
    rows = []
    reference = result["candidates"].get(REFERENCE)
    for name, row in result["candidates"].items():
        memory = row["peak_memory_gb"]
        rows.append({
            "candidate": name, "real tokens/s": f"{row['real_tokens_per_s']:,.0f}",
            "sentences/s": f"{row['samples_per_s']:,.1f}", "step s": f"{row['step_time_s']:.3f}",
            "spread": f"{row['spread']:.0%}", "data share": f"{row['data_loading_share']:.1%}",
            "real-token fraction": f"{row['real_token_fraction']:.1%}",
            "peak GB": "-" if memory is None else f"{memory:.2f}",
            "model TFLOP/s": f"{row['model_tflops_per_s']:.3f}", "MFU": f"{row['mfu']:.1%}",
            f"vs {REFERENCE}": "1.00x" if reference is None or name == REFERENCE
            else f"{row['real_tokens_per_s'] / reference['real_tokens_per_s']:.2f}x",
        })
    out = [(title, rows)]
    if "packed_sparse_vs_padded_dense" in result:
        out.append(("headline", [{"packed_sparse_vs_padded_dense (real tokens/s)":
                                  f"{result['packed_sparse_vs_padded_dense']:.2f}x"}]))
    return out
