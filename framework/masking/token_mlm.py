"""``token``: BERT's original masked language model, one token at a time (Devlin et al., 2019).

Each non-special token is its own unit, so a Chinese word is usually masked only in part: the baseline that
whole word masking improves on. Options: :class:`~framework.masking.base.MaskingOptions`.
"""

from __future__ import annotations

import numpy as np

from framework.data.example import SegmentedExample
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
