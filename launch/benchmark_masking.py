"""Masking + collation throughput against transformers' whole-word-mask collator, on the same words.

    python launch/benchmark_masking.py --corpus data/csl/train.txt --tokenizer TOKENIZER \\
        [--lexicon data/csl/keywords.txt] [--batch-size 32] [--repeats 3] [--strategies token,wwm,entity_wwm]

The corpus is segmented once (cached like the training data). Both sides then get the same ready inputs:
our ``MaskingCollator`` the ``SegmentedExample`` objects; ``DataCollatorForLanguageModeling(whole_word_mask=
True)`` dicts of ``input_ids``, ``special_tokens_mask`` and an ``offset_mapping`` with a one-character gap at
every jieba word boundary, which is how that collator finds words, so it masks exactly the same words (already
padded, since its tokenizer.pad cannot pad offsets). Only the collate calls are timed (best of ``--repeats`` passes over all batches); one process, one thread.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from framework.data.collator import MaskingCollator  # noqa: E402
from framework.data.example import SegmentedExample  # noqa: E402
from framework.masking import MaskingContext, build_strategy  # noqa: E402


def hf_features(example: SegmentedExample, width: int, pad_id: int) -> dict[str, list]:
    """The example as transformers' WWM collator reads it: words as gaps in a synthetic offset mapping.

    Padded to ``width`` here, untimed (its ``tokenizer.pad`` cannot pad ``offset_mapping``), which only
    flatters the baseline.
    """
    length = len(example)
    word_start = np.zeros(length, dtype=bool)
    word_start[example.word_spans[:, 0]] = True
    # A word start opens a one-character gap; other tokens continue the previous token's characters.
    starts = np.cumsum(1 + word_start.astype(np.int64)) - 1
    offsets = np.stack([starts, starts + 1], axis=1)
    offsets[example.special_mask] = 0
    pad = width - length
    return {
        "input_ids": example.input_ids.astype(np.int64).tolist() + [pad_id] * pad,
        "special_tokens_mask": example.special_mask.astype(np.int64).tolist() + [1] * pad,
        "offset_mapping": offsets.tolist() + [[0, 0]] * pad,
    }


def throughput(collate: Callable[[Sequence[Any]], Any], batches: list[list[Any]], repeats: int) -> float:
    """Examples per second of ``collate`` over ``batches`` (best pass of ``repeats``)."""
    best = float("inf")
    count = sum(len(b) for b in batches)
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            collate(batch)
        best = min(best, time.perf_counter() - start)
    return count / best


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one line per collator."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True, help="one-sentence-a-line UTF-8 file")
    parser.add_argument("--tokenizer", required=True, help="fast BERT tokenizer folder or name")
    parser.add_argument("--lexicon", nargs="*", default=[], help="keyword files (for entity_wwm)")
    parser.add_argument("--cache-dir", default=None, help="segmented cache (default: a temporary folder)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strategies", default="token,wwm,entity_wwm")
    parser.add_argument("--max-examples", type=int, default=4096, help="use the first N sentences")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from framework.data.segmented import build_segmented_dataset

    with tempfile.TemporaryDirectory() as tmp:
        dataset = build_segmented_dataset(args.corpus, args.tokenizer, args.lexicon,
                                          cache_dir=args.cache_dir or tmp, workers=1, progress=False)
        examples = [dataset[i] for i in range(min(len(dataset), args.max_examples))]
        context = MaskingContext(vocab=dataset.vocab_info, entities=dataset.entity_table())
    batches = [examples[i:i + args.batch_size] for i in range(0, len(examples), args.batch_size)]
    print(f"{len(examples)} examples, batch size {args.batch_size}, "
          f"{np.mean([len(e) for e in examples]):.1f} tokens each on average; examples/s (best of {args.repeats}):")

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, use_fast=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that WWM turns random replacement off
        hf = DataCollatorForLanguageModeling(tokenizer, mlm=True, whole_word_mask=True, mlm_probability=0.15,
                                             pad_to_multiple_of=8, seed=0)
    hf_batches = []
    for batch in batches:
        width = -(-max(len(e) for e in batch) // 8) * 8
        hf_batches.append([hf_features(e, width, tokenizer.pad_token_id) for e in batch])
    baseline = throughput(hf, hf_batches, args.repeats)
    print(f"  transformers DataCollatorForLanguageModeling(whole_word_mask=True): {baseline:10.0f}")
    for name in args.strategies.split(","):
        collator = MaskingCollator(build_strategy(name, None, context), context.vocab, seed=0)
        ours = throughput(collator, batches, args.repeats)
        print(f"  MaskingCollator({name}): {ours:10.0f}  ({ours / baseline:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
