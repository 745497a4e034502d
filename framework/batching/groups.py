"""Step groups: the sentences of one optimiser step collated together, then served one micro-batch at a time.

Packing (and length bucketing) lay out the sentences of a whole optimiser step on this rank, ``micro-batch x
gradient accumulation`` of them, rather than those of one micro-batch: the more sentences a packer sees, the
fuller its rows (on CSL at ``--seq-len 128``, 93.5% real tokens from 32 sentences, 98.6% from 256). The data
loader therefore draws step-sized groups from the sampler, a group collator turns each into one batch per
micro-batch, and :class:`StepLoader` hands those to the training loop one by one, so the loop, DeepSpeed's
gradient accumulation and ``train_micro_batch_size_per_gpu`` (still counted in sentences) see nothing new.

Why whole steps: a checkpoint is written only after an optimiser step, so the ``epoch_position`` it records
(sentences consumed) is a multiple of the group. A resumed run's sampler starts there, draws the same groups
and (masks following from ``(seed, epoch, index)``) lays them out into the same batches.

:func:`batch_counts` reads sentences, real tokens and positions from a padded or a packed batch alike; the
loop's ``tokens_seen``, ``epoch_position`` and ``real_token_fraction`` come from it.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from framework.batching.collator import MaskingCollator
from framework.data.example import MaskedExample, SegmentedExample

logger = logging.getLogger(__name__)

LAYOUTS = ("padded", "bucketed", "packed")
"""How training batches are laid out: one sentence a row (padded to the longest), the same after sorting a
step's sentences by length (``--length-bucketing``), or several sentences a row (``--packing``)."""


def resolve_layout(packing: bool | None, length_bucketing: bool, cuda: bool) -> str:
    """The training layout: ``packing`` None means on for a CUDA run (the GPU configs) unless bucketing is asked.

    Raises:
        ValueError: both packing and length bucketing asked for (packed rows have no padding to bucket).
    """
    if packing and length_bucketing:
        raise ValueError("--packing and --length-bucketing exclude each other: packed rows need no bucketing")
    if packing is None:
        packing = cuda and not length_bucketing
    if packing:
        return "packed"
    return "bucketed" if length_bucketing else "padded"


class StepCollator:
    """What the batch builders of a whole step share: the run's collator masks, a call returns micro-batches.

    Args:
        collator: the run's :class:`MaskingCollator` (its strategy, seed and epoch decide every mask).
        micro_batches: batches to return per call (the gradient-accumulation steps).
    """

    def __init__(self, collator: MaskingCollator, micro_batches: int = 1) -> None:
        if micro_batches < 1:
            raise ValueError(f"micro_batches={micro_batches} must be at least 1")
        self.collator = collator
        self.micro_batches = int(micro_batches)

    @property
    def epoch(self) -> int:
        """The epoch the next batches are masked for."""
        return self.collator.epoch

    def set_epoch(self, epoch: int) -> None:
        """Mask the following batches for ``epoch`` (reaches data-loader workers, see :class:`MaskingCollator`)."""
        self.collator.set_epoch(epoch)

    def mask(self, examples: Sequence[SegmentedExample]) -> list[MaskedExample]:
        """The strategy's masked examples for the current epoch, before padding or packing."""
        return self.collator.mask(examples)


class BucketingCollator(StepCollator):
    """Masks a step's sentences, sorts them by masked length and pads each micro-batch of them separately.

    Every micro-batch keeps ``len(examples) / micro_batches`` sentences (rows), so shapes change only in
    width; padding shrinks because neighbours in length share a micro-batch. It needs gradient accumulation:
    with one micro-batch per step there is nothing to sort between.

    Args:
        collator: the run's :class:`MaskingCollator` (masks, then pads each micro-batch).
        micro_batches: batches to return per call (the gradient-accumulation steps).
    """

    def __call__(self, examples: Sequence[SegmentedExample]) -> list[dict[str, torch.Tensor]]:
        """Mask ``examples``, longest first, into ``micro_batches`` padded batches of equal row counts."""
        if len(examples) % self.micro_batches:
            raise ValueError(f"{len(examples)} sentences do not split into {self.micro_batches} equal micro-batches")
        masked = self.mask(examples)
        lengths = np.fromiter(map(len, masked), dtype=np.int64, count=len(masked))
        order = np.argsort(-lengths, kind="stable")
        return [self.collator.pad([masked[i] for i in chunk], [examples[i].index for i in chunk])
                for chunk in np.split(order, self.micro_batches)]


class StepLoader:
    """Iterates a data loader of step groups (lists of micro-batches) one micro-batch at a time.

    Args:
        loader: a ``DataLoader`` whose ``batch_size`` is the group (micro-batch x accumulation sentences) and
            whose ``collate_fn`` returns a list of ``micro_batches`` batches.
        micro_batches: micro-batches per group.
    """

    def __init__(self, loader: Any, micro_batches: int) -> None:
        self.loader = loader
        self.micro_batches = int(micro_batches)

    @property
    def sampler(self) -> Any:
        """The underlying loader's sampler."""
        return self.loader.sampler

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        start, group = getattr(self.loader.sampler, "start", 0), self.loader.batch_size
        if start % group:
            # Only a checkpoint of another layout or geometry lands here; the batches are still deterministic.
            logger.warning("resuming at sentence %d of the epoch, not a multiple of the %d-sentence step group: "
                           "this epoch's batches differ from an uninterrupted run's (was the batch layout, "
                           "micro-batch or accumulation changed?)", start, group)
        for batches in self.loader:
            yield from batches

    def __len__(self) -> int:
        return len(self.loader) * self.micro_batches


def batch_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int, int]:
    """``(sentences, real tokens, positions)`` of a padded or packed batch, from its host tensors.

    ``real tokens / positions`` is the batch's real-token fraction: a packed batch marks real tokens with
    ``sequence_ids > 0`` (its ``attention_mask`` is 4D), a padded one with its 2D ``attention_mask``. Read
    through ``Tensor.numpy()``, which refuses a device tensor: counting can never wait on an accelerator.
    """
    if "sequence_ids" in batch:
        sequence_ids = batch["sequence_ids"]
        return (int(batch["num_examples"].numpy()), int(np.count_nonzero(sequence_ids.numpy())),
                int(sequence_ids.numel()))
    mask = batch["attention_mask"]
    return int(mask.shape[0]), int(mask.numpy().sum()), int(mask.numel())
