"""A third-party strategy, installed from its own package and found through its entry point, masks real CSL
batches and trains a tiny BERT for a step.

The example package (``tests/plugins/academic-bert-example-plugin``) is pip-installed, from a copy so that the
source tree stays clean, into a temporary folder that is then put on ``sys.path``: importlib.metadata finds
its ``.dist-info`` there exactly as it would in site-packages.
"""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from framework.batching.collator import MaskingCollator
from framework.data.example import IGNORE_INDEX
from framework.masking import MaskingConfigError, MaskingContext, available_strategies, build_strategy

PLUGIN_SOURCE = Path(__file__).parent / "plugins" / "academic-bert-example-plugin"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - a generator fixture
    """The example plugin installed with pip into a temporary folder on ``sys.path``."""
    work = tmp_path_factory.mktemp("plugin")
    source = work / "src"
    shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    for name in [m for m in sys.modules if m.startswith("academic_bert_example_plugin")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def test_entry_point_is_found_by_name(installed_plugin: Path) -> None:
    origin = available_strategies()["random_word"]
    assert origin.startswith("entry point academic_bert_example_plugin.random_word:RandomWordMasking")
    assert "academic-bert-example-plugin 0.1.0" in origin or "academic_bert_example_plugin 0.1.0" in origin


def test_plugin_options_are_validated_like_builtins(installed_plugin: Path, csl_segmented) -> None:  # noqa: ANN001
    context = MaskingContext(vocab=csl_segmented.vocab_info)
    with pytest.raises(MaskingConfigError, match="accepted options: word_prob"):
        build_strategy("random_word", {"mask_prob": 0.2}, context)
    with pytest.raises(MaskingConfigError, match="word_prob=2"):
        build_strategy("random_word", {"word_prob": 2}, context)
    assert build_strategy("random_word", {"word_prob": 0.3}, context).describe() == {
        "name": "random_word", "args": {"word_prob": 0.3}}


def test_plugin_masks_real_batches_and_trains_a_step(installed_plugin: Path, csl_segmented) -> None:  # noqa: ANN001
    from transformers import BertConfig, BertForMaskedLM

    vocab = csl_segmented.vocab_info
    strategy = build_strategy("random_word", {"word_prob": 0.3}, MaskingContext(vocab=vocab))
    collator = MaskingCollator(strategy, vocab, seed=0)
    examples = [csl_segmented[i] for i in range(600)]
    batch = collator(examples)
    labelled = batch["labels"] != IGNORE_INDEX
    tokens = sum(ex.num_tokens for ex in examples)
    assert abs(int(labelled.sum()) / tokens - 0.3) < 0.03  # word_prob is the expected token share
    assert (batch["input_ids"][labelled] == vocab.mask_token_id).all()
    specials = torch.zeros_like(labelled)
    for row, ex in enumerate(examples):
        specials[row, : len(ex)] = torch.from_numpy(ex.special_mask)
    assert not (labelled & specials).any()

    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=160)
    model = BertForMaskedLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    small = collator(examples[:16])
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(input_ids=small["input_ids"], attention_mask=small["attention_mask"],
                 token_type_ids=small["token_type_ids"], labels=small["labels"]).loss
    loss.backward()
    optimizer.step()
    loss_value = float(loss.detach())
    assert np.isfinite(loss_value) and abs(loss_value - np.log(vocab.vocab_size)) < 1.0  # untrained: ~ln(V)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_unknown_name_lists_the_plugin_too(installed_plugin: Path, csl_segmented) -> None:  # noqa: ANN001
    with pytest.raises(MaskingConfigError, match=r"random_word \[entry point"):
        build_strategy("random-word", None, MaskingContext(vocab=csl_segmented.vocab_info))


@pytest.mark.slow
def test_plugin_trains_end_to_end_through_pretrain(installed_plugin: Path, csl_sentences: list[str],
                                                   csl_keywords: list[str], tiny_tokenizer_dir: Path,
                                                   tmp_path: Path) -> None:
    """``launch/pretrain.py --masking random_word``: the plugin's entry point found in a fresh process."""
    import json
    import os

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.txt").write_text("\n".join(csl_sentences[:400]) + "\n", encoding="utf-8")
    (data / "valid.txt").write_text("\n".join(csl_sentences[400:432]) + "\n", encoding="utf-8")
    (data / "keywords.txt").write_text("".join(f"{k} 1\n" for k in csl_keywords[:500]), encoding="utf-8")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                  "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64}))
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["PYTHONPATH"] = os.pathsep.join([str(installed_plugin), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve().parents[1] / "launch" / "pretrain.py"),
         "--data", str(data), "--model-config", str(config), "--tokenizer", str(tiny_tokenizer_dir),
         "--output-dir", str(out), "--masking", "random_word", "--masking-args", '{"word_prob": 0.3}',
         "--max-steps", "2", "--seq-len", "64", "--log-every", "1", "--eval-every", "2", "--save-every", "2",
         "--report-to", "none"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all(np.isfinite(r["loss"]) for r in train)
    saved = json.loads(next((out / "checkpoints").glob("*/run_config.json")).read_text())
    assert saved["masking"] == {"name": "random_word", "args": {"word_prob": 0.3}}
