"""Two CPU ranks under the ``deepspeed`` launcher: ZeRO stages 0, 1 and 2 train, rank 0 alone logs, exports and
plots, a ZeRO-2 checkpoint exports to the same weights, and a run stopped and resumed with ``--resume auto``
reproduces an uninterrupted run's losses and gradient norms exactly.

Exactness on CPU needs a fixed number of intra-op threads per rank (``OMP_NUM_THREADS=1`` here): oneDNN's
reduction order depends on it when two ranks share the cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from framework.training.distributed import free_port

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "launch" / "pretrain.py"

pytestmark = pytest.mark.slow


def run_two_ranks(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``deepspeed --num_gpus 2 launch/pretrain.py ARGS`` (two CPU ranks on this machine)."""
    launcher = shutil.which("deepspeed")
    cmd = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(var, None)
    proc = subprocess.run([*cmd, "--num_gpus", "2", "--master_port", str(free_port()), str(PRETRAIN), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def by_step(output_dir: Path) -> dict[tuple[int, str], dict]:
    """The metrics records keyed by (step, split); a resumed run's record replaces the earlier one."""
    records: dict[tuple[int, str], dict] = {}
    with open(output_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            records[(r["step"], r["split"])] = r
    return records


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, csl_jsonl: Path, tiny_tokenizer_dir: Path) -> dict[str, Path]:
    """CSL data, a hidden-64 model config and DeepSpeed configs for ZeRO 0/1/2 with a fixed 8-step schedule."""
    from framework.data.corpus import PreprocessConfig, preprocess

    root = tmp_path_factory.mktemp("distributed")
    preprocess(PreprocessConfig(inputs=[csl_jsonl], output=root / "data", workers=1, valid_fraction=0.05,
                                overwrite=True, progress=False))
    model_config = root / "model.json"
    model_config.write_text(json.dumps({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
                                        "num_attention_heads": 2, "intermediate_size": 128,
                                        "max_position_embeddings": 128}))
    paths = {"data": root / "data", "model_config": model_config, "tokenizer": tiny_tokenizer_dir, "root": root}
    base = json.loads((ROOT / "ds_configs" / "cpu.json").read_text())
    for stage in (0, 1, 2):
        cfg = json.loads(json.dumps(base))
        cfg["train_micro_batch_size_per_gpu"] = 8
        cfg["zero_optimization"] = {"stage": stage}
        # An explicit schedule: a run stopped at step 4 follows the same learning rates as one run to step 8.
        cfg["scheduler"]["params"].update(warmup_num_steps=2, total_num_steps=8)
        paths[f"zero{stage}"] = root / f"zero{stage}.json"
        paths[f"zero{stage}"].write_text(json.dumps(cfg))
    return paths


def common_args(setup: dict[str, Path], stage: int, output_dir: Path, steps: int) -> list[str]:
    return ["--deepspeed_config", str(setup[f"zero{stage}"]), "--data", str(setup["data"]),
            "--model-config", str(setup["model_config"]), "--tokenizer", str(setup["tokenizer"]),
            "--output-dir", str(output_dir), "--max-steps", str(steps), "--seq-len", "64", "--log-every", "1",
            "--eval-every", "4", "--save-every", "4", "--max-eval-examples", "64", "--seed", "5"]


@pytest.fixture(scope="module")
def zero2_straight(setup: dict[str, Path]) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted 8-step ZeRO-2 run on two ranks."""
    out = setup["root"] / "zero2-straight"
    return out, run_two_ranks(common_args(setup, 2, out, 8))


def check_two_rank_run(out: Path, proc: subprocess.CompletedProcess, stage: int, steps: int) -> None:
    """Rank 0 alone logged, exported and plotted; ZeRO shards came from both ranks."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    train_steps = [json.loads(x)["step"] for x in lines if '"train"' in x]
    assert train_steps == list(range(1, steps + 1)), "every step logged exactly once (rank 0 only)"
    assert "2 rank(s) x micro-batch 8" in proc.stdout
    assert proc.stdout.count("run configuration:") == 1
    assert sum("hardware fallback" in line for line in proc.stdout.splitlines()) == 1
    assert sum("exported a transformers model" in line for line in proc.stdout.splitlines()) == 1
    assert (out / "model" / "model.safetensors").is_file() and (out / "loss.png").is_file()
    final = out / "checkpoints" / f"step-{steps:08d}"
    assert (final / "COMPLETE").is_file()
    assert {p.name for p in final.glob("rng_state_rank*.pt")} == {"rng_state_rank0.pt", "rng_state_rank1.pt"}
    shards = sorted(p.name for p in final.glob("*zero_pp_rank_*optim_states.pt"))
    assert len(shards) == (2 if stage > 0 else 0), shards


@pytest.mark.parametrize("stage", [0, 1])
def test_two_ranks_train_with_zero_stage(setup: dict[str, Path], stage: int) -> None:
    out = setup["root"] / f"zero{stage}-run"
    accumulation = stage + 1  # stage 1 also exercises gradient accumulation across two micro-batches
    proc = run_two_ranks([*common_args(setup, stage, out, 4), "--grad-accum", str(accumulation)])
    check_two_rank_run(out, proc, stage, 4)
    assert f"ZeRO-{stage}, 2 rank(s) x micro-batch 8 x accumulation {accumulation}" in proc.stdout


def test_two_ranks_train_with_zero2_and_checkpoint_exports(setup: dict[str, Path], zero2_straight,  # noqa: ANN001
                                                           tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    out, proc = zero2_straight
    check_two_rank_run(out, proc, 2, 8)
    exported = subprocess.run([sys.executable, str(ROOT / "launch" / "export.py"),
                               str(out / "checkpoints" / "step-00000008"), str(tmp_path / "from-ckpt")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert exported.returncode == 0, exported.stderr[-3000:]
    live = load_file(out / "model" / "model.safetensors")
    from_checkpoint = load_file(tmp_path / "from-ckpt" / "model.safetensors")
    assert live.keys() == from_checkpoint.keys()
    for name, tensor in live.items():
        # The live module holds bf16 weights; the ZeRO checkpoint holds their fp32 masters.
        torch.testing.assert_close(from_checkpoint[name], tensor, rtol=1e-2, atol=1e-2, msg=name)


def test_stop_and_resume_auto_matches_an_uninterrupted_run(setup: dict[str, Path], zero2_straight) -> None:  # noqa: ANN001
    straight_out, _ = zero2_straight
    out = setup["root"] / "zero2-resumed"
    run_two_ranks(common_args(setup, 2, out, 4))
    # A save that crashed halfway (no COMPLETE marker) must be ignored by --resume auto.
    crashed = out / "checkpoints" / "step-00000006"
    crashed.mkdir()
    (crashed / "mp_rank_00_model_states.pt").write_bytes(b"truncated")
    proc = run_two_ranks([*common_args(setup, 2, out, 8), "--resume", "auto"])
    assert "resumed from" in proc.stdout and "step-00000004" in proc.stdout

    straight, resumed = by_step(straight_out), by_step(out)
    assert straight.keys() == resumed.keys()
    for key, record in sorted(straight.items()):
        for metric in ("loss", "grad_norm", "lr", "masked_accuracy", "entity_accuracy"):
            if metric in record:
                assert resumed[key][metric] == record[metric], (key, metric)
    assert not crashed.exists(), "the interrupted save is pruned at the next checkpoint"
