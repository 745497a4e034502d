"""Packing: several masked sentences per row of ``--seq-len`` tokens, each attending only to itself.

CSL sentences average about 45 tokens, so a batch padded to its longest row (up to 128 tokens) is mostly
padding: about 41% of its positions are real tokens. :class:`PackingCollator` masks the sentences exactly as the
padded collator does (the strategy's ``mask_batch`` on the sentences, so every built-in and third-party
strategy works unchanged, deletion included), then packs the :class:`~framework.data.example.MaskedExample`
objects into rows with :func:`best_fit_decreasing`, using their masked lengths.

The batch it builds (per micro-batch, ``R`` rows of width ``T``; ``T`` is ``--seq-len`` unless every row is
shorter, then the longest row rounded up to a multiple of 8):

* ``input_ids``, ``labels``, ``entity_label_mask``: as in a padded batch, several sentences a row;
* ``token_type_ids``: 0 (single sentences; a sentence pair would get 1 after its own first ``[SEP]``);
* ``position_ids``: restart at 0 at every sentence's ``[CLS]``, so a sentence sees the position embeddings it
  would see alone; 0 at padding;
* ``attention_mask``: ``bool [R, 1, T, T]``, block-diagonal, True where query and key belong to the same
  sentence. transformers' ``BertModel`` passes a 4D mask through unchanged (``masking_utils``
  ``_preprocess_mask_arguments`` returns it as is), SDPA reads a boolean mask as "True = attend", and
  :class:`~framework.training.masked_lm.BertForMaskedLMAtLabels` turns it into the additive ``0 / dtype-min``
  form that the eager attention adds to its scores. The padding at a row's end forms one more block, so no
  query row is fully masked (a fully masked softmax row is ``nan`` under SDPA, and its gradient would spread);
* ``sequence_ids``: ``int64 [R, T]``, the 1-based number of the sentence within its row, 0 at padding (real
  tokens are ``sequence_ids > 0``);
* ``num_examples``: ``int64 []``, the sentences in this micro-batch.

A real token therefore computes exactly what it computes in a padded batch: the same embeddings, and
attention over the same keys (a masked key's weight is exactly 0). ``tests/test_packing.py`` checks this to
1e-5 in fp32 for SDPA and eager attention.

Resumability: the collator is called with the sentences of one optimiser step on this rank (micro-batch x
gradient accumulation; see :class:`framework.batching.groups.StepLoader`) and returns one batch per
micro-batch of that step, with the rows dealt out in order. A step thus consumes a fixed number of
sentences, the checkpoint's ``epoch_position`` is always a multiple of it, and the packing of a step depends
only on its sentences and their masks, which follow from ``(seed, epoch, index)``: a resumed run packs exactly
the rows an uninterrupted one would have.
"""

from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np
import torch

from framework.batching.collator import MaskingCollator
from framework.batching.groups import StepCollator
from framework.data.example import IGNORE_INDEX, MaskedExample, SegmentedExample


def best_fit_decreasing(lengths: Sequence[int], capacity: int, min_rows: int = 1) -> list[list[int]]:
    """Pack items of ``lengths`` into as few rows of ``capacity`` as best-fit decreasing finds.

    Items are taken longest first (ties in input order); each goes into the row it fills most tightly (ties:
    the earliest row), or opens a new row. The result is deterministic: the same lengths give the same rows.

    Args:
        lengths: the length of every item.
        capacity: room in a row.
        min_rows: at least this many rows (one per micro-batch of a step): while there are fewer, the shortest
            item of the row holding the most items moves to a row of its own.

    Returns:
        One list of item indices per row, in the order they were placed (longest first within a row).

    Raises:
        ValueError: an item longer than ``capacity``, or fewer items than ``min_rows``.
    """
    sizes = [int(n) for n in lengths]
    if min_rows > len(sizes):
        raise ValueError(f"{len(sizes)} items cannot fill {min_rows} rows")
    too_long = [i for i, n in enumerate(sizes) if n > capacity]
    if too_long:
        raise ValueError(f"item {too_long[0]} has {sizes[too_long[0]]} tokens, more than a row's {capacity}")
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row), sorted: the first entry with room >= n fits best
    for i in order:
        n = sizes[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, row = free.pop(k)
            rows[row].append(i)
        else:
            room, row = capacity, len(rows)
            rows.append([i])
        if room - n > 0:
            bisect.insort(free, (room - n, row))
    while len(rows) < min_rows:
        donor = max(range(len(rows)), key=lambda r: (len(rows[r]), -r))
        rows.append([rows[donor].pop()])
    return rows


def block_diagonal_mask(sequence_ids: torch.Tensor) -> torch.Tensor:
    """``bool [R, 1, T, T]``: True where query and key tokens carry the same ``sequence_ids`` value."""
    return (sequence_ids[:, None, :, None] == sequence_ids[:, None, None, :]).contiguous()


def packed_batch(masked: Sequence[MaskedExample], rows: Sequence[Sequence[int]], width: int, pad_token_id: int,
                 sep_token_id: int) -> dict[str, torch.Tensor]:
    """Lay out ``masked`` examples as ``rows`` (lists of indices into ``masked``) of ``width`` tokens.

    See the module docstring for the fields. Built with one concatenation and one scatter per field, like
    :meth:`MaskingCollator.pad`.
    """
    order = [i for row in rows for i in row]
    per_row = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
    lengths = np.fromiter((len(masked[i]) for i in order), dtype=np.int64, count=len(order))
    fill = np.bincount(np.repeat(np.arange(len(rows)), per_row), weights=lengths, minlength=len(rows))
    if fill.max() > width:
        raise ValueError(f"a packed row holds {int(fill.max())} tokens, more than the width {width}")
    count, total, batch = len(order), int(lengths.sum()), len(rows)
    # Per sentence: where it starts in the concatenation, in its row, and its 1-based number in the row.
    starts = np.zeros(count, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    first_of_row = np.zeros(batch, dtype=np.int64)
    np.cumsum(per_row[:-1], out=first_of_row[1:])
    row_of = np.repeat(np.arange(batch, dtype=np.int64), per_row)
    offset_in_row = starts - starts[first_of_row][row_of]
    number_in_row = np.arange(count, dtype=np.int64) - first_of_row[row_of] + 1
    # Per token: its position in its sentence and its flat place in the [batch, width] arrays.
    position = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    target = np.repeat(row_of * width + offset_in_row, lengths) + position

    flat_ids = np.concatenate([masked[i].input_ids for i in order]).astype(np.int64, copy=False)
    input_ids = np.full(batch * width, pad_token_id, dtype=np.int64)
    input_ids[target] = flat_ids
    labels = np.full(batch * width, IGNORE_INDEX, dtype=np.int64)
    labels[target] = np.concatenate([masked[i].labels for i in order])
    entity = np.zeros(batch * width, dtype=bool)
    entity[target] = np.concatenate([
        masked[i].entity_label_mask if masked[i].entity_label_mask is not None else np.zeros(len(masked[i]), bool)
        for i in order
    ])
    position_ids = np.zeros(batch * width, dtype=np.int64)
    position_ids[target] = position
    sequence_ids = np.zeros(batch * width, dtype=np.int64)
    sequence_ids[target] = np.repeat(number_in_row, lengths)
    # Segment B starts after a sentence's own first [SEP]: a running count of [SEP]s restarted per sentence.
    is_sep = (flat_ids == sep_token_id).astype(np.int64)
    seps = np.cumsum(is_sep)
    seps -= np.repeat(seps[starts] - is_sep[starts], lengths)
    token_type_ids = np.zeros(batch * width, dtype=np.int64)
    token_type_ids[target] = (seps - is_sep) > 0

    sequence = torch.from_numpy(sequence_ids.reshape(batch, width))
    return {
        "input_ids": torch.from_numpy(input_ids.reshape(batch, width)),
        "attention_mask": block_diagonal_mask(sequence),
        "token_type_ids": torch.from_numpy(token_type_ids.reshape(batch, width)),
        "position_ids": torch.from_numpy(position_ids.reshape(batch, width)),
        "labels": torch.from_numpy(labels.reshape(batch, width)),
        "entity_label_mask": torch.from_numpy(entity.reshape(batch, width)),
        "sequence_ids": sequence,
        "num_examples": torch.tensor(count, dtype=torch.int64),
    }


class PackingCollator(StepCollator):
    """Masks a step's sentences, packs them into rows of ``seq_len`` and deals the rows to its micro-batches.

    Args:
        collator: the run's :class:`MaskingCollator`; it masks (its strategy, seed and epoch) and its
            ``pad_to_multiple_of`` rounds the width of a micro-batch whose rows are all short.
        seq_len: room in a row (``--seq-len``); a masked sentence longer than that is an error naming it.
        micro_batches: batches to return per call (the gradient-accumulation steps); the rows are split into
            that many consecutive chunks, as even as they go, each with at least one row.

    Returns (from ``__call__``): a list of ``micro_batches`` batch dicts (see the module docstring).
    """

    def __init__(self, collator: MaskingCollator, seq_len: int, micro_batches: int = 1) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be positive")
        super().__init__(collator, micro_batches)
        self.seq_len = int(seq_len)

    def __call__(self, examples: Sequence[SegmentedExample]) -> list[dict[str, torch.Tensor]]:
        """Mask, pack and split ``examples`` into ``micro_batches`` packed batches."""
        if len(examples) < self.micro_batches:
            raise ValueError(f"{len(examples)} sentences cannot fill {self.micro_batches} micro-batches")
        return self.pack(self.mask(examples), [ex.index for ex in examples])

    def pack(self, masked: Sequence[MaskedExample],
             indices: Sequence[int] | None = None) -> list[dict[str, torch.Tensor]]:
        """Pack masked examples into ``micro_batches`` batches (``indices`` only name examples in errors)."""
        lengths = [len(m) for m in masked]
        longest = max(lengths)
        if longest > self.seq_len:
            bad = lengths.index(longest)
            which = f"example index {indices[bad]}" if indices is not None else f"example {bad}"
            raise ValueError(f"{which} has {longest} tokens after masking, more than a packed row's "
                             f"seq_len={self.seq_len}")
        rows = best_fit_decreasing(lengths, self.seq_len, min_rows=self.micro_batches)
        vocab, multiple = self.collator.vocab, self.collator.pad_to_multiple_of
        batches = []
        for chunk in np.array_split(np.arange(len(rows)), self.micro_batches):
            chosen = [rows[r] for r in chunk]
            fill = max(sum(lengths[i] for i in row) for row in chosen)
            width = min(self.seq_len, -(-fill // multiple) * multiple)
            batches.append(packed_batch(masked, chosen, width, vocab.pad_token_id, vocab.sep_token_id))
        return batches
