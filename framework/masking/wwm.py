"""``wwm``: Chinese whole word masking over jieba words (Cui et al., 2021, BERT-wwm / RoBERTa-wwm-ext).

Units are the example's word spans, taken in random order until the token budget is spent
(:func:`~framework.masking.units.take_within_budget`); every token of a chosen word gets the same 80/10/10
action, so no word is ever partly masked. Options: :class:`~framework.masking.base.MaskingOptions`.
``mask_batch`` applies the same rule to a whole batch at once (:mod:`framework.masking.batch`).
"""

from __future__ import annotations

import numpy as np

from framework.data.example import SegmentedExample
from framework.masking.batch import FlatBatch
from framework.masking.units import UnitMaskingStrategy, span_lengths, take_within_budget


def choose_words(word_spans: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Whole words in random order until ``budget`` tokens are spent; returns their spans in text order."""
    if budget <= 0 or len(word_spans) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = rng.permutation(len(word_spans))
    taken = take_within_budget(span_lengths(word_spans)[order], budget, rng)
    return word_spans[np.sort(order[taken])].astype(np.int64)


class WholeWordMasking(UnitMaskingStrategy):
    """Whole word masking: chosen units are jieba words, all their tokens treated alike."""

    name = "wwm"

    def choose_units(
        self, example: SegmentedExample, budget: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Random whole words totalling about ``budget`` tokens."""
        spans = choose_words(example.word_spans, budget, rng)
        return spans, np.arange(len(spans))

    def batch_units(self, batch: FlatBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every word of the batch (the vectorised form of :meth:`choose_units`)."""
        return batch.word_spans, batch.word_owner, batch.word_start
