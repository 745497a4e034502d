"""Padded batches: segmented examples -> masked, padded tensors for the model (one example a row).

:class:`MaskingCollator` is the ``collate_fn`` of the training ``DataLoader``. It hands the batch to the run's
strategy with ``(seed, epoch)`` (every example's masks follow from ``(seed, epoch, example.index)``, see
:mod:`framework.masking.base`; the built-ins mask the whole batch at once, :mod:`framework.masking.batch`),
and pads to a multiple of 8 (tensor cores want it; it also bounds the number of distinct shapes) with one
concatenation and one scatter per field.

The epoch lives in shared memory, so :meth:`MaskingCollator.set_epoch` reaches data-loader workers too, also
persistent ones. Call it before iterating each epoch, as with ``DistributedSampler.set_epoch``::

    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        collator.set_epoch(epoch)
        for batch in loader:   # workers prefetch only once iteration starts, so they see the new epoch
            ...
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from framework.data.example import IGNORE_INDEX, MaskedExample, SegmentedExample, VocabInfo
from framework.masking.base import MaskingStrategy


class MaskingCollator:
    """Masks and pads a list of :class:`SegmentedExample` into a batch of tensors.

    Args:
        strategy: the run's masking strategy.
        vocab: special ids (padding uses ``pad_token_id``; ``sep_token_id`` separates segments).
        seed: the run's seed; with the epoch and each example's ``index`` it fixes every mask.
        pad_to_multiple_of: pad the batch's length up to a multiple of this (1 for no rounding).
        max_length: if set, pad every batch to exactly this length (static shapes); an example longer than it
            is an error naming the example, since truncating after masking would drop labels.
        reference_masks: mask with the strategy's reference path (:meth:`MaskingStrategy.mask_reference`)
            instead of its fast ``mask_batch``: slower, but the same masks in every framework version, which
            held-out evaluation needs to compare models scored at different times.

    Returns (from ``__call__``): ``input_ids``, ``attention_mask``, ``token_type_ids``, ``labels`` (``int64
    [B, T]``; ``labels`` is ``-100`` where nothing is predicted and at padding) and ``entity_label_mask``
    (``bool [B, T]``, True at predicted positions inside an entity).
    """

    def __init__(
        self,
        strategy: MaskingStrategy,
        vocab: VocabInfo,
        seed: int,
        pad_to_multiple_of: int = 8,
        max_length: int | None = None,
        reference_masks: bool = False,
    ) -> None:
        if pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of={pad_to_multiple_of} must be at least 1")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length={max_length} must be a positive length or None")
        self.strategy = strategy
        self.vocab = vocab
        self.seed = int(seed)
        self.pad_to_multiple_of = int(pad_to_multiple_of)
        self.max_length = max_length
        self.reference_masks = bool(reference_masks)
        # A shared-memory scalar: DataLoader workers receive a pickled copy of the collator, and a plain int
        # would freeze at the value it had when the workers started.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        """The epoch the next batches are masked for."""
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Mask the following batches for ``epoch`` (call before iterating the epoch's data loader)."""
        self._epoch.fill_(int(epoch))

    def mask(self, examples: Sequence[SegmentedExample]) -> list[MaskedExample]:
        """The strategy's masked examples for the current epoch, before padding."""
        if self.reference_masks:
            return self.strategy.mask_reference(examples, self.seed, self.epoch)
        return self.strategy.mask_batch(examples, self.seed, self.epoch)

    def __call__(self, examples: Sequence[SegmentedExample]) -> dict[str, torch.Tensor]:
        """Mask and pad ``examples`` into a batch dict of tensors."""
        if not examples:
            raise ValueError("MaskingCollator got an empty batch")
        return self.pad(self.mask(examples), [ex.index for ex in examples])

    def pad(self, masked: Sequence[MaskedExample], indices: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        """Pad masked examples into tensors (``indices`` only name examples in error messages).

        One concatenation per field and one scatter into the padded arrays: no per-example copy loop.
        """
        ids = [m.input_ids for m in masked]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        longest = int(lengths.max())
        if self.max_length is not None:
            if longest > self.max_length:
                bad = int(np.argmax(lengths))
                which = f"example index {indices[bad]}" if indices is not None else f"batch row {bad}"
                raise ValueError(
                    f"{which} has {longest} tokens, more than max_length={self.max_length}; build the dataset "
                    "with a max_seq_len no larger than the collator's max_length"
                )
            width = self.max_length
        else:
            multiple = self.pad_to_multiple_of
            width = -(-longest // multiple) * multiple
        batch = len(masked)
        total = int(lengths.sum())
        # Flat position of every real token in the padded [batch, width] arrays: row * width + column.
        starts = np.zeros(batch, dtype=np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        target = np.arange(total, dtype=np.int64)
        target += np.repeat(np.arange(batch, dtype=np.int64) * width - starts, lengths)
        flat_ids = np.concatenate(ids)
        input_ids = np.full(batch * width, self.vocab.pad_token_id, dtype=np.int64)
        input_ids[target] = flat_ids
        labels = np.full(batch * width, IGNORE_INDEX, dtype=np.int64)
        labels[target] = np.concatenate([m.labels for m in masked])
        entity = np.zeros(batch * width, dtype=bool)
        entity[target] = np.concatenate([
            m.entity_label_mask if m.entity_label_mask is not None else np.zeros(len(m), dtype=bool) for m in masked
        ])
        attention_mask = np.zeros(batch * width, dtype=np.int64)
        attention_mask[target] = 1
        input_ids, labels, entity, attention_mask = (
            a.reshape(batch, width) for a in (input_ids, labels, entity, attention_mask))
        # Segment B starts after the first [SEP] (sentence pairs); single sentences are all segment A. The
        # common case, one [SEP] per row and at its end, needs no per-position work.
        sep = self.vocab.sep_token_id
        is_sep_flat = flat_ids == sep
        if lengths.min() > 0 and int(is_sep_flat.sum()) == batch and bool(is_sep_flat[starts + lengths - 1].all()):
            token_type_ids = np.zeros((batch, width), dtype=np.int64)
        else:
            is_sep = (input_ids == sep) & (attention_mask == 1)
            after_first_sep = (np.cumsum(is_sep, axis=1) - is_sep) > 0
            token_type_ids = (after_first_sep & (attention_mask == 1)).astype(np.int64)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "token_type_ids": torch.from_numpy(token_type_ids),
            "labels": torch.from_numpy(labels),
            "entity_label_mask": torch.from_numpy(entity),
        }
