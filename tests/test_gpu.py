"""What only a CUDA GPU can show: fp16 with dynamic loss scaling on DeepSpeed's FusedLamb and on the framework's
LAMB fallback, bf16 steps, and packed attention equal to padded attention on the GPU's kernels.

Marked ``gpu`` and skipped without CUDA; ``bash launch/gpu_check.sh`` runs them (``pytest -m gpu``) on a GPU
machine. Engines come from the shipped ``ds_configs/2080ti.json`` through :func:`build_engine`, as training
builds them; the sentences for the packing check are real CSL ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from framework.config import DS_CONFIG_DIR, TrainingConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

VOCAB = 200


def _process_group() -> None:
    """The world of one a plain ``python`` run gets (NCCL on a GPU), unless a test already started one."""
    from framework.training.distributed import init_distributed

    if not torch.distributed.is_initialized():
        init_distributed()


def _model(seed: int = 0) -> torch.nn.Module:
    from transformers import BertConfig

    from framework.training.masked_lm import BertForMaskedLMAtLabels
    from framework.training.model import attention_implementation

    torch.manual_seed(seed)
    return BertForMaskedLMAtLabels(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=128,
                                              max_position_embeddings=64,
                                              attn_implementation=attention_implementation()))


def _engine(tmp_path: Path, precision: str = "fp16") -> tuple[Any, Any]:
    """An engine from ds_configs/2080ti.json (fp16 LAMB), with its precision switched to ``precision``."""
    from framework.training.engine import build_engine

    _process_group()
    values = json.loads((DS_CONFIG_DIR / "2080ti.json").read_text(encoding="utf-8"))
    values["fp16"]["enabled"] = precision == "fp16"
    values["fp16"]["hysteresis"] = 1  # the file's 2 would spend the first overflow on the hysteresis, not the scale
    values["bf16"] = {"enabled": precision == "bf16"}
    path = tmp_path / f"2080ti-{precision}.json"
    path.write_text(json.dumps(values), encoding="utf-8")
    training = TrainingConfig(deepspeed_config=str(path), max_steps=100, micro_batch_size=8,
                              gradient_accumulation_steps=1, warmup_steps=1, lr=1e-2)
    return build_engine(_model(), training, 1, 800, is_main=False)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (8, 32), generator=g)
    labels = torch.where(torch.rand(8, 32, generator=g) < 0.2, ids, -100)
    labels[:, 1] = ids[:, 1]
    return {"input_ids": ids.cuda(), "attention_mask": torch.ones_like(ids).cuda(),
            "token_type_ids": torch.zeros_like(ids).cuda(), "labels": labels.cuda()}


def _weights(engine: Any) -> list[torch.Tensor]:
    return [p.detach().float().clone() for p in engine.module.parameters()]


def _overflow_step_is_skipped_and_scale_halves(engine: Any) -> None:
    """Plant an inf in one gradient: the step must leave the weights alone and halve the dynamic loss scale."""
    from framework.training.trainer import _loss_scale

    before, scale = _weights(engine), _loss_scale(engine)
    loss = engine(**_batch()).loss
    engine.backward(loss)
    next(engine.module.parameters()).grad.fill_(float("inf"))
    engine.step()
    assert _loss_scale(engine) == scale / 2
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(engine)))


def _learns(engine: Any, steps: int = 30) -> None:
    """Repeated steps on one batch: finite losses that fall, weights that move."""
    batch, losses, before = _batch(1), [], _weights(engine)
    for _ in range(steps):
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] - 0.2, losses  # 0.39 on CPU bf16
    assert any(not torch.equal(a, b) for a, b in zip(before, _weights(engine)))


def test_fp16_fused_lamb_with_dynamic_loss_scaling(tmp_path: Path) -> None:
    from framework.training.deepspeed_config import fused_lamb_available

    if not fused_lamb_available():
        pytest.skip("DeepSpeed's FusedLamb cannot be built here (no prebuilt op and no CUDA toolkit)")
    engine, ds = _engine(tmp_path, "fp16")
    assert ds.precision == "fp16" and ds.client_optimizer is None  # DeepSpeed's own FusedLamb
    basic = getattr(engine.optimizer, "optimizer", engine.optimizer)
    assert type(basic).__name__ == "FusedLamb"
    _overflow_step_is_skipped_and_scale_halves(engine)
    _learns(engine)


def test_fp16_falls_back_to_the_framework_lamb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import framework.training.deepspeed_config as deepspeed_config
    from framework.training.lamb import Lamb

    monkeypatch.setattr(deepspeed_config, "fused_lamb_available", lambda: False)  # as without nvcc
    engine, ds = _engine(tmp_path, "fp16")
    assert ds.precision == "fp16" and ds.client_optimizer is not None
    assert isinstance(getattr(engine.optimizer, "optimizer", engine.optimizer), Lamb)
    assert "has_overflow_serial" in vars(engine.optimizer.overflow_checker)  # the fused overflow test
    _overflow_step_is_skipped_and_scale_halves(engine)
    _learns(engine)


def test_bf16_steps(tmp_path: Path) -> None:
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    engine, ds = _engine(tmp_path, "bf16")
    assert ds.precision == "bf16" and next(engine.module.parameters()).dtype == torch.bfloat16
    _learns(engine)


def test_packed_attention_equals_padded_on_the_gpu(csl_segmented) -> None:  # noqa: ANN001
    """The CPU equality of tests/test_packing.py on CUDA kernels (fp32, TF32 off, tolerance 1e-5)."""
    from test_packing import SEQ_LEN, collator_for, epoch_order, sentence_logits, tiny_model

    from framework.batching.packing import PackingCollator, best_fit_decreasing
    from framework.masking import MaskingContext

    context = MaskingContext(vocab=csl_segmented.vocab_info, entities=csl_segmented.entity_table())
    collator = collator_for(csl_segmented, context)
    examples = [csl_segmented[int(i)] for i in epoch_order(len(csl_segmented))[:48]]
    masked = collator.mask(examples)
    padded = {k: v.cuda() for k, v in collator.pad(masked).items()}
    packed = {k: v.cuda() for k, v in PackingCollator(collator, SEQ_LEN).pack(masked)[0].items()}
    model = tiny_model(csl_segmented.vocab_info.vocab_size, "sdpa").cuda()
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        alone = sentence_logits(model, padded, packed=False)
        together = sentence_logits(model, packed, packed=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous
    order = [i for row in best_fit_decreasing([len(m) for m in masked], SEQ_LEN) for i in row]
    assert len(together) == len(examples)
    for i, logits in zip(order, together):
        torch.testing.assert_close(logits, alone[i], rtol=1e-5, atol=1e-5)
