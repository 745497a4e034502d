"""launch/evaluate.py and its pieces on real CSL sentences with a tiny model: the metrics on cases whose answer
is known (an oracle scores 1.0, the unigram baseline is the majority rate), identical questions for the same
seed, and a probe that masks exactly one whole entity (or word) per item."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from framework.data.example import IGNORE_INDEX

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = ROOT / "launch" / "evaluate.py"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    """A randomly initialised 2-layer BERT with the CSL tokenizer, saved like an export."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=128))
    out = tmp_path_factory.mktemp("tiny-mlm")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def eval_sentences(tmp_path_factory: pytest.TempPathFactory, csl_sentences: list[str]) -> Path:
    path = tmp_path_factory.mktemp("eval-data") / "sentences.txt"
    path.write_text("".join(s + "\n" for s in csl_sentences[:300]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def eval_dataset(eval_sentences: Path, tiny_model_dir: Path, csl_lexicon_file: Path):  # noqa: ANN201
    from framework.data.segmented import build_segmented_dataset

    return build_segmented_dataset(eval_sentences, tiny_model_dir, [csl_lexicon_file], workers=1, progress=False,
                                   max_seq_len=128)


class Oracle(torch.nn.Module):
    """Returns, at every labelled position, logits that put all mass on the label: a perfect model."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, input_ids, attention_mask, token_type_ids, labels):  # noqa: ANN001, ANN201
        target = labels[labels != IGNORE_INDEX]
        return type("Out", (), {"logits": torch.nn.functional.one_hot(target, self.vocab_size).float() * 20})()


def _collator(dataset, name: str = "wwm", seed: int = 0):  # noqa: ANN001, ANN202
    from framework.batching.collator import MaskingCollator
    from framework.masking.base import MaskingContext
    from framework.masking.registry import build_strategy

    strategy = build_strategy(name, {}, MaskingContext(dataset.vocab_info, dataset.entity_table())).for_evaluation()
    return MaskingCollator(strategy, dataset.vocab_info, seed=seed)


def test_an_oracle_scores_one_and_the_baseline_is_the_majority_rate(eval_dataset) -> None:  # noqa: ANN001
    from framework.evaluation.mlm import mlm_scores, unigram_logprobs

    counts = eval_dataset.token_counts()
    unigram = unigram_logprobs(counts)
    collator = _collator(eval_dataset)
    model, baseline = mlm_scores(Oracle(eval_dataset.vocab_info.vocab_size), eval_dataset, collator,
                                 torch.device("cpu"), 64, unigram)
    assert model["masked_accuracy"] == 1.0 and model["top5_accuracy"] == 1.0
    assert model["whole_word_accuracy"] == 1.0 and model["entity_accuracy"] == 1.0
    assert model["loss"] < 1e-4 and model["num_words"] > 100  # logits of 20 vs 0 over a 4k vocabulary
    # The baseline always predicts the most frequent token: its accuracy is that token's share of the targets.
    targets = []
    for first in range(0, len(eval_dataset), 64):
        batch = collator([eval_dataset[i] for i in range(first, min(first + 64, len(eval_dataset)))])
        targets.append(batch["labels"][batch["labels"] != IGNORE_INDEX])
    targets = torch.cat(targets)
    most_frequent = int(np.argmax(counts))
    assert baseline["masked_accuracy"] == pytest.approx(float((targets == most_frequent).double().mean()))
    assert baseline["num_predictions"] == model["num_predictions"] == len(targets)


def test_the_probe_masks_exactly_one_whole_entity_per_item(eval_dataset, csl_lexicon_file: Path) -> None:  # noqa: ANN001
    from framework.evaluation import cloze

    items = cloze.select_items(eval_dataset, seed=5)
    entities = [it for it in items if it.kind == cloze.ENTITY]
    words = [it for it in items if it.kind == cloze.WORD]
    assert len(entities) > 50 and len(words) > 100
    assert len({it.index for it in entities}) == len(entities)  # one entity item per sentence
    mask_id = eval_dataset.vocab_info.mask_token_id
    for it in entities + words:
        ex = eval_dataset[it.index]
        spans = ex.entity_spans if it.kind == cloze.ENTITY else ex.word_spans
        assert [it.start, it.end] in spans.tolist()  # a whole entity (word), never a piece of one
        masked = cloze.masked_item(ex, it, mask_id)
        changed = np.flatnonzero(masked.input_ids != ex.input_ids)
        assert (masked.input_ids[it.start:it.end] == mask_id).all()
        assert set(changed) <= set(range(it.start, it.end))  # nothing else masked
        assert (np.flatnonzero(masked.labels != IGNORE_INDEX) == np.arange(it.start, it.end)).all()
        if it.kind == cloze.WORD:
            assert it.end - it.start >= 2 and not ex.entity_token_mask()[it.start:it.end].any()
    # Same seed, same questions; another seed, other questions.
    assert cloze.select_items(eval_dataset, seed=5) == items
    assert cloze.select_items(eval_dataset, seed=6) != items
    # An oracle restores every entity; the in/out split follows the training lexicon.
    scores = cloze.score_items(Oracle(eval_dataset.vocab_info.vocab_size), eval_dataset, entities,
                               _collator(eval_dataset).pad, torch.device("cpu"))
    assert scores.exact_match.tolist() == [1.0] * len(entities)
    keys = cloze.entity_keys(eval_dataset.entity_table())
    flagged = cloze.select_items(eval_dataset, seed=5, train_entities=keys)
    assert all(it.in_train_lexicon for it in flagged if it.kind == cloze.ENTITY)


def test_clearly_above_baseline_uses_the_paired_standard_error() -> None:
    """A model 0.075 nats a token above the baseline on every item, items of very different difficulty: the
    unpaired SE (0.046, the items' spread) would call it noise, the paired one (about 0.02) does not."""
    from framework.evaluation import cloze
    from framework.evaluation.mlm import clearly_above_baseline

    rng = np.random.default_rng(0)
    baseline = rng.normal(-6.9, 1.4, 900)
    model = baseline + 0.075 + rng.normal(0, 0.6, 900)
    summary = lambda lp: {"word": {"mean_logprob": float(lp.mean()),  # noqa: E731
                                   "mean_logprob_se": float(lp.std(ddof=1) / np.sqrt(len(lp)))}}
    result = {"mlm": {"masked_accuracy": 0.15}, "mlm_baseline": {"masked_accuracy": 0.05},
              "cloze": summary(model), "cloze_baseline": summary(baseline)}
    assert not clearly_above_baseline(result)  # an old result: unpaired, too strict
    result["cloze_vs_baseline"] = {"word": cloze.paired_difference(model, baseline)}
    assert clearly_above_baseline(result)
    result["mlm"]["masked_accuracy"] = 0.055  # no better than the baseline at predicting tokens: never counts
    assert not clearly_above_baseline(result)


def test_paired_difference() -> None:
    from framework.evaluation.cloze import paired_difference

    a = np.array([1.0, 2.0, 3.0, 4.0])
    out = paired_difference(a, a - np.array([0.5, 0.7, 0.3, 0.5]))
    assert out["mean"] == pytest.approx(0.5)
    assert out["se"] == pytest.approx(np.std([0.5, 0.7, 0.3, 0.5], ddof=1) / 2)
    with pytest.raises(ValueError):
        paired_difference(a, a[:3])


def run_evaluate(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(EVALUATE), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_cli_json_is_identical_for_the_same_seed(tiny_model_dir: Path, eval_sentences: Path, csl_lexicon_file: Path,
                                                 tmp_path: Path) -> None:
    args = ["--model", str(tiny_model_dir), "--data", str(eval_sentences), "--lexicon", str(csl_lexicon_file),
            "--train-lexicon", str(csl_lexicon_file), "--cache-dir", str(tmp_path / "cache"), "--max-examples", "120",
            "--json"]
    first = run_evaluate(args + ["--save-items", str(tmp_path / "items.npz")])
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_evaluate(args)
    one, two = json.loads(first.stdout.splitlines()[-1]), json.loads(second.stdout.splitlines()[-1])
    one.pop("seconds"), two.pop("seconds")
    assert one == two
    assert one["sentences"] == 120 and one["masking"]["name"] == "wwm"
    assert "masked-LM metrics" in first.stdout and "entity-cloze probe" in first.stdout
    assert one["cloze"]["entity_in_lexicon"]["items"] == one["cloze"]["entity"]["items"] > 0
    assert one["cloze"]["entity_out_of_lexicon"]["items"] == 0
    items = np.load(tmp_path / "items.npz")
    assert len(items["mean_logprob"]) == one["cloze"]["entity"]["items"] + one["cloze"]["word"]["items"]
    other = json.loads(run_evaluate(args + ["--seed", "1"]).stdout.splitlines()[-1])
    assert other["mlm"]["num_predictions"] != one["mlm"]["num_predictions"] or other["mlm"] != one["mlm"]


def test_bad_input_is_one_line_and_exit_2(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = run_evaluate(["--model", str(tiny_model_dir), "--data", str(tmp_path / "missing.txt")])
    assert proc.returncode == 2 and "no such file" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_evaluate(["--model", str(tmp_path), "--data", str(tmp_path)])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_figures_go_to_the_runs_wandb_project_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from framework.evaluation.output import report_to_wandb

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "run_config.json").write_text(json.dumps({"report": {"project": "study-x", "tags": ["t"]},
                                                     "training": {"max_steps": 30}}), encoding="utf-8")
    (run / "wandb_run_id").write_text("abc123def456\n", encoding="utf-8")
    monkeypatch.setenv("WANDB_MODE", "offline")
    report_to_wandb(run / "model", "eval", {"mlm": {"loss": 2.5, "masked_accuracy": 0.25}, "note": "text"})
    record = json.loads((run / "evaluation" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert record["split"] == "eval" and record["step"] == 30
    assert record["mlm/loss"] == 2.5 and record["mlm/masked_accuracy"] == 0.25 and "note" not in record
    offline = list((run / "evaluation" / "wandb").glob("offline-run-*abc123def456"))
    assert offline, "the evaluation must continue the training run's W&B id"


def test_evaluation_questions_are_the_reference_masks(eval_dataset) -> None:  # noqa: ANN001
    """Evaluation masks come from ``mask()`` with ``example_rng``, not from a faster ``mask_batch``, so scores
    of models evaluated by different framework versions stay comparable."""
    from framework.batching.collator import MaskingCollator
    from framework.masking.base import MaskingContext, example_rng
    from framework.masking.registry import build_strategy

    strategy = build_strategy("wwm", {}, MaskingContext(eval_dataset.vocab_info)).for_evaluation()
    examples = [eval_dataset[i] for i in range(40)]
    got = MaskingCollator(strategy, eval_dataset.vocab_info, seed=3, reference_masks=True).mask(examples)
    want = [strategy.mask(ex, example_rng(3, 0, ex.index)) for ex in examples]
    assert all((g.input_ids == w.input_ids).all() and (g.labels == w.labels).all() for g, w in zip(got, want))
