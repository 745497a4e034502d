"""framework.training.metrics: token-weighted MLM metrics, both logits layouts, and the cross-rank reduction."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from framework.data.example import IGNORE_INDEX
from framework.training.metrics import MLMMetrics

VOCAB = 11


def make_batch(seed: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random logits, labels with ~30% predicted positions, and an entity mask over part of them."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, VOCAB, generator=gen) * 2
    labels = torch.randint(0, VOCAB, (batch, length), generator=gen)
    predicted = torch.rand(batch, length, generator=gen) < 0.3
    predicted[0, 0] = True  # at least one prediction per batch
    labels[~predicted] = IGNORE_INDEX
    entity = (torch.rand(batch, length, generator=gen) < 0.5) & predicted
    return logits, labels, entity


def direct_metrics(batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """The metrics computed in one go over every labelled position of every batch."""
    logits = torch.cat([b[0].reshape(-1, VOCAB) for b in batches]).double()
    labels = torch.cat([b[1].reshape(-1) for b in batches])
    entity = torch.cat([b[2].reshape(-1) for b in batches])
    keep = labels != IGNORE_INDEX
    logits, labels, entity = logits[keep], labels[keep], entity[keep]
    losses = -torch.log_softmax(logits, -1).gather(1, labels[:, None]).squeeze(1)
    correct = logits.argmax(-1) == labels
    return {
        "loss": losses.mean().item(),
        "perplexity": math.exp(losses.mean().item()),
        "masked_accuracy": correct.double().mean().item(),
        "entity_accuracy": correct[entity].double().mean().item(),
        "num_predictions": float(keep.sum()),
        "num_entity_predictions": float(entity.sum()),
    }


def assert_metrics_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() >= want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key


def test_token_weighted_over_uneven_batches_equals_one_pass() -> None:
    batches = [make_batch(0, 2, 9), make_batch(1, 5, 9), make_batch(2, 1, 9)]
    metrics = MLMMetrics()
    for logits, labels, entity in batches:
        metrics.update(logits, labels, entity)
    got = metrics.compute()
    assert_metrics_close(got, direct_metrics(batches))
    # A mean of per-batch means would differ: the batches hold different numbers of predictions.
    per_batch = []
    for b in batches:
        m = MLMMetrics()
        m.update(*b)
        per_batch.append(m.compute()["loss"])
    assert got["loss"] != pytest.approx(sum(per_batch) / len(per_batch), rel=1e-6)


def test_gathered_layout_gives_the_same_result() -> None:
    logits, labels, entity = make_batch(3, 4, 12)
    full = MLMMetrics()
    full.update(logits, labels, entity)
    keep = labels != IGNORE_INDEX
    gathered = MLMMetrics()
    gathered.update(logits[keep], labels[keep], entity[keep])
    assert gathered.compute() == pytest.approx(full.compute(), nan_ok=True)  # whole-word: nan without word ids


def test_known_values_by_hand() -> None:
    # Two predictions: one certain and right (loss ~0), one uniform over 4 classes (loss ln 4) and wrong-ish.
    logits = torch.tensor([[100.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([0, 3])
    metrics = MLMMetrics()
    metrics.update(logits, labels, torch.tensor([True, False]))
    out = metrics.compute()
    assert out["loss"] == pytest.approx(math.log(4) / 2)
    assert out["perplexity"] == pytest.approx(2.0)
    assert out["masked_accuracy"] == pytest.approx(0.5)  # argmax of the uniform row is 0, not 3
    assert out["entity_accuracy"] == pytest.approx(1.0)
    assert out["num_predictions"] == 2


def test_without_entity_mask_or_predictions_values_are_nan() -> None:
    logits, labels, _ = make_batch(4, 2, 5)
    metrics = MLMMetrics()
    metrics.update(logits, labels)
    out = metrics.compute()
    assert math.isnan(out["entity_accuracy"]) and out["num_entity_predictions"] == 0
    assert math.isfinite(out["loss"])

    empty = MLMMetrics()
    empty.update(logits, torch.full_like(labels, IGNORE_INDEX))
    out = empty.compute()
    assert out["num_predictions"] == 0 and math.isnan(out["loss"]) and math.isnan(out["masked_accuracy"])


def test_diverged_loss_gives_infinite_perplexity() -> None:
    metrics = MLMMetrics()
    metrics.update(torch.tensor([[0.0, 2000.0]]), torch.tensor([0]))
    assert metrics.compute()["perplexity"] == math.inf


def test_reset_and_shape_errors() -> None:
    logits, labels, entity = make_batch(5, 2, 6)
    metrics = MLMMetrics()
    metrics.update(logits, labels, entity)
    metrics.reset()
    assert metrics.compute()["num_predictions"] == 0
    with pytest.raises(ValueError, match="vocabulary axis"):
        metrics.update(logits, labels[:, :-1])
    with pytest.raises(ValueError, match="entity_label_mask"):
        metrics.update(logits, labels, entity[:1])


def test_reduce_without_distributed_is_a_no_op_but_only_once() -> None:
    metrics = MLMMetrics()
    metrics.update(*make_batch(6, 2, 6))
    before = metrics.compute()
    metrics.reduce_across_ranks()
    assert metrics.compute() == pytest.approx(before, nan_ok=True)
    with pytest.raises(RuntimeError, match="already called"):
        metrics.reduce_across_ranks()
    with pytest.raises(RuntimeError, match="reset"):
        metrics.update(*make_batch(7, 1, 6))


def _rank_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One gloo rank: accumulate its shard, all-reduce, save the result."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        metrics = MLMMetrics()
        for seed in range(rank, 6, world_size):  # rank 0: batches 0,2,4; rank 1: batches 1,3,5
            metrics.update(*make_batch(seed, 1 + seed, 7))
        metrics.reduce_across_ranks()
        torch.save(metrics.compute(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_reduce_across_two_gloo_ranks_equals_single_process(tmp_path: Path) -> None:
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    want = direct_metrics([make_batch(seed, 1 + seed, 7) for seed in range(6)])
    for rank in range(2):
        assert_metrics_close(torch.load(tmp_path / f"rank{rank}.pt"), want)


def test_top5_and_whole_word_accuracy_on_a_hand_made_batch() -> None:
    # 4 predicted positions: words {0: positions 0,1}, {1: position 2}; position 3 belongs to no scored word.
    logits = torch.full((4, 10), -10.0)
    logits[0, 3] = 5.0  # right (target 3)
    logits[1, 7] = 5.0  # wrong (target 4), but 4 is the runner-up: inside the top 5
    logits[1, 4] = 4.0
    logits[2, 1] = 5.0  # right (target 1)
    logits[3, 5:10] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])  # wrong (target 2), and 2 is outside its top 5
    labels = torch.tensor([3, 4, 1, 2])
    word_ids = torch.tensor([0, 0, 1, -1])
    metrics = MLMMetrics()
    metrics.update(logits, labels, word_ids=word_ids)
    out = metrics.compute()
    assert out["masked_accuracy"] == pytest.approx(0.5)
    assert out["num_words"] == 2
    assert out["whole_word_accuracy"] == pytest.approx(0.5)  # word 0 has a wrong token, word 1 is right
    assert out["top5_accuracy"] == pytest.approx(0.75)
    without = MLMMetrics()
    without.update(logits, labels)
    assert math.isnan(without.compute()["whole_word_accuracy"])


def test_whole_word_accuracy_of_a_perfect_model_is_one() -> None:
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, 7, IGNORE_INDEX]])
    logits = torch.nn.functional.one_hot(labels.clamp(min=0), VOCAB).float() * 10
    word_ids = torch.tensor([[-1, 0, 0, 1, -1]])
    metrics = MLMMetrics()
    metrics.update(logits, labels, word_ids=word_ids)
    out = metrics.compute()
    assert out["whole_word_accuracy"] == 1.0 and out["num_words"] == 2 and out["top5_accuracy"] == 1.0
