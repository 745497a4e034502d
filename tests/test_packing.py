"""Packing on real CSL sentences: the packer, the packed batch, its equivalence to padded batches under SDPA and
eager attention, deletion, the real-token fraction, length bucketing, and exact resume of packed runs on one
process (SIGKILL, ``--resume auto``) and on two CPU ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import BertConfig

from framework.batching.collator import MaskingCollator
from framework.batching.groups import BucketingCollator, StepLoader, batch_counts, resolve_layout
from framework.batching.packing import PackingCollator, best_fit_decreasing, packed_batch
from framework.data.example import IGNORE_INDEX
from framework.masking import MaskingContext, build_strategy
from framework.training.data import ResumableDistributedSampler, build_loader
from framework.training.distributed import free_port
from framework.training.masked_lm import BertForMaskedLMAtLabels

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "launch" / "pretrain.py"
SEQ_LEN = 128
# DeepSpeed compiles its CPU communication op once per extensions folder; ours is this file's own, so that no
# other test session's compile lock (or a run killed mid-compile elsewhere) can stall the runs here.
TORCH_EXTENSIONS = Path(tempfile.gettempdir()) / "academic-bert-test-packing-torch-extensions"


@pytest.fixture(scope="module")
def context(csl_segmented) -> MaskingContext:  # noqa: ANN001 - SegmentedDataset
    """The sample's vocabulary and keyword table."""
    return MaskingContext(vocab=csl_segmented.vocab_info, entities=csl_segmented.entity_table())


def collator_for(csl_segmented, context: MaskingContext, name: str = "entity_wwm", args: dict | None = None,  # noqa: ANN001
                 seed: int = 3) -> MaskingCollator:
    """A padded collator of the sample with strategy ``name``."""
    return MaskingCollator(build_strategy(name, args, context), csl_segmented.vocab_info, seed=seed)


def epoch_order(n: int, seed: int = 0) -> np.ndarray:
    """A permutation of the sample (as one epoch of the training sampler would visit it)."""
    return ResumableDistributedSampler(n, 1, 0, seed=seed).epoch_indices(0)


# --------------------------------------------------------------------------------------------- the packer


def test_best_fit_decreasing_fits_uses_everything_once_and_is_deterministic(csl_segmented) -> None:  # noqa: ANN001
    order = epoch_order(len(csl_segmented))
    for group in (1, 7, 32, 256):
        lengths = [len(csl_segmented[int(i)]) for i in order[:group]]
        rows = best_fit_decreasing(lengths, SEQ_LEN)
        assert all(sum(lengths[i] for i in row) <= SEQ_LEN for row in rows)
        assert sorted(i for row in rows for i in row) == list(range(group))
        assert rows == best_fit_decreasing(lengths, SEQ_LEN)
        assert len(rows) >= -(-sum(lengths) // SEQ_LEN)
    # Best fit, not first fit: the 3 goes where it fills the row exactly (first fit would put it after the 60).
    assert best_fit_decreasing([60, 55, 42, 3], 100) == [[0], [1, 2, 3]]
    # min_rows: the shortest item of the row with the most items moves out until every micro-batch gets a row.
    assert best_fit_decreasing([10, 20, 30], 128, min_rows=3) == [[2], [0], [1]]
    with pytest.raises(ValueError, match="more than a row"):
        best_fit_decreasing([129], 128)
    with pytest.raises(ValueError, match="cannot fill"):
        best_fit_decreasing([5, 5], 128, min_rows=3)


def test_packed_batch_layout(csl_segmented, context: MaskingContext) -> None:  # noqa: ANN001
    collator = collator_for(csl_segmented, context)
    examples = [csl_segmented[int(i)] for i in epoch_order(len(csl_segmented))[:40]]
    masked = collator.mask(examples)
    batches = PackingCollator(collator, SEQ_LEN, micro_batches=3).pack(masked)
    assert len(batches) == 3
    rows = best_fit_decreasing([len(m) for m in masked], SEQ_LEN, min_rows=3)
    chunks = np.array_split(np.arange(len(rows)), 3)
    assert sum(int(b["num_examples"]) for b in batches) == len(examples)
    for batch, chunk in zip(batches, chunks):
        r, t = batch["input_ids"].shape
        assert r == len(chunk) and t <= SEQ_LEN
        assert batch["attention_mask"].shape == (r, 1, t, t) and batch["attention_mask"].dtype == torch.bool
        assert (batch["token_type_ids"] == 0).all()  # single sentences are all segment A
        for key in ("input_ids", "token_type_ids", "position_ids", "labels", "sequence_ids"):
            assert batch[key].dtype == torch.int64 and batch[key].shape == (r, t), key
        for row_in_batch, row in enumerate(rows[k] for k in chunk):
            offset = 0
            for number, i in enumerate(row, start=1):
                span = slice(offset, offset + len(masked[i]))
                assert np.array_equal(batch["input_ids"][row_in_batch, span].numpy(), masked[i].input_ids)
                assert np.array_equal(batch["labels"][row_in_batch, span].numpy(), masked[i].labels)
                assert np.array_equal(batch["entity_label_mask"][row_in_batch, span].numpy(),
                                      masked[i].entity_label_mask)
                assert batch["position_ids"][row_in_batch, span].tolist() == list(range(len(masked[i])))
                assert (batch["sequence_ids"][row_in_batch, span] == number).all()
                offset += len(masked[i])
            pad = slice(offset, t)
            assert (batch["sequence_ids"][row_in_batch, pad] == 0).all()
            assert (batch["input_ids"][row_in_batch, pad] == csl_segmented.vocab_info.pad_token_id).all()
            assert (batch["labels"][row_in_batch, pad] == IGNORE_INDEX).all()
        # Block-diagonal: a token attends exactly to the tokens of its own sentence (padding to padding).
        sid = batch["sequence_ids"]
        assert torch.equal(batch["attention_mask"][:, 0], sid[:, :, None] == sid[:, None, :])
        assert batch["attention_mask"][:, 0].any(-1).all(), "no query row may be fully masked"
        sentences, tokens, positions = batch_counts(batch)
        assert sentences == int(batch["num_examples"]) and tokens == int((sid > 0).sum()) and positions == r * t


def test_sentence_pairs_get_segment_b_within_their_own_sentence(context: MaskingContext) -> None:
    from framework.data.example import MaskedExample

    v = context.vocab
    pair = np.asarray([v.cls_token_id, 100, v.sep_token_id, 101, 102, v.sep_token_id])
    single = np.asarray([v.cls_token_id, 103, 104, v.sep_token_id])
    masked = [MaskedExample(ids, np.full(len(ids), IGNORE_INDEX)) for ids in (single, pair, single)]
    batch = packed_batch(masked, [[0, 1, 2]], 16, v.pad_token_id, v.sep_token_id)
    assert batch["token_type_ids"][0].tolist() == [0] * 4 + [0, 0, 0, 1, 1, 1] + [0] * 4 + [0, 0]


# --------------------------------------------------------------------------------------------- real tokens


def real_token_fraction(batches: list[dict[str, torch.Tensor]]) -> float:
    """Real tokens / positions over ``batches``."""
    counts = np.array([batch_counts(b) for b in batches])
    return float(counts[:, 1].sum() / counts[:, 2].sum())


def test_packing_fills_at_least_98_percent_of_positions_on_csl(csl_segmented, context: MaskingContext) -> None:  # noqa: ANN001
    """One 2080 Ti step (32 sentences x 8 micro-batches) per group, over the whole CSL sample, with entity_wwm."""
    collator = collator_for(csl_segmented, context)
    order = epoch_order(len(csl_segmented))
    packer = PackingCollator(collator, SEQ_LEN, micro_batches=8)
    group = 32 * 8
    packed = [b for s in range(0, len(order) - group + 1, group)
              for b in packer([csl_segmented[int(i)] for i in order[s:s + group]])]
    padded = [collator([csl_segmented[int(i)] for i in order[s:s + 32]]) for s in range(0, len(order) - 31, 32)]
    packed_fraction, padded_fraction = real_token_fraction(packed), real_token_fraction(padded)
    print(f"real-token fraction on CSL at seq-len {SEQ_LEN}: padded (micro-batch 32) {padded_fraction:.4f}, "
          f"packed (256 sentences per step) {packed_fraction:.4f}")
    assert packed_fraction >= 0.98
    assert padded_fraction < 0.5  # what packing is for: CSL sentences average ~45 tokens
    assert sum(int(b["num_examples"]) for b in packed) == len(order) // group * group


# --------------------------------------------------------------------------------------------- the model


def tiny_model(vocab_size: int, attention: str) -> BertForMaskedLMAtLabels:
    """A 2-layer, hidden-32 BERT in fp32, eval mode, with the given attention implementation."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=SEQ_LEN, attn_implementation=attention)
    model = BertForMaskedLMAtLabels(config).eval()
    assert model.config._attn_implementation == attention
    return model


def sentence_logits(model: BertForMaskedLMAtLabels, batch: dict[str, torch.Tensor], packed: bool) -> list[torch.Tensor]:
    """Every sentence's ``[L, V]`` logits, in row order (padded) or packing order (packed)."""
    keys = ("input_ids", "attention_mask", "token_type_ids", *(("position_ids",) if packed else ()))
    with torch.no_grad():
        logits = model(**{k: batch[k] for k in keys}).logits
    if not packed:
        return [logits[r, : int(n)] for r, n in enumerate(batch["attention_mask"].sum(1))]
    out = []
    for r, sid in enumerate(batch["sequence_ids"]):
        for number in range(1, int(sid.max()) + 1):
            out.append(logits[r, sid == number])
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("masking, args", [("entity_wwm", None), ("entity_wwm", {"entity_delete_prob": 1.0}),
                                           ("token", None)])
def test_packed_batch_gives_the_same_logits_and_loss_as_padded(csl_segmented, context: MaskingContext,  # noqa: ANN001
                                                               attention: str, masking: str, args: dict | None) -> None:
    collator = collator_for(csl_segmented, context, masking, args)
    examples = [csl_segmented[int(i)] for i in epoch_order(len(csl_segmented))[:24]]
    masked = collator.mask(examples)
    padded = collator.pad(masked)
    packed = PackingCollator(collator, SEQ_LEN).pack(masked)[0]
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    model = tiny_model(csl_segmented.vocab_info.vocab_size, attention)
    rows = best_fit_decreasing([len(m) for m in masked], SEQ_LEN)
    packing_order = [i for row in rows for i in row]
    alone = sentence_logits(model, padded, packed=False)
    together = sentence_logits(model, packed, packed=True)
    assert len(together) == len(examples)
    for i, logits in zip(packing_order, together):
        torch.testing.assert_close(logits, alone[i], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        loss_padded = model(**{k: padded[k] for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}).loss
        loss_packed = model(**{k: packed[k] for k in ("input_ids", "attention_mask", "token_type_ids",
                                                      "position_ids", "labels")}).loss
    torch.testing.assert_close(loss_packed, loss_padded, rtol=1e-5, atol=1e-5)
    # Control: the same rows without the block mask let sentences see each other, and the logits show it.
    leaky = sentence_logits(model, dict(packed, attention_mask=torch.ones_like(packed["attention_mask"])), True)
    assert max(float((a - alone[i]).abs().max()) for i, a in zip(packing_order, leaky)) > 1e-3  # 100x the tolerance


def test_deletion_augmented_sentences_pack_at_their_masked_length(csl_segmented, context: MaskingContext) -> None:  # noqa: ANN001
    """entity_wwm deleting every chosen entity: rows hold the shortened sentences, with positions to match."""
    collator = collator_for(csl_segmented, context, "entity_wwm", {"entity_delete_prob": 1.0, "entity_prob": 1.0})
    examples = [csl_segmented[int(i)] for i in epoch_order(len(csl_segmented))[:64]]
    masked = collator.mask(examples)
    shortened = sum(len(m) < len(ex) for m, ex in zip(masked, examples))
    assert shortened > 10, "the deletion augmentation should have shortened many sentences"
    batch = PackingCollator(collator, SEQ_LEN).pack(masked)[0]
    sid = batch["sequence_ids"]
    lengths = sorted(int((sid[r] == k).sum()) for r in range(sid.shape[0]) for k in range(1, int(sid[r].max()) + 1))
    assert lengths == sorted(len(m) for m in masked)
    assert int((sid > 0).sum()) == sum(len(m) for m in masked)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == sum(int((m.labels != IGNORE_INDEX).sum()) for m in masked)
    starts = batch["position_ids"] == 0
    assert int((starts & (sid > 0)).sum()) == len(masked)
    assert (batch["input_ids"][starts & (sid > 0)] == csl_segmented.vocab_info.cls_token_id).all()


def test_flash_attention_refuses_a_packed_mask(csl_segmented) -> None:  # noqa: ANN001
    model = tiny_model(csl_segmented.vocab_info.vocab_size, "sdpa")
    model.config._attn_implementation = "flash_attention_2"
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="sdpa or eager"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long), attention_mask=mask)


# --------------------------------------------------------------------------------------------- layouts & resume


def test_layout_resolution() -> None:
    assert resolve_layout(None, False, cuda=True) == "packed"
    assert resolve_layout(None, False, cuda=False) == "padded"
    assert resolve_layout(None, True, cuda=True) == "bucketed"
    assert resolve_layout(False, False, cuda=True) == "padded"
    assert resolve_layout(True, False, cuda=False) == "packed"
    with pytest.raises(ValueError, match="exclude each other"):
        resolve_layout(True, True, cuda=False)


def test_length_bucketing_keeps_every_sentence_and_pads_less(csl_segmented, context: MaskingContext) -> None:  # noqa: ANN001
    collator = collator_for(csl_segmented, context)
    examples = [csl_segmented[int(i)] for i in epoch_order(len(csl_segmented))[:256]]
    bucketed = BucketingCollator(collator, micro_batches=8)(examples)
    assert [b["input_ids"].shape[0] for b in bucketed] == [32] * 8
    widths = [b["input_ids"].shape[1] for b in bucketed]
    assert widths == sorted(widths, reverse=True)
    labels = sorted(int(x) for b in bucketed for x in b["labels"][b["labels"] != IGNORE_INDEX])
    assert labels == sorted(int(x) for m in collator.mask(examples) for x in m.labels[m.labels != IGNORE_INDEX])
    padded = [collator(examples[s:s + 32]) for s in range(0, 256, 32)]
    assert real_token_fraction(bucketed) > real_token_fraction(padded) + 0.2


@pytest.mark.parametrize("layout", ["packed", "bucketed"])
def test_step_loader_resumes_at_a_step_boundary_with_the_same_batches(csl_segmented, context: MaskingContext,  # noqa: ANN001
                                                                      layout: str) -> None:
    collator = collator_for(csl_segmented, context)
    groups = PackingCollator(collator, SEQ_LEN, 2) if layout == "packed" else BucketingCollator(collator, 2)
    sampler = ResumableDistributedSampler(len(csl_segmented), 2, 1, seed=4)
    loader = StepLoader(build_loader(csl_segmented, sampler, groups, 2 * 8, workers=0, seed=4), 2)

    def batches(epoch: int, start: int, limit: int) -> list[dict[str, torch.Tensor]]:
        sampler.set_epoch(epoch, start=start)
        groups.set_epoch(epoch)
        return [b for _, b in zip(range(limit), loader)]

    straight = batches(1, 0, 8)
    consumed = sum(batch_counts(b)[0] for b in straight[:4])
    assert consumed == 2 * 16  # two steps of 16 sentences
    resumed = batches(1, consumed, 4)
    for a, b in zip(straight[4:], resumed):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert not torch.equal(batches(2, 0, 1)[0]["input_ids"][:, :8], straight[0]["input_ids"][:, :8])


# --------------------------------------------------------------------------------------------- end to end


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment without a launcher's rank variables, with our own torch-extensions folder."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    TORCH_EXTENSIONS.mkdir(parents=True, exist_ok=True)
    return {**env, "TORCH_EXTENSIONS_DIR": str(TORCH_EXTENSIONS), **extra}


def by_step(folder: Path) -> dict[tuple[int, str], dict]:
    """The metrics records keyed by (step, split); a rerun step replaces its record."""
    with open(folder / "metrics.jsonl", encoding="utf-8") as f:
        return {(r["step"], r["split"]): r for r in map(json.loads, f)}


def assert_same_numbers(straight: Path, resumed: Path) -> None:
    a, b = by_step(straight), by_step(resumed)
    assert a.keys() == b.keys()
    for key, record in sorted(a.items()):
        for metric in ("loss", "grad_norm", "lr", "real_token_fraction", "masked_accuracy", "entity_accuracy"):
            if metric in record:
                assert b[key][metric] == record[metric], (key, metric)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory, csl_jsonl: Path) -> dict[str, Path]:
    """CSL data, a hidden-64 model config and a CPU DeepSpeed config with a fixed 8-step schedule."""
    from framework.data.corpus import PreprocessConfig, preprocess

    root = tmp_path_factory.mktemp("packing-e2e")
    preprocess(PreprocessConfig(inputs=[csl_jsonl], output=root / "data", workers=1, valid_fraction=0.05,
                                overwrite=True, progress=False))
    model_config = root / "model.json"
    model_config.write_text(json.dumps({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
                                        "num_attention_heads": 2, "intermediate_size": 128,
                                        "max_position_embeddings": 128}))
    ds = json.loads((ROOT / "ds_configs" / "cpu.json").read_text())
    # An explicit schedule: a run stopped at step 4 follows the same learning rates as one run to step 8.
    ds["scheduler"]["params"].update(warmup_num_steps=2, total_num_steps=8)
    (root / "ds8.json").write_text(json.dumps(ds))
    return {"root": root, "data": root / "data", "model_config": model_config, "ds8": root / "ds8.json"}


def packed_args(e2e: dict[str, Path], tokenizer: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """A packed run from scratch: 8 sentences x 2 micro-batches per step, rows of 64 tokens."""
    return ["--data", str(e2e["data"]), "--model-config", str(e2e["model_config"]), "--tokenizer", str(tokenizer),
            "--output-dir", str(out), "--max-steps", str(steps), "--seq-len", "64", "--packing",
            "--micro-batch-size", "8", "--grad-accum", "2", "--max-eval-examples", "64", "--report-to", "none",
            "--seed", "7", *extra]


@pytest.mark.slow
def test_killed_packed_run_resumes_with_identical_losses(e2e: dict[str, Path], tiny_tokenizer_dir: Path) -> None:
    """SIGKILL a packed run right after its step-20 checkpoint, resume it: the same numbers as uninterrupted."""
    def args(out: Path) -> list[str]:
        return packed_args(e2e, tiny_tokenizer_dir, out, 40, "--log-every", "10", "--eval-every", "20",
                           "--save-every", "20", "--keep-last", "1", "--no-export")

    straight = e2e["root"] / "killed-straight"
    proc = subprocess.run([sys.executable, str(PRETRAIN), *args(straight)], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "batches: packed" in proc.stdout
    train = [r for r in by_step(straight).values() if r["split"] == "train"]
    assert [r["step"] for r in sorted(train, key=lambda r: r["step"])] == [10, 20, 30, 40]
    assert all(0.85 < r["real_token_fraction"] <= 1.0 for r in train), [r["real_token_fraction"] for r in train]

    out = e2e["root"] / "killed"
    victim = subprocess.Popen([sys.executable, str(PRETRAIN), *args(out)], cwd=ROOT, env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "checkpoints" / "step-00000020" / "COMPLETE"
    deadline = time.monotonic() + 240
    while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.kill()
    victim.wait()
    if victim.returncode == 0:
        pytest.skip("the run finished before it could be killed (machine too fast for a 20-step window)")
    assert marker.exists(), "the run died before its first checkpoint"
    proc = subprocess.run([sys.executable, str(PRETRAIN), *args(out), "--resume", "auto"], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "step 20, epoch 0, position 320" in proc.stdout
    assert_same_numbers(straight, out)


def run_two_ranks(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus 2 launch/pretrain.py ARGS`` (two CPU ranks, one intra-op thread each)."""
    launcher = shutil.which("deepspeed")
    cmd = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    proc = subprocess.run([*cmd, "--num_gpus", "2", "--master_port", str(free_port()), str(PRETRAIN), *args],
                          cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_two_rank_packed_run_stops_and_resumes_exactly(e2e: dict[str, Path], tiny_tokenizer_dir: Path) -> None:
    def args(out: Path, steps: int) -> list[str]:
        return packed_args(e2e, tiny_tokenizer_dir, out, steps, "--deepspeed_config", str(e2e["ds8"]),
                           "--log-every", "1", "--eval-every", "4", "--save-every", "4", "--no-export")

    straight = e2e["root"] / "two-ranks-straight"
    proc = run_two_ranks(args(straight, 8))
    assert "2 rank(s) x micro-batch 8 x accumulation 2" in proc.stdout and "batches: packed" in proc.stdout
    out = e2e["root"] / "two-ranks-resumed"
    run_two_ranks(args(out, 4))
    proc = run_two_ranks([*args(out, 8), "--resume", "auto"])
    assert "resumed from" in proc.stdout and "step-00000004" in proc.stdout
    assert [k for k in by_step(straight) if k[1] == "train"] == [(s, "train") for s in range(1, 9)]
    assert_same_numbers(straight, out)


def test_packing_flags_reach_the_run_config() -> None:
    from framework.config import ConfigError, load_run_config

    assert load_run_config([]).data.packing is None  # resolved at run time: on with CUDA, off on CPU
    assert load_run_config(["--packing"]).data.packing is True
    assert load_run_config(["--no-packing"]).data.packing is False
    assert load_run_config(["--length-bucketing"]).data.length_bucketing is True
    with pytest.raises(ConfigError, match="exclude each other"):
        load_run_config(["--packing", "--length-bucketing"])
