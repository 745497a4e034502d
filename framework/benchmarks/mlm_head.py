"""A training step with the MLM head at every position vs only at labelled positions.

Builds ``BertForMaskedLM`` and :class:`framework.training.masked_lm.BertForMaskedLMAtLabels` with the same
weights and the Chinese BERT vocabulary size (21,128), labels 15% of the positions of random token ids, and
reports the forward+backward time per step of each: after one warm-up step each, the two models alternate
step by step and the median of ``--steps`` is reported (:mod:`framework.benchmarks.timing`). On the GPU when
there is one, else on the CPU with all its threads (``--threads`` to change: on a 2-core machine busy with
other jobs, two threads that wait for each other made a small-model step at batch 2 x 32 take 1.8 s instead of
65 ms with one thread, measured 2026-12-01). It
also reports the analytic share of the forward FLOPs that the head's vocabulary projection takes at every
position.
"""

from __future__ import annotations

import argparse
from typing import Any

from framework.benchmarks.timing import alternating_medians, machine, machine_line

DESCRIPTION = "forward+backward step time: MLM head at every position vs only at labelled positions"
PRESETS = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The MLM-head benchmark's options."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small",
                        help="model size: base (768 hidden, 12 layers) or small (256, 4) (default small)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (default 5)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (default 0: torch's default, all cores); on a machine busy with "
                             "other jobs, 1 avoids threads waiting for each other")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Build both models, time them alternately, return the figures."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from framework.training.masked_lm import BertForMaskedLMAtLabels

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = BertConfig(vocab_size=21128, **PRESETS[args.preset])
    torch.manual_seed(0)
    full = BertForMaskedLM(config).to(device)
    sparse = BertForMaskedLMAtLabels(config).to(device)
    sparse.load_state_dict(full.state_dict())
    ids = torch.randint(1000, config.vocab_size, (args.batch, args.seq_len), device=device)
    labels = torch.where(torch.rand(ids.shape, device=device) < 0.15, ids, torch.full_like(ids, -100))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def step(model: torch.nn.Module) -> Any:
        def one() -> None:
            model.zero_grad(set_to_none=True)
            model(**inputs).loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
        return one

    info = machine()
    timings = alternating_medians({"head_everywhere": step(full), "labelled_only": step(sparse)}, 1, args.steps)
    h, v, n_layers, ff = config.hidden_size, config.vocab_size, config.num_hidden_layers, config.intermediate_size
    per_token_encoder = n_layers * (4 * h * h + 2 * h * ff) * 2 + n_layers * 4 * args.seq_len * h
    per_token_head = (h * h + h * v) * 2
    t_full, t_sparse = timings["head_everywhere"].median, timings["labelled_only"].median
    return {
        "benchmark": "mlm-head", "machine": info, "device": str(device), "preset": args.preset,
        "hidden_size": h, "layers": n_layers, "vocab_size": v, "batch": args.batch, "seq_len": args.seq_len,
        "labelled_positions": int((labels != -100).sum()), "steps": args.steps, "threads": torch.get_num_threads(),
        "ms_head_everywhere": t_full * 1000, "ms_labelled_only": t_sparse * 1000, "speedup": t_full / t_sparse,
        "head_share_of_forward_flops": per_token_head / (per_token_encoder + per_token_head),
    }


def tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """One row: both step times, the speed-up and the head's analytic FLOP share."""
    row = {"model": f"{result['preset']} ({result['hidden_size']}, {result['layers']} layers)",
           "batch x length": f"{result['batch']} x {result['seq_len']}",
           "head everywhere": f"{result['ms_head_everywhere']:,.1f} ms",
           "labelled only": f"{result['ms_labelled_only']:,.1f} ms", "speed-up": f"{result['speedup']:.2f}x",
           "head's share of forward FLOPs": f"{result['head_share_of_forward_flops']:.0%}"}
    title = (f"device {result['device']} ({result['threads']} CPU threads); vocabulary {result['vocab_size']}; "
             f"{result['labelled_positions']} labelled positions; median of {result['steps']} alternating steps\n"
             f"{machine_line(result['machine'])}")
    return [(title, [row])]
