"""framework.training.export and launch/export.py: real DeepSpeed checkpoints -> transformers folders.

A tiny BERT is trained one step in a real single-process DeepSpeed engine (ZeRO-0 in fp32, ZeRO-2 in bf16),
checkpointed by the framework's CheckpointManager, exported, reloaded with transformers and used by the
fill-mask pipeline on a real CSL sentence. Engines built by the framework itself from ``ds_configs/cpu.json``
(bf16, the LAMB client optimizer, two weight-decay groups) at ZeRO-0 and ZeRO-2 check that both exports carry
the optimizer's fp32 master weights bit for bit, not the bf16 module weights widened.
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
                             rank: int = 0, deepspeed_json: Path | None = None, steps: int = 1) -> TrainedCheckpoint:
    """Train ``steps`` steps and checkpoint them. With ``deepspeed_json`` the engine is the framework's own
    (:func:`~framework.training.engine.build_engine`: its parameter groups, client LAMB and precision), with
    ZeRO ``stage`` written into a copy of the file; ``bf16`` is then the file's business."""
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
    if deepspeed_json is None:
        engine, *_ = deepspeed.initialize(model=model, optimizer=Lamb(model.parameters(), lr=1e-2), config=config)
    else:
        from framework.config import TrainingConfig
        from framework.training.engine import build_engine

        ds_config = json.loads(deepspeed_json.read_text())
        ds_config["zero_optimization"] = {"stage": stage}
        (tmp / "ds.json").write_text(json.dumps(ds_config))
        training = TrainingConfig(deepspeed_config=str(tmp / "ds.json"), max_steps=steps, micro_batch_size=4,
                                  warmup_steps=1)
        engine, _ = build_engine(model, training, world_size=1, num_train_examples=4 * steps)
    for step in range(steps):
        start = 4 * (rank + step)
        batch = tokenizer(sentences[start : start + 4], padding=True, truncation=True, max_length=48,
                          return_tensors="pt")
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        loss = engine(**batch, labels=labels).loss
        engine.backward(loss)
        engine.step()

    root = tmp / "output" / "checkpoints"
    tag_dir = CheckpointManager(root, keep_last=2, rank=rank).save(engine, TrainState(step=steps), RunConfig())
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


@pytest.fixture(scope="module", params=[0, 1, 2], ids=["zero0", "zero1", "zero2"])
def bf16_lamb(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path,
    csl_sentences: list[str]
) -> TrainedCheckpoint:
    """The framework's CPU recipe (ds_configs/cpu.json: bf16, client LAMB) at ZeRO-``param``, three steps."""
    stage = request.param
    return _train_one_step_and_save(tmp_path_factory.mktemp(f"bf16-zero{stage}"), tiny_tokenizer_dir, csl_sentences,
                                    stage, bf16=True, deepspeed_json=ROOT / "ds_configs" / "cpu.json", steps=3)


def master_weights_by_name(engine) -> dict[str, torch.Tensor]:
    """The optimizer's fp32 masters, read straight from DeepSpeed's buffers (independently of the export code),
    under every name of each parameter (tied decoder weights included)."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    optimizer = engine.optimizer
    by_id: dict[int, torch.Tensor] = {}
    if isinstance(optimizer, FP16_UnfusedOptimizer):  # ZeRO-0: one fp32 clone per parameter
        for low, high in zip(optimizer.fp16_groups, optimizer.fp32_groups, strict=True):
            by_id.update({id(p): m.detach().float() for p, m in zip(low, high, strict=True)})
    else:  # ZeRO-1/2 on one rank: each group's single fp32 partition holds its parameters back to back (+ padding)
        for params, flat in zip(optimizer.round_robin_bit16_groups, optimizer.single_partition_of_fp32_groups,
                                strict=True):
            offset = 0
            for p in params:
                by_id[id(p)] = flat[offset : offset + p.numel()].view(p.shape).detach().float()
                offset += p.numel()
            assert offset <= flat.numel()
    state = engine.module.state_dict(keep_vars=True)
    names = {name: by_id[id(t)] for name, t in state.items() if id(t) in by_id}
    assert {n for n, _ in engine.module.named_parameters()} <= names.keys()
    return names


def assert_exports_masters(out: Path, engine) -> None:
    """Every tensor of ``out/model.safetensors`` equals the master (parameters) or the module (buffers) exactly,
    and the old export (the bf16 module widened) would not have."""
    from safetensors.torch import load_file

    from framework.training.export import _fp32_cpu

    masters = master_weights_by_name(engine)
    exported = load_file(str(out / "model.safetensors"))
    module = engine.module.state_dict()
    assert exported.keys() <= module.keys() and "bert.embeddings.word_embeddings.weight" in exported
    for name, tensor in exported.items():
        want = masters[name] if name in masters else module[name]
        assert tensor.dtype == (torch.float32 if want.is_floating_point() else want.dtype), name
        assert torch.equal(tensor, want.float() if want.is_floating_point() else want), name
    # The bf16 copies really differ from the masters after three steps, so the old path fails this test.
    widened = _fp32_cpu(module)
    differ = [n for n in exported if n in masters and not torch.equal(widened[n], exported[n])]
    assert "bert.embeddings.word_embeddings.weight" in differ and len(differ) > len(exported) // 2, differ
    card = json.loads((out / "model_card.json").read_text())
    assert card["weights_from"] == "fp32 master weights of a bf16 run"
    assert "| exported from | fp32 master weights of a bf16 run |" in (out / "README.md").read_text()


def test_exports_carry_the_fp32_master_weights(bf16_lamb: TrainedCheckpoint, tmp_path: Path) -> None:
    """End of run and launch/export.py alike export the optimizer's masters, at ZeRO-0, 1 and 2."""
    from framework.training.export import export_checkpoint, export_from_engine

    engine = bf16_lamb.engine
    assert next(engine.module.parameters()).dtype == torch.bfloat16
    assert len(engine.optimizer.param_groups) == 2  # optimizer_param_groups: decayed, then undecayed
    assert_exports_masters(export_from_engine(engine, bf16_lamb.tag_dir / "hf_config", tmp_path / "live"), engine)
    assert_exports_masters(export_checkpoint(bf16_lamb.tag_dir, tmp_path / "checkpoint"), engine)


@pytest.mark.parametrize("bf16_lamb", [0], indirect=True, ids=["zero0"])  # ZeRO-1/2 shards name their masters
def test_zero0_master_names_are_recovered_without_the_record(bf16_lamb: TrainedCheckpoint, tmp_path: Path) -> None:
    """A ZeRO-0 checkpoint written before the names were recorded: the framework's grouping is recovered (and
    verified against the saved bf16 weights), from per-parameter and from flat master buffers; a layout that
    does not fit falls back to the module weights, and the card says so."""
    from framework.training.export import MASTER_NAMES_KEY, export_checkpoint
    from framework.training.safe_load import load_weights_only

    tag = tmp_path / "legacy" / "global_step3"
    shutil.copytree(bf16_lamb.tag_dir, tag)
    states = load_weights_only(tag / "mp_rank_00_model_states.pt", map_location="cpu")
    assert len(states[MASTER_NAMES_KEY]) == 2 and "fp32_groups" in states["optimizer"]
    del states[MASTER_NAMES_KEY]
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    assert_exports_masters(export_checkpoint(tag, tmp_path / "model"), bf16_lamb.engine)

    # FP16_Optimizer (DeepSpeed's fused Adam, CUDA only) saves one flat fp32 buffer per group instead.
    flat = dict(states, optimizer={k: v for k, v in states["optimizer"].items() if k != "fp32_groups"})
    flat["optimizer"]["fp32_groups_flat"] = [torch.cat([t.flatten() for t in group])
                                             for group in states["optimizer"]["fp32_groups"]]
    torch.save(flat, tag / "mp_rank_00_model_states.pt")
    assert_exports_masters(export_checkpoint(tag, tmp_path / "flat"), bf16_lamb.engine)

    states["optimizer"]["fp32_groups"].reverse()  # no known layout fits: the module weights, said so
    torch.save(states, tag / "mp_rank_00_model_states.pt")
    out = export_checkpoint(tag, tmp_path / "fallback")
    card = json.loads((out / "model_card.json").read_text())
    assert card["weights_from"].startswith("bf16 module weights widened to fp32")


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
    card = json.loads((out / "model_card.json").read_text())
    assert card["weights_from"] == "fp32 module weights of an fp32 run (they are the masters)"


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
    # The fp32 masters, which the bf16 module rounds (test_exports_carry_the_fp32_master_weights: bit for bit).
    assert_same_weights(model, zero2.engine.module, atol=2e-2)


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
    from framework.training.export import export_from_engine

    # Both ranks: each holds half of every master, reassembled by an all-reduce; rank 0 alone writes.
    out = export_from_engine(trained.engine, tokenizer_dir, Path(tmp) / "live")
    assert (out is None) == (rank != 0)
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
    live = BertForMaskedLM.from_pretrained(str(tmp_path / "live")).state_dict()
    for name, tensor in trained.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(live[name], tensor, rtol=0, atol=0, msg=name)


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
