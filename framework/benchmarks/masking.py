"""Masking + collation throughput of every strategy against transformers' whole-word-mask collator.

Both sides start from the same stored form, the :class:`~framework.data.example.SegmentedExample` objects a
``SegmentedDataset`` hands a data loader, and end with tensors ready for the model; every conversion in
between is inside the clock:

* ours: ``MaskingCollator(strategy)(examples)`` (mask, pad, tensors);
* transformers 5: the examples turned into the features ``DataCollatorForLanguageModeling(whole_word_mask=True)``
  reads (``input_ids``, ``special_tokens_mask`` and an ``offset_mapping`` with a one-character gap at every
  jieba word boundary, which is how it finds words: a token starts a word when its start differs from the
  previous token's end; vectorised over the batch and padded to the batch's width, since its
  ``tokenizer.pad`` cannot pad offsets), then the collator's call. It masks exactly our words (checked before
  timing). Its WWM switches random replacement off (all chosen tokens become ``[MASK]``): less work than our
  80/10/10.

Also timed: transformers' token-level collator (``whole_word_mask=False``, the fair match for ``token``) and,
unless ``--no-per-example``, each vectorised strategy through the per-example path (one NumPy generator per
example, :meth:`~framework.masking.base.MaskingStrategy.mask` in a loop: the implementation before batch
vectorisation), for the before/after ratio.

The sentences are the real CSL papers of ``csl-dev.jsonl`` (titles and abstract sentences of 10-128
characters after the corpus pipeline's splitting and cleaning), the lexicon their keywords, the tokenizer a
WordPiece vocabulary trained on them; or ``--corpus``/``--tokenizer``/``--lexicon``. One process, one torch
thread; medians of alternating rounds (:mod:`framework.benchmarks.timing`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from framework.benchmarks.timing import alternating_medians, machine, machine_line

DESCRIPTION = "masking + collation: every strategy vs transformers' whole-word-mask collator, same CSL words"
STRATEGIES = ("token", "wwm", "entity_wwm", "span", "ngram")
BASELINE = "transformers_wwm"


def default_data_dir() -> Path:
    """``$ACADEMIC_BERT_SHARED_DATA`` or the ``shared/data`` folder next to the repository."""
    return Path(os.environ.get("ACADEMIC_BERT_SHARED_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def positive_int(text: str) -> int:
    """An ``argparse`` type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def add_data_arguments(parser: argparse.ArgumentParser, tokenizer_help: str = "fast BERT tokenizer folder") -> None:
    """The options :func:`load_examples` reads (where the sentences, lexicon and tokenizer come from)."""
    parser.add_argument("--data", type=Path, default=None,
                        help="shared data folder holding csl-dev.jsonl (default: $ACADEMIC_BERT_SHARED_DATA or "
                             "../shared/data)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="one-sentence-a-line file to use instead of csl-dev.jsonl's sentences")
    parser.add_argument("--lexicon", type=Path, nargs="*", default=None,
                        help="keyword files (jieba user dictionaries); default: csl-dev.jsonl's keywords")
    parser.add_argument("--tokenizer", default=None,
                        help=f"{tokenizer_help}; default: a WordPiece vocabulary trained on the sentences")
    parser.add_argument("--vocab-size", type=int, default=21128,
                        help="size bound of the trained vocabulary (default 21128, chinese-roberta-wwm-ext's)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The masking benchmark's options."""
    add_data_arguments(parser)
    parser.add_argument("--examples", type=positive_int, default=4096, help="sentences to mask per pass (default 4096)")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="examples per collate call (default 32)")
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="timed rounds; every collator runs one pass per round, medians are reported (default 5)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated strategies to time (default {','.join(STRATEGIES)})")
    parser.add_argument("--no-per-example", action="store_true",
                        help="skip timing the per-example path (the before/after comparison)")
    parser.add_argument("--seed", type=int, default=0, help="masking seed of both sides (default 0)")


def csl_sentences_and_keywords(jsonl: Path) -> tuple[list[str], Counter]:
    """Real CSL sentences through the corpus pipeline's splitting and cleaning, and the papers' keywords."""
    import json

    from framework.data.cleaning import clean_text
    from framework.data.sentences import split_sentences

    sentences: list[str] = []
    keywords: Counter = Counter()
    with open(jsonl, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            paper = json.loads(line)
            for raw in [paper["title"], *split_sentences(paper["abstract"])]:
                text = clean_text(raw)
                if text and 10 <= len(text) <= 128:
                    sentences.append(text)
            keywords.update("".join(k.split()) for k in paper["keywords"] if k.strip())
    return sentences, keywords


def load_examples(args: argparse.Namespace, folder: Path) -> tuple[list, Any, str, dict[str, Any]]:
    """Segment the sentences once (untimed) and return the examples, the dataset, the tokenizer and a summary."""
    from framework.data.parallel import available_cores
    from framework.data.segmented import build_segmented_dataset
    from framework.data.vocab import build_vocab

    if args.corpus is not None:
        sentences = [s for s in args.corpus.read_text(encoding="utf-8").splitlines() if s.strip()]
        source = str(args.corpus)
        keywords: Counter = Counter()
    else:
        jsonl = (args.data or default_data_dir()) / "csl-dev.jsonl"
        if not jsonl.is_file():
            raise SystemExit(f"{jsonl} not found: pass --data pointing at the shared data folder, or --corpus")
        sentences, keywords = csl_sentences_and_keywords(jsonl)
        source = str(jsonl)
    if not sentences:
        raise SystemExit(f"no sentences in {source}")
    sentences = sentences[: max(1, args.examples)]
    corpus = folder / "sentences.txt"
    corpus.write_text("".join(s + "\n" for s in sentences), encoding="utf-8")
    if args.lexicon is not None:
        lexicons = list(args.lexicon)
    elif keywords:
        lexicon = folder / "keywords.txt"
        lexicon.write_text("".join(f"{k} {n}\n" for k, n in keywords.items()), encoding="utf-8")
        lexicons = [lexicon]
    else:
        lexicons = []
    tokenizer = args.tokenizer or str(build_vocab(sentences, folder / "tokenizer", vocab_size=args.vocab_size))
    dataset = build_segmented_dataset(corpus, tokenizer, lexicons, cache_dir=folder / "segmented",
                                      workers=available_cores(), progress=False)
    examples = [dataset[i] for i in range(len(dataset))]
    summary = {"source": source, "sentences": len(examples), "lexicon_files": [str(p) for p in lexicons],
               "tokenizer": args.tokenizer or f"WordPiece trained on the sentences (<= {args.vocab_size})",
               "vocab_size": dataset.vocab_info.vocab_size}
    return examples, dataset, tokenizer, summary


def transformers_features(pad_id: int, with_offsets: bool, multiple: int = 8) -> Callable[[Sequence[Any]], list[dict]]:
    """A function turning a batch of ``SegmentedExample`` into transformers' per-example feature dicts.

    Vectorised over the batch (no per-token Python), padded to the batch's longest example rounded up to
    ``multiple``, as our collator pads; the rows are views of three padded arrays.
    """
    import numpy as np

    def convert(batch: Sequence[Any]) -> list[dict]:
        lengths = np.fromiter((len(ex.input_ids) for ex in batch), dtype=np.int64, count=len(batch))
        rows, width = len(batch), int(-(-lengths.max() // multiple) * multiple)
        starts = np.zeros(rows, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        target = np.arange(int(lengths.sum())) + np.repeat(np.arange(rows) * width - starts, lengths)
        ids = np.full(rows * width, pad_id, dtype=np.int64)
        ids[target] = np.concatenate([ex.input_ids for ex in batch])
        special_flat = np.concatenate([ex.special_mask for ex in batch])
        special = np.ones(rows * width, dtype=np.int64)
        special[target] = special_flat
        features = {"input_ids": ids.reshape(rows, width), "special_tokens_mask": special.reshape(rows, width)}
        if with_offsets:
            word_counts = np.fromiter((len(ex.word_spans) for ex in batch), dtype=np.int64, count=rows)
            first = np.concatenate([ex.word_spans[:, 0] for ex in batch]) + np.repeat(starts, word_counts)
            opens = np.zeros(len(special_flat), dtype=np.int64)
            opens[first] = 1
            # One character per token; a word's first token leaves a one-character gap after the previous.
            begin = np.cumsum(opens + 1) - 1
            pairs = np.stack([begin, begin + 1], axis=1)
            pairs[special_flat] = 0
            offsets = np.zeros((rows * width, 2), dtype=np.int64)
            offsets[target] = pairs
            features["offset_mapping"] = offsets.reshape(rows, width, 2)
        return [{key: value[r] for key, value in features.items()} for r in range(rows)]

    return convert


def check_same_words(convert: Callable, batches: list, collator_class: Any) -> bool:
    """Whether transformers derives exactly our jieba words from the converted features (untimed check)."""
    import numpy as np

    for batch in batches[:8]:
        features = convert(batch)
        offsets = np.stack([f["offset_mapping"] for f in features])
        special = np.stack([f["special_tokens_mask"] for f in features])
        word_ids, _ = collator_class._calc_word_ids_and_prob_mask(offsets, special)
        for row, ex in enumerate(batch):
            ours = np.full(word_ids.shape[1], -1, dtype=np.int64)
            for k, (a, b) in enumerate(ex.word_spans.tolist()):
                ours[a:b] = k
            theirs = word_ids[row]
            real = theirs >= 0
            if not np.array_equal(real, ours >= 0) or not np.array_equal(theirs[real] - theirs[real].min(), ours[real]):
                return False
    return True


def per_example(strategy: Any) -> Any:
    """``strategy`` through the base class's per-example ``mask_batch`` (the path before vectorisation)."""
    from framework.masking.base import MaskingStrategy

    class PerExample(MaskingStrategy):
        """Delegates :meth:`mask` to the wrapped strategy and keeps the default ``mask_batch``."""

        name = f"{strategy.name} (per example)"

        def __init__(self) -> None:  # the wrapped strategy is already built
            self.context, self.options = strategy.context, strategy.options

        def mask(self, example: Any, rng: Any) -> Any:
            """The wrapped strategy's reference masking."""
            return strategy.mask(example, rng)

    return PerExample()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Segment, check, time every collator; return the figures."""
    import torch
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling

    from framework.batching.collator import MaskingCollator
    from framework.masking import MaskingContext, build_strategy

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    torch.set_num_threads(1)
    before = machine()
    with tempfile.TemporaryDirectory(prefix="bench-masking-") as tmp:
        examples, dataset, tokenizer_path, summary = load_examples(args, Path(tmp))
        context = MaskingContext(vocab=dataset.vocab_info, entities=dataset.entity_table())
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, use_fast=True)
    batches = [examples[i:i + args.batch_size] for i in range(0, len(examples), args.batch_size)]
    vocab = context.vocab

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that whole-word masking switches random replacement off
        hf_wwm = DataCollatorForLanguageModeling(tokenizer, mlm=True, whole_word_mask=True, mlm_probability=0.15,
                                                 pad_to_multiple_of=8, seed=args.seed)
    hf_mlm = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15, pad_to_multiple_of=8,
                                             seed=args.seed)
    with_offsets = transformers_features(vocab.pad_token_id, with_offsets=True)
    without_offsets = transformers_features(vocab.pad_token_id, with_offsets=False)
    same_words = check_same_words(with_offsets, batches, DataCollatorForLanguageModeling)

    def passes(collate: Callable[[Sequence[Any]], Any]) -> Callable[[], None]:
        def one_pass() -> None:
            for batch in batches:
                collate(batch)
        return one_pass

    candidates: dict[str, Callable[[], None]] = {
        BASELINE: passes(lambda b: hf_wwm(with_offsets(b))),
        "transformers_mlm": passes(lambda b: hf_mlm(without_offsets(b))),
    }
    vectorised: list[str] = []
    for name in strategies:
        strategy = build_strategy(name, None, context)
        candidates[name] = passes(MaskingCollator(strategy, vocab, seed=args.seed))
        if strategy.vectorised:
            vectorised.append(name)
            if not args.no_per_example:
                before_vectorising = MaskingCollator(per_example(strategy), vocab, seed=args.seed)
                candidates[f"{name}_per_example"] = passes(before_vectorising)
    timings = alternating_medians(candidates, len(examples), args.repeats)
    rates = {name: t.rate for name, t in timings.items()}
    base = rates[BASELINE]
    result: dict[str, Any] = {
        "benchmark": "masking",
        "machine": before,
        "load_average_after": machine()["load_average"],
        "data": summary,
        "settings": {"examples": len(examples), "batch_size": args.batch_size, "repeats": args.repeats,
                     "mean_tokens": round(sum(len(e) for e in examples) / len(examples), 1), "torch_threads": 1,
                     "seed": args.seed},
        "same_words": same_words,
        "examples_per_second": {name: round(rate, 1) for name, rate in rates.items()},
        "median_seconds": {name: t.median for name, t in timings.items()},
        "spread": {name: round(t.spread, 3) for name, t in timings.items()},
        "vectorised": vectorised,
    }
    for name in strategies:
        result[f"{name}_vs_{BASELINE}"] = round(rates[name] / base, 3)
    if "token" in rates:
        result["token_vs_transformers_mlm"] = round(rates["token"] / rates["transformers_mlm"], 3)
    result["speedup_vs_per_example"] = {
        name: round(rates[name] / rates[f"{name}_per_example"], 3) for name in vectorised
        if f"{name}_per_example" in rates
    }
    return result


def tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """One row per collator: examples/s, µs per example, ratio to transformers' WWM, round spread."""
    rates = result["examples_per_second"]
    base = rates[BASELINE]
    labels = {BASELINE: "transformers DataCollatorForLanguageModeling(whole_word_mask=True)",
              "transformers_mlm": "transformers DataCollatorForLanguageModeling (token-level)"}
    rows = []
    for name, rate in rates.items():
        if name in labels:
            label = labels[name]
        elif name.endswith("_per_example"):
            label = f"MaskingCollator({name[: -len('_per_example')]}), per-example path (before)"
        else:
            label = f"MaskingCollator({name})" + ("" if name in result["vectorised"] else ", per-example path")
        rows.append({"collator": label, "examples/s": f"{rate:,.0f}", "µs/example": f"{1e6 / rate:.1f}",
                     "vs transformers WWM": f"{rate / base:.2f}x", "spread": f"{result['spread'][name]:.0%}"})
    s = result["settings"]
    title = (f"{s['examples']} CSL sentences ({s['mean_tokens']} tokens on average), batch {s['batch_size']}, "
             f"median of {s['repeats']} alternating rounds; words identical on both sides: "
             f"{'yes' if result['same_words'] else 'NO'}\n{machine_line(result['machine'])}; "
             f"load after: {result['load_average_after']}")
    return [(title, rows)]
