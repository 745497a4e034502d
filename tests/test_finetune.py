"""Fine-tuning: the metrics against hand computations; option and input errors exit 2 before any heavy work;
end to end through ``launch/finetune.py --json`` with a tiny BERT on real CSL subsets (a single run whose seed
reproduces it exactly, and the FewCLUE five-split protocol)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from framework.config import ConfigError
from framework.evaluation.classification import (accuracy, classification_metrics, confusion_matrix, macro_f1,
                                                 per_class_f1)
from framework.evaluation.finetune import FinetuneConfig
from framework.evaluation.output import last_json_line
from framework.evaluation.tasks import TaskError

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "launch" / "finetune.py"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return {**env, **extra}


def run_finetune(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``python launch/finetune.py ARGS`` in a fresh process (a world of one)."""
    return subprocess.run([sys.executable, str(FINETUNE), *args], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------- metrics


def test_perfect_predictions_score_one() -> None:
    labels = [0, 1, 2, 2, 1, 0, 3]
    assert accuracy(labels, labels) == 1.0
    assert macro_f1(labels, labels, num_labels=6) == 1.0


def test_constant_predictor() -> None:
    labels = [0, 0, 0, 1, 1, 2]
    predictions = [0] * len(labels)
    assert accuracy(labels, predictions) == pytest.approx(3 / 6)  # the majority rate
    # Class 0: precision 3/6, recall 1 -> F1 = 2 * 0.5 / 1.5 = 2/3; classes 1 and 2: 0. Mean over the 3 classes.
    assert macro_f1(labels, predictions) == pytest.approx((2 / 3) / 3)
    # Classes that neither side contains (3, 4) do not dilute the mean.
    assert macro_f1(labels, predictions, num_labels=5) == pytest.approx((2 / 3) / 3)


def test_mixed_predictions_by_hand() -> None:
    labels = [0, 0, 1, 1]
    predictions = [0, 1, 1, 1]
    assert accuracy(labels, predictions) == 0.75
    # Class 0: tp 1, precision 1, recall 1/2 -> 2/3. Class 1: tp 2, precision 2/3, recall 1 -> 4/5.
    assert per_class_f1(confusion_matrix(labels, predictions, 3))[:2] == pytest.approx([2 / 3, 4 / 5])
    assert macro_f1(labels, predictions) == pytest.approx((2 / 3 + 4 / 5) / 2)


def test_sharded_confusion_matrices_sum_to_the_whole() -> None:
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 5, 101), rng.integers(0, 5, 101)
    whole = confusion_matrix(labels, predictions, 5)
    shards = sum(confusion_matrix(labels[r::3], predictions[r::3], 5) for r in range(3))
    assert (shards == whole).all()
    assert classification_metrics(shards) == classification_metrics(whole)
    assert classification_metrics(whole)["examples"] == 101


# --------------------------------------------------------------------------------------------- bad inputs


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert", "max_position_embeddings": 128}))
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\n", encoding="utf-8")
    train = tmp_path / "train.tsv"
    train.write_text("to category\t标题\t工学\n", encoding="utf-8")
    ok = dict(model=str(model), task="csl-category", train=str(train), dev=str(train), max_seq_len=64)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    FinetuneConfig(**ok).validate()
    for changes, fragment in [
        ({"task": "csl-nope"}, "unknown task"),
        ({"model": str(tmp_path / "nothing")}, "no such folder"),
        ({"model": str(no_tokenizer)}, "no tokenizer"),
        ({"dev": str(tmp_path / "missing.tsv")}, "--dev"),
        ({"fewclue_splits": str(tmp_path)}, "not both"),
        ({"patience": 0}, "--patience"),
        ({"max_seq_len": 512}, "128 position embeddings"),
        ({"report_to": "mlflow"}, "wandb, none"),
        ({"deepspeed_config": str(tmp_path / "no.json")}, "finetune.json"),
    ]:
        with pytest.raises((ConfigError, TaskError), match=fragment):
            FinetuneConfig(**{**ok, **changes}).validate()


def test_cli_errors_exit_2_fast(tmp_path: Path, shared_data_dir: Path) -> None:
    started = time.perf_counter()
    proc = run_finetune(["--help"])
    assert proc.returncode == 0 and "--fewclue-splits" in proc.stdout
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\n", encoding="utf-8")
    dcp = shared_data_dir / "csl-benchmark" / "cls_dcp" / "dev.tsv"
    for args, fragment in [
        (["--task", "csl-category", "--train", str(tmp_path / "missing.tsv"), "--dev", str(dcp)], "no such file"),
        (["--task", "csl-summary", "--train", str(dcp), "--dev", str(dcp)], "unknown task"),
        (["--task", "csl-category", "--train", str(dcp), "--dev", str(dcp)], "use --task csl-discipline"),
    ]:
        proc = run_finetune(["--model", str(model), *args])
        assert proc.returncode == 2, proc.stdout + proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], proc.stderr
    # Five interpreter starts without torch, DeepSpeed or a model: seconds, not tens of seconds.
    assert time.perf_counter() - started < 30


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A freshly initialised 2-layer, hidden-32 BertForMaskedLM with the tiny tokenizer, saved like an export."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                                       pad_token_id=tokenizer.pad_token_id))
    folder = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _head(src: Path, dst: Path, start: int, stop: int) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    dst.write_text("".join(lines[start:stop]), encoding="utf-8")
    return dst


def _without_timings(value: object) -> object:
    """``value`` less its wall-clock times and the output folder (which differ between two identical runs)."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "output_dir")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_finetune_category_is_reproducible(tmp_path: Path, tiny_model_dir: Path, shared_data_dir: Path) -> None:
    ctg = shared_data_dir / "csl-benchmark" / "cls_ctg"
    train = _head(ctg / "train.tsv", tmp_path / "train.tsv", 0, 200)
    dev = _head(ctg / "dev.tsv", tmp_path / "dev.tsv", 0, 100)
    test = _head(ctg / "dev.tsv", tmp_path / "test.tsv", 100, 200)
    args = ["--model", str(tiny_model_dir), "--task", "csl-category", "--train", str(train), "--dev", str(dev),
            "--test", str(test), "--epochs", "2", "--lr", "2e-3", "--max-seq-len", "32", "--seed", "5", "--json"]
    # The two runs side by side, one intra-op thread each: as fast as one after the other on two cores, and
    # oneDNN's reduction order stays fixed whatever else the machine runs.
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(FINETUNE), *args, "--output-dir", str(tmp_path / f"out{i}")],
                              cwd=ROOT, env=_env(OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
        results.append(last_json_line(stdout))
    print(f"two tiny fine-tunes side by side: {time.perf_counter() - started:.1f} s")
    result = results[0]
    assert result["task"] == "csl-category" and result["protocol"] == "single"
    assert result["num_labels"] == len(result["labels"]) and result["num_labels"] >= 10
    assert result["deepspeed"]["precision"] in ("bf16", "fp16")
    assert result["deepspeed"]["lr"] == pytest.approx(2e-3)
    run = result["runs"][0]
    assert (run["train_examples"], run["dev_examples"], run["test_examples"]) == (200, 100, 100)
    assert [e["epoch"] for e in run["epochs"]] == [1, 2] and run["best_epoch"] in (1, 2)
    assert run["steps"] == 2 * (200 // 16)
    best_dev = run["epochs"][run["best_epoch"] - 1]["dev"]
    assert result["dev"] == best_dev == run["dev"]
    assert best_dev["accuracy"] == max(e["dev"]["accuracy"] for e in run["epochs"])
    for split in ("dev", "test"):
        assert 0.0 <= result[split]["accuracy"] <= 1.0 and 0.0 <= result[split]["macro_f1"] <= 1.0
        assert result[split]["examples"] == 100
    # The majority baseline, by hand from the files: the commonest training category, predicted always.
    labels = lambda path: [line.split("\t")[2].strip() for line in path.read_text(encoding="utf-8").splitlines()]  # noqa: E731
    commonest = Counter(labels(train)).most_common(1)[0][0]
    assert result["majority"]["label"] == commonest
    assert result["majority"]["dev_accuracy"] == pytest.approx(labels(dev).count(commonest) / 100)
    assert result["majority"]["test_accuracy"] == pytest.approx(labels(test).count(commonest) / 100)
    assert _without_timings(results[0]) == _without_timings(results[1])
    saved = json.loads((tmp_path / "out0" / "finetune_result.json").read_text(encoding="utf-8"))
    assert _without_timings(saved) == _without_timings(result)
    assert "dev accuracy" in stdout  # the table before the JSON line


def test_fewclue_protocol(tmp_path: Path, tiny_model_dir: Path, shared_data_dir: Path) -> None:
    source = shared_data_dir / "fewclue" / "csl"
    folder = tmp_path / "csl"
    folder.mkdir()
    for k in range(5):
        _head(source / f"train_{k}.json", folder / f"train_{k}.json", 0, 16)
        _head(source / f"dev_{k}.json", folder / f"dev_{k}.json", 0, 12)
    started = time.perf_counter()
    proc = run_finetune(["--model", str(tiny_model_dir), "--task", "csl-keywords", "--fewclue-splits", str(folder),
                         "--test", str(folder / "dev_0.json"), "--epochs", "2", "--lr", "1e-3",
                         "--micro-batch-size", "8", "--max-seq-len", "64", "--json", "--record"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"tiny FewCLUE fine-tune (5 splits): {time.perf_counter() - started:.1f} s")
    result = last_json_line(proc.stdout)
    assert result["protocol"] == "fewclue" and result["labels"] == ["0", "1"]
    per_split = result["per_split"]
    assert [row["k"] for row in per_split] == [0, 1, 2, 3, 4]
    dev = [row["dev_accuracy"] for row in per_split]
    assert result["dev"]["accuracy"] == pytest.approx(statistics.mean(dev))
    assert result["dev_std"]["accuracy"] == pytest.approx(statistics.stdev(dev))
    test = [row["test_accuracy"] for row in per_split]
    assert result["test"]["accuracy"] == pytest.approx(statistics.mean(test))
    # Split 0 tests on its own dev file: with the selected weights restored, test is that epoch's dev exactly.
    assert result["runs"][0]["test"] == result["runs"][0]["dev"]
    assert result["reference"]["fine-tuning chinese-roberta-wwm-ext"] == 50.0
    assert result["majority"]["dev_accuracy"] == pytest.approx(
        statistics.mean(run["majority"]["dev_accuracy"] for run in result["runs"]))
    assert "ERNIE 1.0" in proc.stdout and "split 4" in proc.stdout
    if (ROOT / "framework" / "training" / "model_card.py").is_file():
        recorded = json.loads((tiny_model_dir / "eval_results.json").read_text(encoding="utf-8"))
        assert recorded["finetune/csl-keywords"]["dev"]["accuracy"] == pytest.approx(result["dev"]["accuracy"])


def test_two_ranks_count_every_dev_example_once(tmp_path: Path, tiny_model_dir: Path, shared_data_dir: Path) -> None:
    """Under the deepspeed launcher (two CPU ranks) an odd dev set is sharded, padded and summed exactly."""
    import shutil

    from framework.training.distributed import free_port

    ctg = shared_data_dir / "csl-benchmark" / "cls_ctg"
    train = _head(ctg / "train.tsv", tmp_path / "train.tsv", 0, 64)
    dev = _head(ctg / "dev.tsv", tmp_path / "dev.tsv", 0, 37)
    launcher = shutil.which("deepspeed")
    cmd = [launcher] if launcher else [sys.executable, "-m", "deepspeed.launcher.runner"]
    proc = subprocess.run([*cmd, "--num_gpus", "2", "--master_port", str(free_port()), str(FINETUNE), "--model",
                           str(tiny_model_dir), "--task", "csl-category", "--train", str(train), "--dev", str(dev),
                           "--test", str(dev), "--epochs", "1", "--micro-batch-size", "8", "--lr", "1e-3",
                           "--max-seq-len", "32", "--no-progress", "--json"],
                          cwd=ROOT, env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1  # rank 0 alone prints (the launcher adds its own lines after it)
    result = json.loads(json_lines[0])
    assert result["deepspeed"]["world_size"] == 2 and result["deepspeed"]["train_batch_size"] == 16
    assert result["dev"]["examples"] == 37 and result["test"] == result["dev"]
    assert result["runs"][0]["steps"] == 64 // 16
