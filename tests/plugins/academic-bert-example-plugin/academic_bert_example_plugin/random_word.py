"""``random_word``: each whole word chosen independently, every chosen token replaced by ``[MASK]``.

A deliberately small strategy that shows the whole plugin contract: a frozen options dataclass validated in
``__post_init__``, a ``mask`` that reads only the example's spans and draws only from ``rng``, never touches
special tokens, and fills ``labels`` and ``entity_label_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from framework.data.example import IGNORE_INDEX, MaskedExample, SegmentedExample
from framework.masking import MaskingStrategy, check_probability


@dataclass(frozen=True)
class RandomWordOptions:
    """Options of ``random_word``.

    Attributes:
        word_prob: probability that a word is chosen; the expected share of masked tokens equals it.
    """

    word_prob: float = 0.15

    def __post_init__(self) -> None:
        check_probability("random_word", "word_prob", self.word_prob)


class RandomWordMasking(MaskingStrategy):
    """Bernoulli whole word masking without the 80/10/10 rule."""

    name = "random_word"
    Options = RandomWordOptions

    def mask(self, example: SegmentedExample, rng: np.random.Generator) -> MaskedExample:
        """Choose each word with ``word_prob``; its tokens become ``[MASK]`` and are predicted."""
        words = example.word_spans
        chosen = words[rng.random(len(words)) < self.options.word_prob]
        lengths = chosen[:, 1] - chosen[:, 0]
        # Positions of all chosen tokens without a loop: each span's start repeated, plus 0..length-1.
        positions = np.repeat(chosen[:, 0], lengths) + (
            np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        )
        input_ids = example.input_ids.astype(np.int64)  # a copy: never write into the example
        labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
        labels[positions] = input_ids[positions]
        input_ids[positions] = self.context.vocab.mask_token_id
        entity_label_mask = example.entity_token_mask() & (labels != IGNORE_INDEX)
        return MaskedExample(input_ids=input_ids, labels=labels, entity_label_mask=entity_label_mask)
