"""BertForMaskedLMAtLabels: the MLM head only at labelled positions, same loss and gradients as BertForMaskedLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from framework.batching.collator import MaskingCollator
from framework.data.example import IGNORE_INDEX
from framework.masking import MaskingContext, build_strategy
from framework.training.masked_lm import BertForMaskedLMAtLabels


@pytest.fixture(scope="module")
def batch(csl_segmented) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """16 real CSL sentences masked with entity_wwm."""
    ds = csl_segmented
    strategy = build_strategy("entity_wwm", None, MaskingContext(ds.vocab_info, ds.entity_table()))
    return MaskingCollator(strategy, ds.vocab_info, seed=5)([ds[i] for i in range(16)])


@pytest.fixture(scope="module")
def config(csl_segmented) -> BertConfig:  # noqa: ANN001
    return BertConfig(vocab_size=csl_segmented.vocab_info.vocab_size, hidden_size=64, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=128, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def _pair(config: BertConfig) -> tuple[BertForMaskedLM, BertForMaskedLMAtLabels]:
    torch.manual_seed(0)
    full = BertForMaskedLM(config).eval()
    sparse = BertForMaskedLMAtLabels(config).eval()
    sparse.load_state_dict(full.state_dict())
    return full, sparse


def test_same_loss_and_gradients_as_the_full_head(batch: dict[str, torch.Tensor], config: BertConfig) -> None:
    full, sparse = _pair(config)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
    a = full(**inputs)
    b = sparse(**inputs)
    selected = batch["labels"] != IGNORE_INDEX
    assert b.logits.shape == (int(selected.sum()), config.vocab_size)
    torch.testing.assert_close(b.logits, a.logits[selected], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-6, atol=1e-6)
    a.loss.backward()
    b.loss.backward()
    grads = dict(sparse.named_parameters())
    for name, p in full.named_parameters():
        torch.testing.assert_close(grads[name].grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_without_labels_it_is_the_parent(batch: dict[str, torch.Tensor], config: BertConfig) -> None:
    full, sparse = _pair(config)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    torch.testing.assert_close(sparse(**inputs).logits, full(**inputs).logits)


def test_a_batch_with_nothing_to_predict_gives_a_zero_loss(batch: dict[str, torch.Tensor], config: BertConfig) -> None:
    _, sparse = _pair(config)
    labels = torch.full_like(batch["labels"], IGNORE_INDEX)
    out = sparse(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels)
    assert out.loss.item() == 0.0 and out.logits.shape[0] == 0
    out.loss.backward()  # the graph is intact: an optimizer step after it is a no-op, not a crash


def test_loads_a_bert_mlm_checkpoint_with_every_weight(tmp_path: Path, config: BertConfig) -> None:
    full, _ = _pair(config)
    full.save_pretrained(tmp_path)
    model, info = BertForMaskedLMAtLabels.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for (name, p), q in zip(full.state_dict().items(), model.state_dict().values()):
        assert torch.equal(p, q), name
