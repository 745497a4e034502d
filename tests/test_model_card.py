"""framework.training.model_card: the README.md every export writes, and results recorded into it.

One short real run (12 steps of a tiny BERT from scratch on 300 CSL papers, checkpoints at steps 6 and 12)
exports a model at its end; its checkpoints are exported again through launch/export.py. The cards must carry
the run's real numbers (steps, masking, tokens seen, corpus and validation figures), say "unknown" for what a
source does not hold, and keep every fact and every recorded result when results are added.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from framework.training.checkpoint import TrainState
from framework.training.model_card import (CARD_FACTS, EVAL_RESULTS, README, STALE_RESULTS, checkpoint_card_facts,
                                           record_results, render_model_card, render_to_folder)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STEPS, MICRO, SEQ_LEN = 12, 8, 32
HALF = STEPS // 2  # the first checkpoint and evaluation
FIRST, LAST = f"step-{HALF:08d}", f"step-{STEPS:08d}"


def front_matter(readme: Path) -> tuple[dict, str]:
    """The YAML front matter of a model card and the Markdown after it."""
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def row(body: str, name: str) -> str:
    """The value cell of the Markdown table row named ``name``."""
    line = next(line for line in body.splitlines() if line.startswith(f"| {name} |"))
    return line.split("|")[2].strip()


def section(body: str, title: str) -> str:
    """The Markdown from heading ``title`` to the next heading of any level."""
    start = body.index(title + "\n") + len(title) + 1
    ends = [i for i in (body.find("\n#", start),) if i >= 0]
    return body[start : ends[0] if ends else len(body)]


def metrics_records(run_dir: Path, split: str) -> list[dict]:
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [r for r in map(json.loads, f) if r["split"] == split]


def export_cli():  # noqa: ANN201 - the launch/export.py module
    spec = importlib.util.spec_from_file_location("launch_export", ROOT / "launch" / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory, csl_papers: list[dict], tiny_tokenizer_dir: Path) -> Path:
    """12 steps from scratch with entity_wwm on 300 real CSL papers; returns the run's output folder."""
    from framework.data.corpus import PreprocessConfig, preprocess

    root = tmp_path_factory.mktemp("card-run")
    papers = root / "csl-sample.jsonl"
    papers.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in csl_papers[:300]), encoding="utf-8")
    preprocess(PreprocessConfig(inputs=[papers], output=root / "data", workers=1, valid_fraction=0.1, overwrite=True,
                                progress=False))
    config = root / "config.json"
    config.write_text(json.dumps({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}))
    out = root / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "launch" / "pretrain.py"), "--data", str(root / "data"), "--model-config",
         str(config), "--tokenizer", str(tiny_tokenizer_dir), "--output-dir", str(out), "--max-steps", str(STEPS),
         "--seq-len", str(SEQ_LEN), "--micro-batch-size", str(MICRO), "--log-every", str(HALF),
         "--eval-every", str(HALF), "--save-every", str(HALF), "--keep-last", "2", "--max-eval-examples", "32",
         "--report-to", "none"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_end_of_run_export_writes_a_card_with_the_runs_numbers(short_run: Path) -> None:
    model_dir = short_run / "model"
    meta, body = front_matter(model_dir / README)
    assert meta["language"] == ["zh"] and meta["library_name"] == "transformers"
    assert meta["pipeline_tag"] == "fill-mask" and "base_model" not in meta  # from scratch
    assert "entity_wwm" in meta["tags"] and meta["datasets"] == ["csl-sample"]

    facts = json.loads((model_dir / CARD_FACTS).read_text(encoding="utf-8"))
    tokens = facts["training"]["tokens_seen"]
    # Every micro-batch has MICRO sequences of 3 to SEQ_LEN real tokens.
    assert STEPS * MICRO * 3 < tokens <= STEPS * MICRO * SEQ_LEN
    assert row(body, "tokens seen") == f"{tokens:,}"
    assert row(body, "optimiser steps") == f"{STEPS} (of {STEPS} planned)"
    assert "Strategy `entity_wwm` with its resolved options" in body
    assert row(body, "entity_prob") == "0.4000" and row(body, "max_predictions") == "none"  # defaults resolved
    assert row(body, "sequence length") == str(SEQ_LEN)
    assert row(body, "micro-batch x accumulation x ranks = batch") == f"{MICRO} x 1 x 1 = {MICRO}"
    assert row(body, "world size (ranks)") == "1" and row(body, "ZeRO stage") == "0"
    assert row(body, "precision") == "bf16" and row(body, "device").startswith("CPU")  # ds_configs/cpu.json
    assert row(body, "dtype") == "float32"
    assert "From scratch" in body and row(body, "hidden_size") == "32"

    stats = json.loads((short_run.parent / "data" / "stats.json").read_text(encoding="utf-8"))
    assert row(body, "papers read / train / valid") == \
        f"{stats['papers_read']:,} / {stats['papers_train']:,} / {stats['papers_valid']:,}"
    assert row(body, "sentences train / valid") == f"{stats['sentences_train']:,} / {stats['sentences_valid']:,}"
    caches = (short_run.parent / "data" / "segmented").glob("train-*/meta.json")
    [train_meta] = [json.loads(p.read_text()) for p in caches]
    assert row(body, "lexicon keywords") == f"{train_meta['lexicon_keywords']:,}" and train_meta["lexicon_keywords"] > 0
    assert row(body, "tokens train / valid (segmented, no special tokens)").startswith(f"{train_meta['tokens']:,} / ")

    final = metrics_records(short_run, "valid")[-1]
    assert final["step"] == STEPS
    assert f"metrics at step {STEPS}" in body and row(body, "loss") == f"{final['loss']:.4f}"
    assert 'BertForMaskedLM.from_pretrained("MODEL_DIR")' in body and 'pipeline("fill-mask"' in body
    assert "## Evaluation results" not in body


def test_launch_export_of_a_checkpoint_writes_a_card_from_what_it_holds(short_run: Path, tmp_path: Path,
                                                                       capsys) -> None:
    cli = export_cli()
    assert cli.main([str(short_run / "checkpoints" / FIRST), str(tmp_path / "first")]) == 0
    assert "model card" in capsys.readouterr().out
    meta, body = front_matter(tmp_path / "first" / README)
    assert meta["pipeline_tag"] == "fill-mask" and "entity_wwm" in meta["tags"]
    assert row(body, "optimiser steps") == f"{HALF} (of {STEPS} planned)"
    # The validation of that step, not the run's later one.
    first = next(r for r in metrics_records(short_run, "valid") if r["step"] == HALF)
    assert f"metrics at step {HALF}" in body and row(body, "loss") == f"{first['loss']:.4f}"
    assert row(body, "entity_prob") == "0.4000"  # resolved from run_config.json
    assert row(body, "precision") == "bf16" and row(body, "ZeRO stage") == "0"
    assert row(body, "world size (ranks)") == "1"
    assert row(body, "device") == "unknown"  # a checkpoint does not record it: no guess

    half = json.loads((tmp_path / "first" / CARD_FACTS).read_text())["training"]["tokens_seen"]
    final = json.loads((short_run / "model" / CARD_FACTS).read_text())["training"]["tokens_seen"]
    assert 0 < half < final

    # The last checkpoint is the model the run exported: same weights, same numbers.
    assert cli.main([str(short_run / "checkpoints"), str(tmp_path / "latest")]) == 0
    latest = json.loads((tmp_path / "latest" / CARD_FACTS).read_text())
    run_card = json.loads((short_run / "model" / CARD_FACTS).read_text())
    for section in ("training", "corpus", "lexicon", "masking", "validation"):
        want = {k: v for k, v in run_card[section].items() if k != "optimizer"}
        got = {k: v for k, v in latest[section].items() if k != "optimizer"}
        assert got == want, section
    assert latest["weights"]["sha256"] == run_card["weights"]["sha256"]


def test_record_results_keeps_every_entry_and_the_export_facts(short_run: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    shutil.copytree(short_run / "model", model_dir)
    facts_before = (model_dir / CARD_FACTS).read_bytes()
    _, exported_body = front_matter(model_dir / README)

    record_results(model_dir, "evaluate", {"loss": 7.25, "perplexity": 1408.1, "entity_accuracy": float("nan")})
    readme = record_results(model_dir, "finetune/csl-category", {
        "accuracy": {"mean": 0.41, "std": 0.02}, "task": "csl-category",
        "per_split": [{"k": 0, "accuracy": 0.4}, {"k": 1, "accuracy": 0.42}]})
    assert readme == model_dir / README
    results = json.loads((model_dir / EVAL_RESULTS).read_text())
    assert set(results) == {"evaluate", "finetune/csl-category"}
    assert results["evaluate"]["entity_accuracy"] is None  # strict JSON
    assert (model_dir / CARD_FACTS).read_bytes() == facts_before

    _, body = front_matter(readme)
    assert body.startswith(exported_body.rstrip("\n"))  # every export fact is still there, in place
    assert "## Evaluation results" in body and "### evaluate" in body and "### finetune/csl-category" in body
    evaluate, finetune = section(body, "### evaluate"), section(body, "### finetune/csl-category")
    assert row(evaluate, "perplexity") == "1408.1000" and row(evaluate, "entity_accuracy") == "-"
    assert row(finetune, "accuracy/mean") == "0.4100" and row(finetune, "task") == "csl-category"
    assert "| k | accuracy |" in finetune and "| 1 | 0.4200 |" in finetune  # the per-split rows as a table

    # Same key again: replaced, not duplicated; the other key stays.
    record_results(model_dir, "evaluate", {"loss": 7.0})
    _, body = front_matter(readme)
    assert body.count("### evaluate") == 1 and "### finetune/csl-category" in body
    assert section(body, "### evaluate").strip().splitlines() == ["| metric | value |", "| --- | --- |",
                                                                  "| loss | 7.0000 |"]

    # Deterministic: rendering again from the stored files gives the same bytes.
    text = readme.read_bytes()
    readme.unlink()
    assert render_to_folder(model_dir).read_bytes() == text
    facts, stored = json.loads(facts_before), json.loads((model_dir / EVAL_RESULTS).read_text())
    assert render_model_card(facts, stored) == render_model_card(facts, stored) == text.decode("utf-8")

    with pytest.raises(ValueError, match="non-empty string"):
        record_results(model_dir, " ", {})
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        record_results(tmp_path / "nowhere", "evaluate", {})


def test_reexport_keeps_results_only_for_the_same_weights(short_run: Path, tmp_path: Path) -> None:
    from framework.training.export import export_checkpoint

    out = tmp_path / "model"
    export_checkpoint(short_run / "checkpoints" / LAST, out)
    record_results(out, "evaluate", {"loss": 7.0})
    export_checkpoint(short_run / "checkpoints" / LAST, out)  # same weights: results still apply
    assert "### evaluate" in (out / README).read_text()
    export_checkpoint(short_run / "checkpoints" / FIRST, out)  # other weights: set aside
    assert "## Evaluation results" not in (out / README).read_text()
    assert not (out / EVAL_RESULTS).exists()
    assert json.loads((out / STALE_RESULTS).read_text()) == {"evaluate": {"loss": 7.0}}


def test_old_checkpoint_state_loads_and_the_card_says_unknown(short_run: Path) -> None:
    old = {"step": HALF, "epoch": 0, "epoch_position": HALF * MICRO}  # written before tokens_seen existed
    assert TrainState(**old).tokens_seen == 0
    facts = checkpoint_card_facts(short_run / "checkpoints" / FIRST, {"train_state": old})
    assert facts["training"]["tokens_seen"] is None and facts["hardware"]["precision"] is None
    body = render_model_card(facts)
    assert row(body, "tokens seen") == "unknown" and row(body, "precision") == "unknown"
    assert row(body, "optimiser steps") == f"{HALF} (of {STEPS} planned)"


def test_a_bare_model_export_gets_a_card_of_what_the_folder_says(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from framework.training.export import export_from_engine

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32))
    out = export_from_engine(model, tokenizer, tmp_path / "bare")
    meta, body = front_matter(out / README)
    assert meta["library_name"] == "transformers" and "datasets" not in meta
    assert row(body, "num_hidden_layers") == "1" and row(body, "dtype") == "float32"
    assert row(body, "optimiser steps") == "unknown" and row(body, "tokens seen") == "unknown"
    assert "unknown (no validation record)" in body


def test_recording_into_a_foreign_folder_keeps_its_own_readme(short_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "hub-model"
    folder.mkdir()
    shutil.copy(short_run / "model" / "config.json", folder)
    (folder / README).write_text("# someone else's card\n", encoding="utf-8")
    readme = record_results(folder, "evaluate", {"loss": 3.5})
    assert (folder / "README.original.md").read_text(encoding="utf-8") == "# someone else's card\n"
    _, body = front_matter(readme)
    assert "### evaluate" in body and row(body, "hidden_size") == "32" and row(body, "tokens seen") == "unknown"
