"""``ngram``: MacBERT-style n-gram masking of whole words (Cui et al., 2020).

Each chosen unit is a run of 1 to 4 consecutive whole words, with probabilities 40/30/20/10% by default.
Runs never split a word and never overlap; one 80/10/10 action covers the whole n-gram. (MacBERT replaces
with similar words instead of ``[MASK]``; that needs a synonym model, so here the usual 80/10/10 applies.)
Budget and stopping rule: :mod:`framework.masking.units`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.data.example import SegmentedExample
from framework.masking.base import MaskingConfigError, MaskingContext, MaskingOptions
from framework.masking.units import UnitMaskingStrategy, choose_word_runs


@dataclass(frozen=True)
class NgramOptions(MaskingOptions):
    """Options of ``ngram``.

    Attributes:
        ngram_probs: probability of a 1-, 2-, 3-, ... word n-gram; non-negative, summing to 1.
    """

    ngram_probs: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)

    def __post_init__(self) -> None:
        super().__post_init__()
        probs = self.ngram_probs
        if (not isinstance(probs, tuple) or not probs
                or any(isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0 for p in probs)):
            raise MaskingConfigError(f"NgramOptions: ngram_probs={probs!r} must be a list of non-negative numbers")
        if abs(sum(probs) - 1.0) > 1e-6:
            raise MaskingConfigError(f"NgramOptions: ngram_probs={list(probs)} sums to {sum(probs):g}; it must sum to 1")


class NgramMasking(UnitMaskingStrategy):
    """MacBERT n-gram masking over whole words."""

    name = "ngram"
    Options = NgramOptions

    def __init__(self, context: MaskingContext, **options: object) -> None:
        super().__init__(context, **options)
        self._length_probs = np.asarray(self.options.ngram_probs, dtype=np.float64)

    def choose_units(
        self, example: SegmentedExample, budget: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Word n-grams totalling about ``budget`` tokens."""
        return choose_word_runs(example.word_spans, budget, self._length_probs, rng)
