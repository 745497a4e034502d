"""The resumable distributed sampler and the loaders built on it: sharding, per-epoch shuffling from the seed,
exact mid-epoch resumption, and independence from the global torch RNG (which drives dropout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from framework.training.data import ResumableDistributedSampler, batches_per_epoch, build_loader


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_get_disjoint_equal_shards_of_each_epoch(world: int) -> None:
    n = 101
    samplers = [ResumableDistributedSampler(n, world, rank, seed=5) for rank in range(world)]
    for epoch in (0, 1):
        shards = []
        for s in samplers:
            s.set_epoch(epoch)
            shards.append(list(s))
        assert len({len(x) for x in shards}) == 1 and len(shards[0]) == n // world
        flat = [i for shard in shards for i in shard]
        assert len(set(flat)) == len(flat) == (n // world) * world  # no example twice, tail dropped
        assert set(flat) <= set(range(n))


def test_order_depends_on_seed_and_epoch_only() -> None:
    a, b, c = (ResumableDistributedSampler(500, 2, 1, seed=s) for s in (3, 3, 4))
    for s in (a, b, c):
        s.set_epoch(2)
    assert list(a) == list(b)
    assert list(a) != list(c)
    b.set_epoch(3)
    assert list(a) != list(b)
    assert sorted(a.epoch_indices(2)) != list(a.epoch_indices(2))  # actually shuffled


def test_resume_mid_epoch_continues_exactly() -> None:
    s = ResumableDistributedSampler(333, 2, 0, seed=11)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start=40)
    assert list(s) == full[40:] and len(s) == len(full) - 40
    with pytest.raises(ValueError, match="outside an epoch"):
        s.set_epoch(4, start=len(full) + 1)


def test_evaluation_order_without_drop_last_pads_by_wrapping() -> None:
    shards = []
    for rank in range(3):
        s = ResumableDistributedSampler(10, 3, rank, shuffle=False, drop_last=False)
        shards.append(list(s))
    assert shards == [[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        ResumableDistributedSampler(0)
    with pytest.raises(ValueError, match="outside a world"):
        ResumableDistributedSampler(10, 2, 2)
    with pytest.raises(ValueError, match="cannot be shared"):
        ResumableDistributedSampler(1, 2, 0)


def test_loader_over_real_csl_is_resumable_and_leaves_global_rng_alone(csl_segmented) -> None:  # noqa: ANN001
    from framework.batching.collator import MaskingCollator
    from framework.masking.base import MaskingContext
    from framework.masking.registry import build_strategy

    strategy = build_strategy("entity_wwm", {}, MaskingContext(csl_segmented.vocab_info, csl_segmented.entity_table()))
    collator = MaskingCollator(strategy, csl_segmented.vocab_info, seed=9)
    sampler = ResumableDistributedSampler(len(csl_segmented), 2, 1, seed=9)
    loader = build_loader(csl_segmented, sampler, collator, micro_batch_size=16, workers=0, seed=9)
    assert batches_per_epoch(sampler, 16) == len(csl_segmented) // 2 // 16

    def epoch_batches(epoch: int, start: int = 0, limit: int = 6) -> list[dict[str, torch.Tensor]]:
        sampler.set_epoch(epoch, start=start)
        collator.set_epoch(epoch)
        out = []
        for batch in loader:
            out.append(batch)
            if len(out) == limit:
                break
        return out

    before = torch.get_rng_state()
    first = epoch_batches(1)
    assert torch.equal(torch.get_rng_state(), before), "iterating the loader must not draw from the global RNG"
    resumed = epoch_batches(1, start=3 * 16, limit=3)
    for a, b in zip(first[3:], resumed):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    other_epoch = epoch_batches(2, limit=1)[0]
    assert not torch.equal(other_epoch["input_ids"][:, :8], first[0]["input_ids"][:, :8])
    labelled = (first[0]["labels"] != -100).sum().item() / first[0]["attention_mask"].sum().item()
    assert 0.05 < labelled < 0.3  # masking really happened (about 15% of tokens)
    assert np.all(first[0]["input_ids"].shape[1] % 8 == 0)


def test_worker_processes_produce_the_same_batches(csl_segmented) -> None:  # noqa: ANN001
    from framework.batching.collator import MaskingCollator
    from framework.masking.base import MaskingContext
    from framework.masking.registry import build_strategy

    strategy = build_strategy("wwm", {}, MaskingContext(csl_segmented.vocab_info, None))
    batches = {}
    for workers in (0, 2):
        collator = MaskingCollator(strategy, csl_segmented.vocab_info, seed=1)
        sampler = ResumableDistributedSampler(len(csl_segmented), 1, 0, seed=1)
        loader = build_loader(csl_segmented, sampler, collator, micro_batch_size=8, workers=workers, seed=1)
        sampler.set_epoch(3, start=16)
        collator.set_epoch(3)
        batches[workers] = [b for _, b in zip(range(4), loader)]
    for a, b in zip(batches[0], batches[2]):
        for key in a:
            assert torch.equal(a[key], b[key]), key
