"""framework.training.export and launch/export.py: real DeepSpeed checkpoints -> transformers folders.

A tiny BERT is trained one step in a real single-process DeepSpeed engine (ZeRO-0 in fp32, ZeRO-2 in bf16),
checkpointed by the framework's CheckpointManager, exported, reloaded with transformers and used by the
fill-mask pipeline on a real CSL sentence.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from framework.training.distributed import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class TrainedCheckpoint:
    """One engine after one training step, and the checkpoint it wrote."""

    engine: object
    root: Path  # OUTPUT/checkpoints
    tag_dir: Path  # OUTPUT/checkpoints/step-00000001
    stage: int


def _init_single_process_group() -> None:
    """A world of one (gloo) for DeepSpeed, unless a previous test already started one."""
    import deepspeed

    if torch.distributed.is_initialized():
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)


def _train_one_step_and_save(tmp: Path, tokenizer_dir: Path, sentences: list[str], stage: int, bf16: bool,
                             rank: int = 0) -> TrainedCheckpoint:
    import deepspeed
    from transformers import AutoTokenizer

    from framework.config import RunConfig
    from framework.training.checkpoint import CheckpointManager, TrainState
    from framework.training.export import write_hf_config
    from framework.training.lamb import Lamb
    from framework.training.model import bert_config

    if rank == 0:
        _init_single_process_group()
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(stage)
    from transformers import BertForMaskedLM

    model = BertForMaskedLM(bert_config("tiny", len(tokenizer), tokenizer.pad_token_id))
    config = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
              "bf16": {"enabled": bf16}, "steps_per_print": 10**9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=Lamb(model.parameters(), lr=1e-2), config=config)
    batch = tokenizer(sentences[4 * rank : 4 * rank + 4], padding=True, truncation=True, max_length=48,
                      return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    loss = engine(**batch, labels=labels).loss
    engine.backward(loss)
    engine.step()

    root = tmp / "output" / "checkpoints"
    tag_dir = CheckpointManager(root, keep_last=2, rank=rank).save(engine, TrainState(step=1), RunConfig())
    if rank == 0:
        write_hf_config(engine.module, tokenizer, tag_dir)
    return TrainedCheckpoint(engine, root, tag_dir, stage)


@pytest.fixture(scope="module")
def zero0(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, csl_sentences: list[str]
) -> TrainedCheckpoint:
    return _train_one_step_and_save(tmp_path_factory.mktemp("zero0"), tiny_tokenizer_dir, csl_sentences, 0, bf16=False)


@pytest.fixture(scope="module")
def zero2(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path, csl_sentences: list[str]
) -> TrainedCheckpoint:
    return _train_one_step_and_save(tmp_path_factory.mktemp("zero2"), tiny_tokenizer_dir, csl_sentences, 2, bf16=True)


def masked_sentence(sentences: list[str]) -> str:
    """A real CSL sentence with one character replaced by [MASK]."""
    sentence = next(s for s in sentences if len(s) > 20)
    return sentence[:6] + "[MASK]" + sentence[7:]


def assert_loads_and_fills_masks(out: Path, sentences: list[str], tokenizer_dir: Path) -> "torch.nn.Module":
    from transformers import BertForMaskedLM, BertTokenizer, pipeline

    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    model = BertForMaskedLM.from_pretrained(str(out))
    assert next(model.parameters()).dtype == torch.float32
    tokenizer = BertTokenizer.from_pretrained(str(out))
    assert tokenizer.get_vocab() == BertTokenizer.from_pretrained(str(tokenizer_dir)).get_vocab()

    fill = pipeline("fill-mask", model=str(out), top_k=3)
    text = masked_sentence(sentences)
    predictions = fill(text)
    assert len(predictions) == 3 and all(p["token_str"] and 0 <= p["score"] <= 1 for p in predictions)
    # The pipeline's best score is the reloaded model's softmax at the mask position.
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits[0, (enc["input_ids"][0] == tokenizer.mask_token_id).nonzero()[0, 0]]
    assert predictions[0]["score"] == pytest.approx(torch.softmax(logits, -1).max().item(), rel=1e-4)
    return model


def assert_same_weights(exported: torch.nn.Module, module: torch.nn.Module, atol: float) -> None:
    want = module.state_dict()
    got = exported.state_dict()
    assert got.keys() == want.keys()
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor.float(), rtol=0, atol=atol, msg=name)


def test_zero0_checkpoint_exports_exact_fp32_weights(
    zero0: TrainedCheckpoint, tmp_path: Path, csl_sentences, tiny_tokenizer_dir
) -> None:
    from framework.training.export import export_checkpoint

    out = export_checkpoint(zero0.tag_dir, tmp_path / "model")
    model = assert_loads_and_fills_masks(out, csl_sentences, tiny_tokenizer_dir)
    assert_same_weights(model, zero0.engine.module, atol=0.0)


def test_zero2_checkpoint_exports_the_fp32_master_weights(
    zero2: TrainedCheckpoint, tmp_path: Path, csl_sentences, tiny_tokenizer_dir
) -> None:
    from framework.training.export import export_checkpoint

    assert list(zero2.tag_dir.glob("*zero_pp_rank_0_*optim_states.pt")), "ZeRO-2 wrote no optimizer shard"
    out = export_checkpoint(zero2.root, tmp_path / "model")  # the checkpoints folder: its latest tag is used
    model = assert_loads_and_fills_masks(out, csl_sentences, tiny_tokenizer_dir)
    # The bf16 module is the fp32 master rounded once: the export matches it to bf16 precision, and the
    # master itself exactly.
    assert_same_weights(model, zero2.engine.module, atol=2e-2)
    master = torch.cat([p.float().flatten() for p in zero2.engine.optimizer.single_partition_of_fp32_groups])
    exported = torch.cat([model.state_dict()[n].flatten() for n, _ in zero2.engine.module.named_parameters()])
    assert master.numel() >= exported.numel()
    torch.testing.assert_close(exported, master[: exported.numel()], rtol=0, atol=0)


def test_export_from_engine(zero2: TrainedCheckpoint, tmp_path: Path, csl_sentences, tiny_tokenizer_dir) -> None:
    from framework.training.export import export_from_engine

    out = export_from_engine(zero2.engine, tiny_tokenizer_dir, tmp_path / "model")
    model = assert_loads_and_fills_masks(out, csl_sentences, tiny_tokenizer_dir)
    assert_same_weights(model, zero2.engine.module, atol=0.0)


def test_without_hf_config_rebuilds_from_run_config(
    zero0: TrainedCheckpoint, tmp_path: Path, csl_sentences, tiny_tokenizer_dir
) -> None:
    from framework.training.export import ExportError, export_checkpoint

    copy = tmp_path / "checkpoints" / zero0.tag_dir.name
    shutil.copytree(zero0.tag_dir, copy, ignore=shutil.ignore_patterns("hf_config"))
    with pytest.raises(ExportError, match="no tokenizer found.*--tokenizer"):
        export_checkpoint(copy, tmp_path / "model")
    out = export_checkpoint(copy, tmp_path / "model", tokenizer_dir=tiny_tokenizer_dir)
    model = assert_loads_and_fills_masks(out, csl_sentences, tiny_tokenizer_dir)
    assert_same_weights(model, zero0.engine.module, atol=0.0)


def test_clear_errors_name_the_folder_and_the_fix(zero0: TrainedCheckpoint, tmp_path: Path) -> None:
    from framework.training.export import ExportError, export_checkpoint

    with pytest.raises(ExportError, match="no such checkpoint folder"):
        export_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExportError, match=f"{empty}: no DeepSpeed checkpoint here.*mp_rank_00_model_states.pt"):
        export_checkpoint(empty, tmp_path / "out")

    interrupted = tmp_path / "ck" / "step-00000009"
    shutil.copytree(zero0.tag_dir, interrupted)
    (interrupted / "COMPLETE").unlink()
    with pytest.raises(ExportError, match="step-00000009: no COMPLETE marker"):
        export_checkpoint(interrupted, tmp_path / "out")
    with pytest.raises(ExportError, match="incomplete saves"):
        export_checkpoint(interrupted.parent, tmp_path / "out")

    bare = tmp_path / "bare" / "global_step1"
    bare.mkdir(parents=True)
    shutil.copy(zero0.tag_dir / "mp_rank_00_model_states.pt", bare)
    with pytest.raises(ExportError, match="neither hf_config/config.json nor run_config.json"):
        export_checkpoint(bare, tmp_path / "out")


def test_launch_export_cli(zero0: TrainedCheckpoint, tmp_path: Path, capsys) -> None:
    spec = importlib.util.spec_from_file_location("launch_export", ROOT / "launch" / "export.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    assert cli.main([str(zero0.root), str(tmp_path / "model")]) == 0
    assert "exported" in capsys.readouterr().out and (tmp_path / "model" / "model.safetensors").is_file()
    assert cli.main([str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "missing: no such checkpoint folder" in capsys.readouterr().err


def _zero2_rank(rank: int, port: int, tmp: str, tokenizer_dir: str, sentences: list[str]) -> None:
    """One of two gloo ranks: a ZeRO-2 step and checkpoint, so each rank holds half the fp32 master."""
    import deepspeed

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo", verbose=False)
    trained = _train_one_step_and_save(Path(tmp), Path(tokenizer_dir), sentences, stage=2, bf16=False, rank=rank)
    if rank == 0:
        torch.save(trained.engine.module.state_dict(), Path(tmp) / "module.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_two_rank_zero2_checkpoint_is_reassembled(tmp_path: Path, tiny_tokenizer_dir: Path, csl_sentences) -> None:
    import torch.multiprocessing as mp
    from transformers import BertForMaskedLM

    from framework.training.export import export_checkpoint

    mp.spawn(_zero2_rank, args=(free_port(), str(tmp_path), str(tiny_tokenizer_dir), csl_sentences[:8]), nprocs=2)
    tag_dir = tmp_path / "output" / "checkpoints" / "step-00000001"
    assert len(list(tag_dir.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"))) == 2  # really partitioned
    out = export_checkpoint(tag_dir, tmp_path / "model")
    exported = BertForMaskedLM.from_pretrained(str(out)).state_dict()
    trained = torch.load(tmp_path / "module.pt", weights_only=True)
    for name, tensor in trained.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0, msg=name)


def test_pickled_objects_are_refused_not_unpickled(zero0: TrainedCheckpoint, tmp_path: Path) -> None:
    """An object outside the allow-list (here what older training scripts stored) is refused, never unpickled."""
    import argparse

    from framework.training.export import ExportError, export_checkpoint

    tag = tmp_path / "legacy" / "global_step1"
    shutil.copytree(zero0.tag_dir, tag)
    states = torch.load(tag / "mp_rank_00_model_states.pt", weights_only=True)
    states["args"] = argparse.Namespace(lr=0.1)
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    with pytest.raises(ExportError, match="mp_rank_00_model_states.pt: refused to load.*argparse.Namespace"):
        export_checkpoint(tag, tmp_path / "model")
    assert not (tmp_path / "model").exists()
