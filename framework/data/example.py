"""The segmented example: what every masking strategy sees.

A sentence is tokenized and segmented with jieba exactly once, when the segmented dataset is built
(:mod:`framework.data.segmented`). From then on it travels as a :class:`SegmentedExample`: token ids plus
the token spans of its jieba words and of its entity (keyword) occurrences. Strategies choose among these
spans; they never see or re-segment text.

Conventions (all spans are half-open ``[start, end)`` token positions into ``input_ids``):

* ``input_ids`` starts with ``[CLS]`` and ends with ``[SEP]``; ``special_mask`` marks those positions (and any
  other special token) so that no strategy ever masks them.
* ``word_spans`` partitions every non-special token into whole words, in order: every non-special position
  belongs to exactly one word span, and no span touches a special position.
* ``entity_spans`` lists keyword occurrences; each is the union of one or more *consecutive whole words*, so
  masking an entity never splits a word. ``entity_ids`` gives each occurrence's row in the lexicon's
  :class:`EntityTable` (``-1`` where unknown).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = -100
"""Label value where nothing is predicted (PyTorch's ``CrossEntropyLoss`` default ``ignore_index``)."""


@dataclass(frozen=True)
class SegmentedExample:
    """One sentence, tokenized and segmented, ready for a masking strategy.

    Attributes:
        input_ids: ``int32 [L]`` token ids including ``[CLS]`` and ``[SEP]``.
        special_mask: ``bool [L]``, True at special-token positions (never masked).
        word_spans: ``int32 [W, 2]`` token spans of jieba words; they partition the non-special positions.
        entity_spans: ``int32 [E, 2]`` token spans of entity occurrences, each aligned to word boundaries.
        entity_ids: ``int32 [E]`` lexicon row of each entity occurrence, ``-1`` if unknown.
        index: position of the example in its dataset; with the seed and epoch it fixes the masking draw.
    """

    input_ids: np.ndarray
    special_mask: np.ndarray
    word_spans: np.ndarray
    entity_spans: np.ndarray
    entity_ids: np.ndarray
    index: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Number of non-special tokens (the base of the mask ratio)."""
        return int(len(self) - int(self.special_mask.sum()))

    def entity_token_mask(self) -> np.ndarray:
        """``bool [L]``: True at tokens covered by any entity occurrence."""
        mask = np.zeros(len(self), dtype=bool)
        for start, end in self.entity_spans:
            mask[start:end] = True
        return mask


@dataclass
class MaskedExample:
    """A masking strategy's output for one example.

    Attributes:
        input_ids: ``int64 [L']`` model input after masking. ``L'`` may be shorter than the example's ``L``
            when a strategy deletes tokens (``entity_wwm``'s deletion augmentation).
        labels: ``int64 [L']`` the original token where the model must predict it, else ``IGNORE_INDEX``.
        entity_label_mask: ``bool [L']`` True where a predicted position lies inside an entity occurrence;
            used for entity-token accuracy. Optional: ``None`` means "no entity information".
    """

    input_ids: np.ndarray
    labels: np.ndarray
    entity_label_mask: np.ndarray | None = field(default=None)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass(frozen=True)
class VocabInfo:
    """What a masking strategy needs to know about the tokenizer, without holding the tokenizer.

    Attributes:
        vocab_size: size of the embedding table; random replacements are drawn from ``[0, vocab_size)``.
        mask_token_id, pad_token_id, cls_token_id, sep_token_id: the special ids.
        special_ids: every id that a random replacement must never produce (``[PAD]``, ``[CLS]``, ``[UNK]``,
            ``[unused*]`` and so on).
    """

    vocab_size: int
    mask_token_id: int
    pad_token_id: int
    cls_token_id: int
    sep_token_id: int
    special_ids: tuple[int, ...] = ()

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "VocabInfo":  # noqa: ANN001 - any transformers tokenizer
        """Read the special ids from a transformers tokenizer."""
        specials = set(tokenizer.all_special_ids)
        vocab = tokenizer.get_vocab()
        specials.update(i for tok, i in vocab.items() if tok.startswith("[unused"))
        return cls(
            vocab_size=len(tokenizer),
            mask_token_id=tokenizer.mask_token_id,
            pad_token_id=tokenizer.pad_token_id,
            cls_token_id=tokenizer.cls_token_id,
            sep_token_id=tokenizer.sep_token_id,
            special_ids=tuple(sorted(specials)),
        )

    def replacement_pool(self) -> np.ndarray:
        """``int64`` ids that random replacement may draw (every id that is not special)."""
        pool = np.ones(self.vocab_size, dtype=bool)
        pool[list(self.special_ids)] = False
        return np.flatnonzero(pool)


@dataclass(frozen=True)
class EntityTable:
    """The lexicon's entities as token sequences, grouped by token length, for same-length replacement.

    Attributes:
        by_length: ``{n: int32 [K_n, n]}``, the token ids of every lexicon entity that tokenizes to ``n``
            tokens. ``entity_wwm`` draws a replacement for an ``n``-token entity from ``by_length[n]``.
    """

    by_length: dict[int, np.ndarray]

    def candidates(self, length: int) -> np.ndarray | None:
        """Entities of exactly ``length`` tokens, or ``None`` when the lexicon has none."""
        table = self.by_length.get(int(length))
        return table if table is not None and len(table) else None

    @property
    def size(self) -> int:
        """Number of entities in the table."""
        return int(sum(len(v) for v in self.by_length.values()))
