"""launch/study.py end to end on a smoke-sized study (tiny model, 2 strategies, real CSL text), and its report
pieces on hand-made results: resumable (a finished stage is skipped), paired comparisons, honest separations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def smoke_config(tmp: Path, shared: Path, finetune: list | None = None) -> Path:
    cfg = {
        "name": "smoke", "output_dir": str(tmp / "runs"), "results_dir": str(tmp / "results"),
        "report": str(tmp / "results.md"), "shared_data": str(shared), "strategies": ["wwm", "entity_wwm"],
        "seeds": [1], "heldout_papers": 40, "max_pretrain_sentences": 1500,
        "pretrain_args": {"model-config": "tiny", "vocab-size": 2000, "max-steps": 20, "micro-batch-size": 16,
                          "seq-len": 64, "eval-every": 10, "log-every": 10, "save-every": 0, "lr": 5e-3,
                          "max-eval-examples": 64},
        "evaluate_args": {"max-cloze-items": 200, "seq-len": 64},
        "finetune": finetune or [],
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def tiny_fewclue_splits(tmp: Path, shared: Path, rows: int = 16) -> Path:
    """The first ``rows`` lines of each FewCLUE CSL split, in FewCLUE's folder layout (a copy in tmp only).

    16 rows in micro-batches of 8 make two steps: DeepSpeed's WarmupDecayLR needs a warm-up and a decay step.
    """
    folder = tmp / "fewclue-csl"
    folder.mkdir()
    for k in range(5):
        for part in ("train", "dev"):
            lines = (shared / "fewclue" / "csl" / f"{part}_{k}.json").read_text(encoding="utf-8").splitlines()
            (folder / f"{part}_{k}.json").write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    return folder


@pytest.mark.slow
def test_smoke_study_runs_resumes_and_reports(tmp_path: Path, shared_data_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # As if run from a process that holds a process group (earlier tests in this session may): the stages must
    # not inherit its rendezvous and fail with "address already in use".
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(listener.getsockname()[1]))  # bound and listening, like a live TCPStore
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    splits = tiny_fewclue_splits(tmp_path, shared_data_dir)
    config = smoke_config(tmp_path, shared_data_dir, finetune=[{"task": "csl-keywords", "args": {
        "fewclue-splits": str(splits), "epochs": 1, "max-seq-len": 64, "micro-batch-size": 8, "seed": 0}}])
    env_cmd = [sys.executable, str(ROOT / "launch" / "study.py"), "--config", str(config)]
    results = tmp_path / "results"
    # A worker given --runs does only those runs; the next invocation does the rest.
    first = subprocess.run(env_cmd + ["--runs", "entity_wwm-seed1"], cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (results / "entity_wwm-seed1" / "finetune-csl-keywords.json").is_file()
    assert not (results / "wwm-seed1").exists() and "3 of 6 stages finished" in (tmp_path / "results.md").read_text(
        encoding="utf-8")
    proc = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 stages done" in proc.stdout
    for run in ("wwm-seed1", "entity_wwm-seed1"):
        pre = json.loads((results / run / "pretrain.json").read_text(encoding="utf-8"))
        assert pre["strategy"] == run.split("-seed")[0] and pre["valid_curve"][0][0] == 0
        ev = json.loads((results / run / "evaluate.json").read_text(encoding="utf-8"))
        assert ev["masking"]["name"] == "wwm" and ev["cloze"]["entity"]["items"] > 0
        assert (results / run / "cloze_items.npz").is_file()
        ft = json.loads((results / run / "finetune-csl-keywords.json").read_text(encoding="utf-8"))
        assert ft["protocol"] == "fewclue" and len(ft["per_split"]) == 5 and "majority" in ft and ft["code"]
    # Both models answered the same questions: same items, same number of predictions.
    a = json.loads((results / "wwm-seed1" / "evaluate.json").read_text(encoding="utf-8"))
    b = json.loads((results / "entity_wwm-seed1" / "evaluate.json").read_text(encoding="utf-8"))
    assert a["mlm"]["num_predictions"] == b["mlm"]["num_predictions"]
    assert a["mlm_baseline"] == b["mlm_baseline"]
    data = tmp_path / "runs" / "data"
    held = set((data / "heldout" / "sentences.txt").read_text(encoding="utf-8").splitlines())
    train = set((data / "pretrain" / "train.txt").read_text(encoding="utf-8").splitlines())
    assert held and not held & train  # evaluation text is never pretrained on
    report = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "| held-out masked accuracy ↑ |" in report and "entity_wwm − wwm" in report
    assert "| csl-keywords dev accuracy ↑ |" in report and "6 of 6 stages finished" in report
    assert "## What this means" not in report  # only when the people who ran it wrote results_dir/interpretation.md
    assert (results / "valid_loss.png").stat().st_size > 1000 and (results / "metrics.png").is_file()
    assert json.loads((results / "data.json").read_text(encoding="utf-8"))["fingerprint"]
    assert (results / "tokenizer" / "vocab.txt").read_bytes() == (data / "tokenizer" / "vocab.txt").read_bytes()
    # A second invocation finds everything done and only rewrites the report.
    before = (results / "wwm-seed1" / "pretrain.json").stat().st_mtime_ns
    again = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 stages done" in again.stdout
    (results / "interpretation.md").write_text("Nothing separates the two strategies at this size.\n", encoding="utf-8")
    subprocess.run(env_cmd + ["--report-only"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    report = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "## What this means\n\nNothing separates the two strategies at this size." in report
    assert (results / "wwm-seed1" / "pretrain.json").stat().st_mtime_ns == before
    # Results made from other data are never mixed with new ones.
    with open(data / "pretrain" / "train.txt", "a", encoding="utf-8") as f:
        f.write("一个改变了数据指纹的新句子。\n")
    changed = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2 and "fingerprint" in changed.stderr and "Traceback" not in changed.stderr
    listener.close()


def test_bad_study_config_is_one_line(tmp_path: Path, shared_data_dir: Path) -> None:
    config = smoke_config(tmp_path, shared_data_dir)
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["strategies"] = ["wwm", "no_such_strategy"]
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "study.py"), "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no_such_strategy" in proc.stderr and "Traceback" not in proc.stderr
    raw["strategies"] = ["wwm"]
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / "study.py"), "--config", str(config),
                           "--runs", "wwm-seed1,token-seed9"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "token-seed9" in proc.stderr and "wwm-seed1" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()  # refused before any work


def test_separation_sentences_follow_the_seed_spread(tmp_path: Path, shared_data_dir: Path) -> None:
    from framework.evaluation.study import separations

    close = [{"metric": "m", "higher_is_better": True, "strategies": {"a": [0.50, 0.52, 0.51], "b": [0.51, 0.50, 0.52]}}]
    apart = [{"metric": "m", "higher_is_better": True, "strategies": {"a": [0.50, 0.52, 0.51], "b": [0.60, 0.61, 0.62]}}]
    assert separations(close, ["a", "b"])[0].startswith("m: no separation")
    assert separations(apart, ["a", "b"])[0].startswith("m: b is best")


def test_paired_cloze_pairs_items_within_a_seed(tmp_path: Path, shared_data_dir: Path) -> None:
    from framework.evaluation.study import StudyConfig, paired_cloze

    cfg = StudyConfig(results_dir=str(tmp_path), shared_data=str(shared_data_dir), strategies=["a", "b"], seeds=[1])
    rng = np.random.default_rng(0)
    base = rng.normal(-5, 1, size=100).astype(np.float32)
    is_entity = np.arange(100) < 60
    for name, shift in (("a", 0.0), ("b", 0.25)):
        folder = tmp_path / f"{name}-seed1"
        folder.mkdir()
        np.savez(folder / "cloze_items.npz", index=np.arange(100), is_entity=is_entity,
                 in_train_lexicon=np.arange(100) < 30, mean_logprob=base + shift)
    out = paired_cloze(cfg, "b", "a", "entity_in_lexicon")
    assert out["mean"] == pytest.approx(0.25, abs=1e-5) and out["per_seed"][0]["items"] == 30
    assert out["per_seed"][0]["se"] == pytest.approx(0.0, abs=1e-5)  # a constant shift: no spread at all


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_shipped_study_presets_are_valid(name: str, shared_data_dir: Path) -> None:
    from framework.evaluation.study import StudyConfig

    cfg = StudyConfig.from_yaml(ROOT / "studies" / f"{name}.yaml")
    cfg.shared_data = str(shared_data_dir)
    cfg.validate()
    assert cfg.strategies == ["token", "wwm", "entity_wwm", "entity_wwm@mined"] and len(cfg.runs()) == 12
    # The CPU preset leaves csl-discipline to the GPU one (too close to its floor at 5.4M parameters).
    assert {s.task for s in cfg.finetune} == {"csl-keywords", "csl-category"} | ({"csl-discipline"} if name == "gpu"
                                                                               else set())
    assert cfg.continues_pretrained == (name == "gpu")
