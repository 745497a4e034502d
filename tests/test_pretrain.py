"""End-to-end single-process pretraining through ``launch/pretrain.py`` on real CSL sentences with tiny models:
a run from scratch whose loss falls and that leaves checkpoints, an exported model, metrics and a plot; a run
continuing from a locally saved pretrained folder (reporting to W&B offline); clear errors for bad configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRETRAIN = ROOT / "launch" / "pretrain.py"
TRAIN_KEYS = {"loss", "lr", "grad_norm", "loss_scale", "tokens_per_s", "samples_per_s", "step_time_s", "memory_gb"}
VALID_KEYS = {"loss", "perplexity", "masked_accuracy", "entity_accuracy"}

pytestmark = pytest.mark.slow


def run_pretrain(args: list[str], env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python launch/pretrain.py ARGS`` in a fresh process (a world of one)."""
    full_env = {**os.environ, **(env or {})}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        full_env.pop(var, None)
    return subprocess.run([sys.executable, str(PRETRAIN), *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def read_metrics(output_dir: Path) -> list[dict]:
    with open(output_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def csl_data(tmp_path_factory: pytest.TempPathFactory, csl_jsonl: Path) -> Path:
    """The 1,000 CSL sample papers through the preprocessing pipeline (train/valid/keywords)."""
    from framework.data.corpus import PreprocessConfig, preprocess

    out = tmp_path_factory.mktemp("csl-data")
    preprocess(PreprocessConfig(inputs=[csl_jsonl], output=out, workers=1, valid_fraction=0.05, overwrite=True,
                                progress=False))
    return out


@pytest.fixture(scope="module")
def tiny_model_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, hidden-64 BERT config.json (exercises ``--model-config FILE``)."""
    path = tmp_path_factory.mktemp("model-config") / "config.json"
    path.write_text(json.dumps({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "intermediate_size": 128, "max_position_embeddings": 128}))
    return path


@pytest.fixture(scope="module")
def scratch_args(csl_data: Path, tiny_tokenizer_dir: Path, tiny_model_config: Path):  # noqa: ANN201
    """The arguments of a 60-step run from scratch with entity_wwm, for a given output folder."""
    def args(out: Path) -> list[str]:
        return ["--data", str(csl_data), "--model-config", str(tiny_model_config), "--tokenizer",
                str(tiny_tokenizer_dir), "--output-dir", str(out), "--max-steps", "60", "--seq-len", "64",
                "--log-every", "10", "--eval-every", "30", "--save-every", "30", "--keep-last", "1",
                "--report-to", "none", "--seed", "3"]
    return args


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory: pytest.TempPathFactory, scratch_args) -> tuple[Path, subprocess.CompletedProcess]:  # noqa: ANN001
    """60 steps from scratch; checkpoints at 30 and 60, evaluation at 0, 30 and 60."""
    out = tmp_path_factory.mktemp("scratch")
    proc = run_pretrain(scratch_args(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_from_scratch_loss_falls(scratch_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = scratch_run
    records = read_metrics(out)
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "valid"]
    assert [r["step"] for r in train] == [10, 20, 30, 40, 50, 60]
    assert [r["step"] for r in valid] == [0, 30, 60]
    assert train[-1]["loss"] < train[0]["loss"] - 0.3, [r["loss"] for r in train]
    assert valid[-1]["loss"] < valid[0]["loss"]
    for r in train:
        assert TRAIN_KEYS <= r.keys() and r["tokens_per_s"] > 0 and r["memory_gb"] > 0
    for r in valid:
        assert VALID_KEYS <= r.keys() and 0 <= r["masked_accuracy"] <= 1
    assert train[-1]["lr"] < max(r["lr"] for r in train)  # warm-up then decay


def test_run_leaves_checkpoint_model_metrics_and_plot(scratch_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, proc = scratch_run
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir())
    assert checkpoints == ["step-00000060"]  # --keep-last 1 pruned step 30
    final = out / "checkpoints" / "step-00000060"
    for name in ("COMPLETE", "mp_rank_00_model_states.pt", "rng_state_rank0.pt", "run_config.yaml",
                 "hf_config/config.json"):
        assert (final / name).is_file(), name
    saved = json.loads((final / "run_config.json").read_text())
    assert saved["training"]["max_steps"] == 60 and saved["masking"]["name"] == "entity_wwm"
    assert (out / "loss.png").stat().st_size > 1000
    assert (out / "model" / "config.json").is_file()
    assert not (out / "wandb").exists() and not (out / "tensorboard").exists()  # --report-to none
    assert proc.stdout.count("run configuration:") == 1
    fallbacks = [line for line in proc.stdout.splitlines() if "hardware fallback" in line]
    assert len(fallbacks) == 1 and "Lamb" in fallbacks[0]


def test_exported_model_fills_masks(scratch_run: tuple[Path, subprocess.CompletedProcess],
                                    csl_sentences: list[str]) -> None:
    from transformers import BertForMaskedLM, BertTokenizer, pipeline

    model_dir = scratch_run[0] / "model"
    model = BertForMaskedLM.from_pretrained(model_dir)
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    assert model.config.hidden_size == 64 and len(tokenizer) == model.config.vocab_size
    fill = pipeline("fill-mask", model=str(model_dir), tokenizer=str(model_dir))
    sentence = csl_sentences[0]
    predictions = fill(sentence[:5] + tokenizer.mask_token + sentence[6:30])
    assert len(predictions) == 5 and all("token_str" in p for p in predictions)


def test_fresh_run_into_an_earlier_run_is_refused_and_changes_nothing(
        scratch_run: tuple[Path, subprocess.CompletedProcess], scratch_args) -> None:  # noqa: ANN001
    out, _ = scratch_run
    before = {p: p.read_bytes() for p in (out / "metrics.jsonl", out / "checkpoints" / "step-00000060" / "COMPLETE")}
    proc = run_pretrain(scratch_args(out))
    assert proc.returncode == 2
    assert "already holds a run" in proc.stderr and "--resume auto" in proc.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_a_finished_run_resumed_again_rewrites_no_checkpoint(scratch_run: tuple[Path, subprocess.CompletedProcess],
                                                              scratch_args, tmp_path: Path) -> None:  # noqa: ANN001
    """Issue 10's first fault: ``--resume auto`` on a finished run used to save step-60 again, in place."""
    import shutil

    out = tmp_path / "again"
    shutil.copytree(scratch_run[0], out)
    checkpoint = out / "checkpoints" / "step-00000060"
    before = {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in checkpoint.rglob("*") if p.is_file()}
    proc = run_pretrain([*scratch_args(out), "--resume", "auto"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "exists and is intact; not writing it again" in proc.stdout
    assert {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in checkpoint.rglob("*") if p.is_file()} == before
    # Emptied (the out-of-disk save of the issue): resume falls back to nothing older here, so it is an error.
    (checkpoint / "mp_rank_00_model_states.pt").write_bytes(b"")
    broken = run_pretrain([*scratch_args(out), "--resume", "auto"])
    assert broken.returncode == 2 and "no intact checkpoint" in broken.stderr and "Traceback" not in broken.stderr
    named = run_pretrain([*scratch_args(out), "--resume", str(checkpoint)])
    assert named.returncode == 2 and "mp_rank_00_model_states.pt" in named.stderr and "Traceback" not in named.stderr


def test_continue_from_a_local_pretrained_folder_with_wandb_offline(
        scratch_run: tuple[Path, subprocess.CompletedProcess], csl_data: Path, tmp_path: Path) -> None:
    pretrained = scratch_run[0] / "model"
    out = tmp_path / "continued"
    proc = run_pretrain([
        "--data", str(csl_data), "--model", str(pretrained), "--output-dir", str(out), "--max-steps", "10",
        "--seq-len", "64", "--log-every", "5", "--eval-every", "10", "--report-to", "wandb", "--no-export",
        "--project", "academic-bert-tests", "--tags", "ci,tiny",
    ], env={"WANDB_MODE": "offline", "WANDB_API_KEY": "", "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"pretrained {pretrained}" in proc.stdout
    first_loss = next(r["loss"] for r in read_metrics(out) if r["split"] == "train")
    scratch_first = next(r["loss"] for r in read_metrics(scratch_run[0]) if r["split"] == "train")
    assert first_loss < scratch_first - 0.3, "the pretrained weights were not loaded"
    offline_runs = list((out / "wandb").rglob("*.wandb"))
    assert offline_runs, "W&B offline mode wrote no run file"
    saved = (out / "run_config.yaml").read_text()
    assert "WANDB_API_KEY" not in saved


def test_killed_run_resumes_with_identical_losses(scratch_run: tuple[Path, subprocess.CompletedProcess],
                                                 scratch_args, tmp_path: Path) -> None:  # noqa: ANN001
    """SIGKILL a run right after its step-30 checkpoint, resume it with --resume auto: same numbers as uninterrupted."""
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    victim = subprocess.Popen([sys.executable, str(PRETRAIN), *scratch_args(out)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "checkpoints" / "step-00000030" / "COMPLETE"
    deadline = time.monotonic() + 240
    while not marker.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.kill()
    victim.wait()
    if victim.returncode == 0:
        pytest.skip("the run finished before it could be killed (machine too fast for a 30-step window)")
    assert marker.exists(), "the run died before its first checkpoint"

    proc = run_pretrain([*scratch_args(out), "--resume", "auto"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "step 30, epoch 0" in proc.stdout

    def by_step(folder: Path) -> dict[tuple[int, str], dict]:
        return {(r["step"], r["split"]): r for r in read_metrics(folder)}  # a rerun step replaces its record

    straight, resumed = by_step(scratch_run[0]), by_step(out)
    assert straight.keys() == resumed.keys()
    for key, record in straight.items():
        for metric in ("loss", "grad_norm", "lr", "masked_accuracy", "entity_accuracy"):
            if metric in record:
                assert resumed[key][metric] == record[metric], (key, metric)


def test_killed_mid_save_resumes_from_the_previous_checkpoint(scratch_run: tuple[Path, subprocess.CompletedProcess],
                                                               scratch_args, tmp_path: Path) -> None:  # noqa: ANN001
    """SIGKILL while the step-60 checkpoint is being written (its model states on disk, the rest not yet): the
    half-written save is never taken for a checkpoint, the run resumes from step 30 and ends as if uninterrupted."""
    hook = tmp_path / "hook"
    hook.mkdir()
    # Runs in the victim only (PYTHONPATH): DeepSpeed's save of step 60 stalls after writing, so the kill lands
    # inside CheckpointManager.save, between DeepSpeed's files and the manifest.
    (hook / "sitecustomize.py").write_text(
        "import time\n"
        "from deepspeed.runtime.engine import DeepSpeedEngine\n"
        "_save = DeepSpeedEngine.save_checkpoint\n"
        "def save_checkpoint(self, save_dir, tag=None, *args, **kwargs):\n"
        "    out = _save(self, save_dir, tag, *args, **kwargs)\n"
        "    if str(tag).endswith('step-00000060'):\n"
        "        time.sleep(600)\n"
        "    return out\n"
        "DeepSpeedEngine.save_checkpoint = save_checkpoint\n", encoding="utf-8")
    out = tmp_path / "killed-mid-save"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env.get("PYTHONPATH", "")])
    victim = subprocess.Popen([sys.executable, str(PRETRAIN), *scratch_args(out)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "checkpoints" / ".saving-step-00000060" / "mp_rank_00_model_states.pt"
    deadline = time.monotonic() + 300
    while not partial.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let DeepSpeed finish the file: the stall is after it
    victim.kill()
    victim.wait()
    assert partial.exists(), "the run never reached the step-60 save"
    assert not (out / "checkpoints" / "step-00000060").exists()

    proc = run_pretrain([*scratch_args(out), "--resume", "auto"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resuming from step-00000030" in proc.stdout and "step 30, epoch 0" in proc.stdout
    assert not partial.parent.exists()  # the debris went with the next save's prune
    straight = {(r["step"], r["split"]): r for r in read_metrics(scratch_run[0])}
    resumed = {(r["step"], r["split"]): r for r in read_metrics(out)}
    for key in [k for k in straight if k[0] == 60]:
        assert resumed[key]["loss"] == straight[key]["loss"], key


def test_pretrained_model_embeddings_grow_to_a_larger_tokenizer(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    from framework.config import ConfigError, ModelConfig
    from framework.training.model import build_model, load_tokenizer

    small = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64))
    small.save_pretrained(tmp_path / "small")
    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    with pytest.raises(ConfigError, match=r"has \d+ tokens but --model .* has 100 embedding rows.*--resize-embeddings"):
        build_model(ModelConfig(name_or_path=str(tmp_path / "small")), tokenizer, seed=0)  # never silently resized
    model = build_model(ModelConfig(name_or_path=str(tmp_path / "small"), resize_embeddings=True), tokenizer, seed=0)
    rows = model.get_input_embeddings().num_embeddings
    assert rows >= len(tokenizer) and rows % 8 == 0
    assert model.get_output_embeddings().weight.shape[0] == rows  # the MLM decoder follows


@pytest.mark.parametrize("args, fragment", [
    (["--masking", "no_such_strategy"], "available: token"),
    (["--masking-args", '{"no_such_option": 1}'], "no_such_option"),
    (["--seq-len", "4"], "--seq-len"),
    (["--model", "./missing-model-folder"], "no such folder"),
    (["--model-config", str(ROOT / "setup.cfg")], "not valid JSON"),
])
def test_bad_config_fails_before_any_work(args: list[str], fragment: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run_pretrain([*args, "--output-dir", str(out)], timeout=60)
    assert proc.returncode == 2
    assert "configuration error" in proc.stderr and fragment in proc.stderr
    assert not out.exists(), "nothing may be written before the configuration is valid"
