"""What the trainer's preflight and model building refuse before heavy work: a pretrained model given a
tokenizer of another vocabulary (or a larger one without --resize-embeddings), an output folder that takes no
files, and a DeepSpeed train_batch_size the batch geometry contradicts. No engine is started here."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from framework.config import ConfigError, ModelConfig, load_run_config
from framework.training.trainer import check_output_writable, preflight


@pytest.fixture(scope="module")
def pretrained_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A tiny BERT saved with its own tokenizer (the tests' CSL vocabulary), as an exported model folder is."""
    from transformers import BertConfig, BertForMaskedLM

    from framework.training.model import load_tokenizer

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    rows = len(tokenizer)
    model = BertForMaskedLM(BertConfig(vocab_size=rows, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=64))
    folder = tmp_path_factory.mktemp("pretrained")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _vocab_variant(source: Path, folder: Path, transform) -> Path:  # noqa: ANN001
    """A copy of the tokenizer folder ``source`` whose vocab.txt lines went through ``transform``."""
    folder.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    lines = (source / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (folder / "vocab.txt").write_text("\n".join(transform(lines)) + "\n", encoding="utf-8")
    return folder


def _specials_first(lines: list[str]) -> list[str]:
    """Another vocabulary of the same size: the same special tokens first, the other tokens in reverse order."""
    specials = [t for t in lines if t.startswith("[") and t.endswith("]")]
    return specials + [t for t in lines if t not in specials][::-1]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tokenizers")
    return {
        "other": _vocab_variant(tiny_tokenizer_dir, root / "other", _specials_first),
        "appended": _vocab_variant(tiny_tokenizer_dir, root / "appended",
                                   lambda lines: lines + [f"新术语{i}" for i in range(20)]),
    }


def test_tokenizer_of_another_vocabulary_is_refused_even_with_resize(pretrained_dir: Path,
                                                                     tokenizers: dict[str, Path]) -> None:
    from framework.training.model import build_model, load_tokenizer

    other = tokenizers["other"]
    for resize in (False, True):
        with pytest.raises(ConfigError, match=r"is not the vocabulary of --model .*token id \d+ is"):
            build_model(ModelConfig(name_or_path=str(pretrained_dir), tokenizer=str(other),
                                    resize_embeddings=resize), load_tokenizer(other), seed=0)
    # preflight finds it before any data or model work (both folders are local).
    cfg = load_run_config(["--model", str(pretrained_dir), "--tokenizer", str(other), "--max-steps", "1",
                           "--output-dir", str(pretrained_dir.parent / "run-other")])
    with pytest.raises(ConfigError, match="is not the vocabulary of"):
        preflight(cfg)


def test_appending_tokenizer_needs_resize_embeddings(pretrained_dir: Path, tokenizers: dict[str, Path]) -> None:
    from framework.training.model import build_model, load_tokenizer

    appended = tokenizers["appended"]
    tokenizer = load_tokenizer(appended)
    args = ["--model", str(pretrained_dir), "--tokenizer", str(appended), "--max-steps", "1",
            "--output-dir", str(pretrained_dir.parent / "run-appended")]
    with pytest.raises(ConfigError, match=r"has \d+ tokens but --model .* embedding rows.*pass --resize-embeddings"):
        preflight(load_run_config(args))
    with pytest.raises(ConfigError, match="--resize-embeddings"):
        build_model(ModelConfig(name_or_path=str(pretrained_dir), tokenizer=str(appended)), tokenizer, seed=0)
    cfg = load_run_config([*args, "--resize-embeddings"])
    assert cfg.model.resize_embeddings and cfg.to_dict()["model"]["resize_embeddings"] is True
    preflight(cfg)
    model = build_model(cfg.model, tokenizer, seed=0)
    assert model.get_input_embeddings().num_embeddings >= len(tokenizer)
    # The model's own tokenizer (the default) needs nothing.
    own = build_model(ModelConfig(name_or_path=str(pretrained_dir)), load_tokenizer(pretrained_dir), seed=0)
    assert own.get_input_embeddings().num_embeddings == len(load_tokenizer(pretrained_dir))


def test_resize_embeddings_without_a_pretrained_model_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"--resize-embeddings .* applies to a pretrained --model"):
        load_run_config(["--model-config", "tiny", "--resize-embeddings"])


def test_unwritable_output_folder_is_found_at_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "readonly"
    out.mkdir()
    out.chmod(0o555)
    real_mkstemp = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):  # noqa: ANN001, ANN202, A002 - mkstemp's own keyword
        # Root ignores permission bits: refuse as a read-only mount would, for this folder and below.
        if dir is not None and Path(dir).is_relative_to(out):
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        with pytest.raises(ConfigError, match=rf"--output-dir {out} is not writable \(Permission denied\)"):
            preflight(load_run_config(["--max-steps", "1", "--output-dir", str(out)]))
        with pytest.raises(ConfigError, match=rf"--output-dir {out / 'new'} cannot be created: {out} is not writable"):
            check_output_writable(out / "new")
    finally:
        out.chmod(0o755)
    monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
    check_output_writable(out / "new")  # writable again: no error, and nothing left behind
    assert list(out.iterdir()) == []
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_output_writable(blocked / "run")


def test_preflight_checks_train_batch_size_against_the_launcher_world(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 16,
                              "gradient_accumulation_steps": 2}))
    cfg = load_run_config(["--max-steps", "1", "--deepspeed_config", str(ds), "--output-dir", str(tmp_path / "o")])
    monkeypatch.setenv("WORLD_SIZE", "2")
    preflight(cfg)  # 16 x 2 x 2 ranks = 64
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match=r"train_batch_size=64 contradicts .* x 1 rank\(s\) = 32"):
        preflight(cfg)


def test_preflight_refuses_deepspeed_node_local_checkpoint_storage(tmp_path: Path) -> None:
    """DeepSpeed's ``use_node_local_storage`` makes every node's *local* rank 0 write the model states: into the
    run's one shared checkpoint folder, one file with a writer per node."""
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 4, "checkpoint": {"use_node_local_storage": True}}))
    cfg = load_run_config(["--max-steps", "1", "--deepspeed_config", str(ds), "--output-dir", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="use_node_local_storage"):
        preflight(cfg)
