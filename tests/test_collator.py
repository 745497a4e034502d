"""MaskingCollator on real CSL examples: padding, tensors, reproducibility across workers and epochs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from framework.batching.collator import MaskingCollator
from framework.data.example import IGNORE_INDEX, SegmentedExample
from framework.masking import MaskingContext, build_strategy, example_rng


@pytest.fixture(scope="module")
def context(csl_segmented) -> MaskingContext:  # noqa: ANN001 - SegmentedDataset
    """The sample's vocabulary and keyword table."""
    return MaskingContext(vocab=csl_segmented.vocab_info, entities=csl_segmented.entity_table())


class Subset(Dataset):
    """The first ``n`` examples of the segmented sample (picklable for worker processes)."""

    def __init__(self, dataset, n: int) -> None:  # noqa: ANN001
        self.dataset, self.n = dataset, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> SegmentedExample:
        return self.dataset[i]


def test_batch_layout(csl_segmented, context: MaskingContext) -> None:  # noqa: ANN001
    collator = MaskingCollator(build_strategy("entity_wwm", None, context), csl_segmented.vocab_info, seed=3)
    examples = [csl_segmented[i] for i in range(0, 200, 7)]
    batch = collator(examples)
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels", "entity_label_mask"}
    b, t = batch["input_ids"].shape
    assert b == len(examples) and t % 8 == 0
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (b, t)
    assert batch["entity_label_mask"].dtype == torch.bool
    masked = collator.mask(examples)  # same (seed, epoch, index): the same draw
    lengths = torch.tensor([len(m) for m in masked])
    assert t - 8 < int(lengths.max()) <= t
    assert (batch["attention_mask"].sum(1) == lengths).all()
    pad = batch["attention_mask"] == 0
    assert (batch["input_ids"][pad] == csl_segmented.vocab_info.pad_token_id).all()
    assert (batch["labels"][pad] == IGNORE_INDEX).all() and not batch["entity_label_mask"][pad].any()
    assert (batch["token_type_ids"] == 0).all()  # single sentences are all segment A
    for row, m in enumerate(masked):
        assert np.array_equal(batch["labels"][row, : len(m)].numpy(), m.labels)
        assert np.array_equal(batch["entity_label_mask"][row, : len(m)].numpy(), m.entity_label_mask)


def test_same_mask_whatever_the_batch_it_lands_in(csl_segmented, context: MaskingContext) -> None:  # noqa: ANN001
    collator = MaskingCollator(build_strategy("wwm", None, context), csl_segmented.vocab_info, seed=11)
    examples = [csl_segmented[i] for i in range(40)]
    together = collator(examples)
    alone = collator([examples[17]])
    n = int(alone["attention_mask"].sum())
    assert torch.equal(together["input_ids"][17, :n], alone["input_ids"][0, :n])
    # The collator masks with the strategy's (vectorised) mask_batch: the same labels as masking the example alone.
    expected = build_strategy("wwm", None, context).mask_batch([examples[17]], 11, 0)[0]
    assert np.array_equal(alone["labels"][0, :n].numpy(), expected.labels)
    # With reference_masks it is the one-example-at-a-time reference path instead.
    reference = MaskingCollator(build_strategy("wwm", None, context), csl_segmented.vocab_info, seed=11,
                                reference_masks=True)([examples[17]])
    expected = build_strategy("wwm", None, context).mask(examples[17], example_rng(11, 0, examples[17].index))
    assert np.array_equal(reference["labels"][0, :n].numpy(), expected.labels)


def test_epochs_differ_and_seeds_reproduce(csl_segmented, context: MaskingContext) -> None:  # noqa: ANN001
    strategy = build_strategy("entity_wwm", None, context)
    examples = [csl_segmented[i] for i in range(64)]
    a = MaskingCollator(strategy, csl_segmented.vocab_info, seed=5)
    b = MaskingCollator(strategy, csl_segmented.vocab_info, seed=5)
    first = a(examples)
    assert torch.equal(first["labels"], b(examples)["labels"])
    a.set_epoch(1)
    assert a.epoch == 1
    assert not torch.equal(first["labels"], a(examples)["labels"])
    a.set_epoch(0)
    assert torch.equal(first["labels"], a(examples)["labels"])


def test_persistent_workers_see_set_epoch(csl_segmented, context: MaskingContext) -> None:  # noqa: ANN001
    """Workers hold a copy of the collator; the shared epoch still reaches them, and results match in-process."""
    dataset = Subset(csl_segmented, 48)
    collator = MaskingCollator(build_strategy("wwm", None, context), csl_segmented.vocab_info, seed=9)
    loader = DataLoader(dataset, batch_size=16, collate_fn=collator, num_workers=2, persistent_workers=True,
                        multiprocessing_context="fork")
    in_process = DataLoader(dataset, batch_size=16, collate_fn=collator, num_workers=0)
    for epoch in (0, 1):
        collator.set_epoch(epoch)
        from_workers = [batch["labels"] for batch in loader]
        expected = [batch["labels"] for batch in in_process]
        assert all(torch.equal(x, y) for x, y in zip(from_workers, expected))
        if epoch == 0:
            epoch0 = from_workers
    assert not all(torch.equal(x, y) for x, y in zip(epoch0, from_workers))


def test_max_length_pads_exactly_and_rejects_longer(csl_segmented, context: MaskingContext) -> None:  # noqa: ANN001
    strategy = build_strategy("token", None, context)
    examples = [csl_segmented[i] for i in range(10)]
    longest = max(len(ex) for ex in examples)
    fixed = MaskingCollator(strategy, csl_segmented.vocab_info, seed=0, max_length=longest + 3)
    assert fixed(examples)["input_ids"].shape[1] == longest + 3
    short = MaskingCollator(strategy, csl_segmented.vocab_info, seed=0, max_length=longest - 1)
    with pytest.raises(ValueError, match="example index .* more than max_length"):
        short(examples)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        MaskingCollator(strategy, csl_segmented.vocab_info, seed=0, pad_to_multiple_of=0)


def test_sentence_pairs_get_segment_b_after_the_first_sep(context: MaskingContext) -> None:
    vocab = context.vocab
    ids = np.asarray([vocab.cls_token_id, 100, 101, vocab.sep_token_id, 102, 103, vocab.sep_token_id], dtype=np.int32)
    special = np.isin(ids, [vocab.cls_token_id, vocab.sep_token_id])
    words = np.asarray([[1, 3], [4, 6]], dtype=np.int32)
    pair = SegmentedExample(ids, special, words, np.zeros((0, 2), np.int32), np.zeros(0, np.int32))
    collator = MaskingCollator(build_strategy("wwm", {"mask_prob": 0.0}, context), vocab, seed=0)
    batch = collator([pair])
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 1, 1, 1, 0]
