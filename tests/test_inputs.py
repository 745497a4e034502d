"""Every command line checks its inputs before it writes anything: a tokenizer that cannot load, a mistyped
field name (with a did-you-mean), and a file given where a folder is expected or the reverse, each with the
fix in the message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from framework.config import ConfigError, load_run_config
from framework.data.corpus import PreprocessConfig
from framework.data.readers import BadInputError

ROOT = Path(__file__).resolve().parents[1]


def _preprocess(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "preprocess.py"), "--no-progress", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_preprocess_refuses_a_missing_tokenizer_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _preprocess(["--output", str(out), "--tokenizer", "/nonexistent"])
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "--tokenizer /nonexistent: no such folder" in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_preprocess_refuses_a_tokenizer_file_naming_its_folder(tmp_path: Path, tiny_tokenizer_dir: Path) -> None:
    out = tmp_path / "out"
    done = _preprocess(["--output", str(out), "--tokenizer", str(tiny_tokenizer_dir / "vocab.txt")])
    assert done.returncode == 2 and f"--tokenizer {tiny_tokenizer_dir}" in done.stderr, done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_mistyped_text_field_on_the_csl_tsv_says_did_you_mean(tmp_path: Path, csl_tsv: Path) -> None:
    config = PreprocessConfig(output=tmp_path / "out", inputs=[csl_tsv], text_fields=["title", "abstrct"])
    with pytest.raises(BadInputError, match=r"'abstrct' \(did you mean 'abstract'\?\)"):
        config.validate()
    PreprocessConfig(output=tmp_path / "out", inputs=[csl_tsv], text_fields=["title", "abstract"]).validate()


def test_mistyped_field_in_jsonl_and_tsv_headers(tmp_path: Path, csl_jsonl: Path) -> None:
    with pytest.raises(BadInputError, match=r"'abstact' \(did you mean 'abstract'\?\)"):
        PreprocessConfig(output=tmp_path / "a", inputs=[csl_jsonl], text_fields=["abstact"]).validate()
    with pytest.raises(BadInputError, match=r"'keyword' \(did you mean 'keywords'\?\)"):
        PreprocessConfig(output=tmp_path / "a", inputs=[csl_jsonl], text_fields=["title"],
                         keywords_field="keyword").validate()
    table = tmp_path / "papers.tsv"
    table.write_text("title\tcontent\n一篇论文\t这是一篇关于深度学习的论文摘要。\n", encoding="utf-8")
    with pytest.raises(BadInputError, match=r"'contnet' \(did you mean 'content'\?\)"):
        PreprocessConfig(output=tmp_path / "b", inputs=[table], text_fields=["title", "contnet"]).validate()
    # The CLI says it in one line, before writing.
    done = _preprocess(["--input", str(csl_jsonl), "--text-fields", "title,abstrct", "--output", str(tmp_path / "c")])
    assert done.returncode == 2 and "did you mean 'abstract'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "c").exists()


def test_pretrain_data_given_train_txt_names_its_folder(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("一句话。\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"is a file; --data takes the folder holding it: --data {tmp_path}$"):
        load_run_config(["--data", str(tmp_path / "train.txt")])


def test_files_and_folders_swapped_say_the_fix(tmp_path: Path) -> None:
    config_json = tmp_path / "model" / "config.json"
    config_json.parent.mkdir()
    config_json.write_text(json.dumps({"model_type": "bert"}), encoding="utf-8")
    cases = [
        (["--model", str(config_json)], f"--model {config_json.parent}"),
        (["--tokenizer", str(config_json)], f"--tokenizer {config_json.parent}"),
        (["--model-config", str(config_json.parent)], f"--model-config {config_json}"),
        (["--deepspeed_config", str(ROOT / "ds_configs")], "cpu.json"),
        (["--resume", str(config_json)], f"--resume {config_json.parent}"),
        (["--config", str(tmp_path)], "is a folder; give a run.yaml file"),
        (["--lexicon", str(tmp_path)], f"--lexicon {tmp_path / 'keywords.txt'}"),
    ]
    for argv, fix in cases:
        with pytest.raises(ConfigError) as err:
            load_run_config(argv)
        assert fix in str(err.value), (argv, str(err.value))
    with pytest.raises(ValueError, match=r"is a folder: give the dictionary files in it"):
        PreprocessConfig(output=tmp_path / "o", extra_lexicons=[tmp_path]).validate()
