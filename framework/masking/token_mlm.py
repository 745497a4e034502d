"""``token``: BERT's original masked language model, one token at a time (Devlin et al., 2019).

Each non-special token is its own unit, so a Chinese word is usually masked only in part: the baseline that
whole word masking improves on. Options: :class:`~framework.masking.base.MaskingOptions`. ``mask_batch``
masks a whole batch at once (:mod:`framework.masking.batch`).
"""

from __future__ import annotations

import numpy as np

from framework.data.example import SegmentedExample
from framework.masking.batch import FlatBatch
from framework.masking.units import UnitMaskingStrategy, non_special_spans


class TokenMasking(UnitMaskingStrategy):
    """Token-level MLM: ``mask_prob`` of the non-special tokens, chosen uniformly, 80/10/10 per token."""

    name = "token"

    def choose_units(
        self, example: SegmentedExample, budget: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``budget`` distinct non-special tokens, uniformly at random."""
        units = non_special_spans(example)
        chosen = rng.choice(len(units), size=min(budget, len(units)), replace=False) if budget > 0 else []
        spans = units[np.sort(np.asarray(chosen, dtype=np.int64))]
        return spans, np.arange(len(spans))

    def batch_units(self, batch: FlatBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every non-special token of the batch; the first ``budget`` in random order are a uniform subset."""
        positions = np.flatnonzero(~batch.special)
        owner = np.repeat(np.arange(batch.size, dtype=np.int64), batch.num_tokens)
        return np.stack([positions, positions + 1], axis=1), owner, positions - batch.offsets[owner]
