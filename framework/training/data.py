"""Feeding the engine: a deterministic, resumable, rank-sharded sampler and the data loaders built on it.

Reproducibility rests on three facts:

* the order of an epoch is a permutation drawn from ``(seed, epoch)`` alone, identical on every rank; each rank
  takes every ``world_size``-th index of it, so ranks never see the same example in an epoch;
* the masking of an example is drawn from ``(seed, epoch, index)`` by the collator, whatever worker runs it;
* the sampler can start an epoch at any position, so a resumed run continues with exactly the batches an
  uninterrupted run would have seen next.

The data loader gets its own ``torch.Generator``: otherwise creating an iterator draws from the global torch
RNG, which drives dropout, and a resumed run (which creates its iterator at another moment) would diverge.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler


class ResumableDistributedSampler(Sampler[int]):
    """Shuffles per epoch from the seed, shards across ranks and can resume mid-epoch.

    Args:
        dataset_size: number of examples.
        world_size: number of data-parallel ranks.
        rank: this rank, ``0 <= rank < world_size``.
        seed: seeds every epoch's permutation (together with the epoch number).
        shuffle: permute each epoch (training) or keep the file order (evaluation).
        drop_last: drop the tail that does not divide evenly among ranks, so every rank runs the same number
            of steps (required: a rank that runs out early would leave the others waiting in all-reduce).
            Without it, the tail is padded by repeating the first indices (evaluation of a small set).
    """

    def __init__(self, dataset_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True) -> None:
        if dataset_size <= 0:
            raise ValueError("the dataset is empty: there is nothing to sample")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} ranks")
        self.dataset_size = int(dataset_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        if drop_last and dataset_size < world_size:
            raise ValueError(f"{dataset_size} examples cannot be shared among {world_size} ranks; use more data")

    @property
    def per_rank(self) -> int:
        """Examples this rank sees in one full epoch."""
        if self.drop_last:
            return self.dataset_size // self.world_size
        return -(-self.dataset_size // self.world_size)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` examples of this rank (to resume)."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start={start} is outside an epoch of {self.per_rank} examples per rank")
        self.epoch = int(epoch)
        self.start = int(start)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """All of this rank's indices for ``epoch``, from its beginning."""
        if self.shuffle:
            order = np.random.default_rng([self.seed & 0xFFFFFFFF, int(epoch)]).permutation(self.dataset_size)
        else:
            order = np.arange(self.dataset_size)
        total = self.per_rank * self.world_size
        if total > len(order):  # pad by wrapping around, only without drop_last
            order = np.concatenate([order, order[: total - len(order)]])
        return order[:total][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch)[self.start :].tolist())

    def __len__(self) -> int:
        return self.per_rank - self.start


def batches_per_epoch(sampler: ResumableDistributedSampler, micro_batch_size: int) -> int:
    """Full micro-batches per rank per epoch (the loader drops the last partial one)."""
    return sampler.per_rank // micro_batch_size


def build_loader(dataset: Any, sampler: ResumableDistributedSampler, collate_fn: Callable[[Sequence[Any]], dict],
                 micro_batch_size: int, workers: int, seed: int, drop_last: bool = True) -> DataLoader:
    """A ``DataLoader`` over ``sampler`` with its own generator (see the module docstring)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=micro_batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        drop_last=drop_last,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        # The platform default (fork on Linux) on purpose: forked workers share the memory-mapped segmented
        # cache, whereas spawn would pickle it, copying every array into every worker. Workers never touch CUDA.
        persistent_workers=False,
    )
