"""Time a training step with the MLM head at every position vs only at labelled positions.

    python launch/benchmark_mlm_head.py [--preset base|small] [--batch 8] [--seq-len 128] [--steps 5]

Builds ``BertForMaskedLM`` and :class:`framework.training.masked_lm.BertForMaskedLMAtLabels` with the same
weights and the Chinese BERT vocabulary size (21,128), masks 15% of the positions of random token ids, and
prints the forward+backward time per step of each, best of ``--steps`` (after one warm-up step), on the GPU
when there is one, else on the CPU with all its threads. It also prints the analytic share of the forward
FLOPs that the head's vocabulary projection takes at every position.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import BertConfig, BertForMaskedLM  # noqa: E402

from framework.training.masked_lm import BertForMaskedLMAtLabels  # noqa: E402

PRESETS = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024),
}


def _time_steps(model: torch.nn.Module, inputs: dict[str, torch.Tensor], steps: int) -> float:
    best = float("inf")
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        if inputs["input_ids"].is_cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        model(**inputs).loss.backward()
        if inputs["input_ids"].is_cuda:
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and kernels
            best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    """Build both models, time them, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = BertConfig(vocab_size=21128, **PRESETS[args.preset])
    torch.manual_seed(0)
    full = BertForMaskedLM(config).to(device)
    sparse = BertForMaskedLMAtLabels(config).to(device)
    sparse.load_state_dict(full.state_dict())
    ids = torch.randint(1000, config.vocab_size, (args.batch, args.seq_len), device=device)
    labels = torch.where(torch.rand(ids.shape, device=device) < 0.15, ids, torch.full_like(ids, -100))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    t_full = _time_steps(full, inputs, args.steps)
    t_sparse = _time_steps(sparse, inputs, args.steps)
    h, v, n_layers, ff = config.hidden_size, config.vocab_size, config.num_hidden_layers, config.intermediate_size
    per_token_encoder = n_layers * (4 * h * h + 2 * h * ff) * 2 + n_layers * 4 * args.seq_len * h
    per_token_head = (h * h + h * v) * 2
    print(f"device {device}; preset {args.preset} (hidden {h}, {n_layers} layers), vocab {v}, batch {args.batch} x "
          f"{args.seq_len}, {int((labels != -100).sum())} labelled positions")
    print(f"head at every position: {t_full * 1000:8.1f} ms per forward+backward")
    print(f"head at labelled only:  {t_sparse * 1000:8.1f} ms per forward+backward  ({t_full / t_sparse:.2f}x)")
    print(f"analytic: the head is {per_token_head / (per_token_encoder + per_token_head):.0%} of forward FLOPs "
          f"when run at every position")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
