"""``span``: SpanBERT-style masking of contiguous whole-word spans (Joshi et al., 2020).

Span lengths, in words, follow a geometric distribution ``P(l) ∝ p (1 - p)^(l - 1)`` truncated at
``max_span_words`` (SpanBERT: ``p = 0.2``, at most 10 words, mean 3.8 words). Spans start at random words,
never split a word and never overlap; one 80/10/10 action covers the whole span. Budget and stopping rule:
:mod:`framework.masking.units`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.data.example import SegmentedExample
from framework.masking.base import MaskingConfigError, MaskingContext, MaskingOptions, check_probability
from framework.masking.units import UnitMaskingStrategy, choose_word_runs


@dataclass(frozen=True)
class SpanOptions(MaskingOptions):
    """Options of ``span``.

    Attributes:
        geometric_p: parameter ``p`` of the geometric span-length distribution (larger: shorter spans).
        max_span_words: longest span in words; the distribution is truncated and renormalised there.
    """

    geometric_p: float = 0.2
    max_span_words: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_probability("SpanOptions", "geometric_p", self.geometric_p)
        if self.geometric_p == 0:
            raise MaskingConfigError("SpanOptions: geometric_p must be above 0 (0 gives no finite span length)")
        if isinstance(self.max_span_words, bool) or not isinstance(self.max_span_words, int) or self.max_span_words < 1:
            raise MaskingConfigError(f"SpanOptions: max_span_words={self.max_span_words!r} must be a positive integer")

    def length_probs(self) -> np.ndarray:
        """``[max_span_words]`` probabilities of spans of 1, 2, ... words."""
        lengths = np.arange(1, self.max_span_words + 1)
        probs = self.geometric_p * (1.0 - self.geometric_p) ** (lengths - 1)
        return probs / probs.sum()


class SpanMasking(UnitMaskingStrategy):
    """SpanBERT span masking over whole words."""

    name = "span"
    Options = SpanOptions

    def __init__(self, context: MaskingContext, **options: object) -> None:
        super().__init__(context, **options)
        self._length_probs = self.options.length_probs()

    def choose_units(
        self, example: SegmentedExample, budget: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Geometric-length word spans totalling about ``budget`` tokens."""
        return choose_word_runs(example.word_spans, budget, self._length_probs, rng)
