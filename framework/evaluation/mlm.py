"""Held-out masked-LM metrics of a model folder, on the same questions for every model.

:func:`evaluate` runs the pieces training runs, not copies of them: the sentences go through the segmented
cache (:func:`~framework.data.segmented.build_segmented_dataset`), are masked by a registered strategy
(``strategy.for_evaluation()``, default ``wwm``, its reference masks) through :class:`~framework.batching.collator.MaskingCollator`
and scored by :class:`~framework.training.metrics.MLMMetrics`. Masks follow from ``(seed, epoch 0, sentence
index)``, so two models with the same tokenizer and seed answer identical questions, and their difference is
the models'. The entity-cloze probe (:mod:`framework.evaluation.cloze`) runs on the same sentences.

Every figure comes with a **unigram baseline**: a "model" that predicts every masked position from the token
frequencies of a corpus (the pretraining corpus when ``baseline_corpus`` is given, else the evaluation text),
scored by the same code. A model that does not clearly beat it has learnt frequencies, not context.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from framework.data.example import IGNORE_INDEX
from framework.evaluation import cloze

logger = logging.getLogger(__name__)

DEFAULT_MASKING = "wwm"  # neutral between strategies: every word equally likely, entities no more than others


class EvaluateError(ValueError):
    """An evaluation cannot start; the message names the file or option and the fix."""


@dataclass
class EvaluateConfig:
    """What :func:`evaluate` scores and how.

    Attributes:
        model: a transformers folder (``OUTPUT/model``) or hub name with an MLM head and its tokenizer.
        data: a one-sentence-a-line file, or a ``launch/preprocess.py`` folder (its ``valid.txt`` is used).
        lexicon: entity lexicon of the evaluation text (``keywords.txt``): the probe's entities; default the
            data folder's ``keywords.txt`` where there is one.
        train_lexicon: the lexicon the model was pretrained with, to split probe entities into those seen as
            units in pretraining and those not.
        baseline_corpus: one-sentence-a-line file whose token frequencies make the unigram baseline
            (the pretraining ``train.txt``); default the evaluation text itself.
        masking, masking_args: the strategy that masks the MLM questions (``for_evaluation()`` of it).
        seed: fixes masks and probe items.
        seq_len: example length in tokens, specials included.
        batch_size: sentences per forward pass.
        max_examples: evaluate only the first N sentences.
        max_cloze_items: at most this many probe items of each kind (entities, words).
        cache_dir: segmented caches (default: beside the data).
        device: ``cuda``, ``cpu``; default ``cuda`` where available.
    """

    model: str
    data: str
    lexicon: str | None = None
    train_lexicon: str | None = None
    baseline_corpus: str | None = None
    masking: str = DEFAULT_MASKING
    masking_args: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    seq_len: int = 128
    batch_size: int = 64
    max_examples: int | None = None
    max_cloze_items: int | None = 4000
    cache_dir: str | None = None
    device: str | None = None

    def sentences_file(self) -> Path:
        """The sentence file ``data`` names."""
        path = Path(self.data)
        return path / "valid.txt" if path.is_dir() else path

    def lexicon_file(self) -> Path | None:
        """The probe lexicon: ``lexicon``, or ``keywords.txt`` beside the sentences."""
        if self.lexicon:
            return Path(self.lexicon)
        beside = self.sentences_file().parent / "keywords.txt"
        return beside if beside.is_file() else None

    def validate(self) -> None:
        """Raise :class:`EvaluateError` for the first setting that cannot work (before any model is loaded)."""
        sentences = self.sentences_file()
        if Path(self.data).is_dir() and not sentences.is_file():
            raise EvaluateError(f"--data {self.data}: the folder has no valid.txt; give a sentence file or the "
                                "output folder of launch/preprocess.py")
        if not sentences.is_file():
            raise EvaluateError(f"--data {self.data}: no such file; give a one-sentence-a-line file (valid.txt)")
        for flag, value in (("--lexicon", self.lexicon), ("--train-lexicon", self.train_lexicon),
                            ("--baseline-corpus", self.baseline_corpus)):
            if value and not Path(value).is_file():
                raise EvaluateError(f"{flag} {value}: no such file")
        model = Path(self.model)
        if (model.is_dir() or self.model.startswith(("/", "./", "../"))) and not (model / "config.json").is_file():
            raise EvaluateError(f"--model {self.model}: no config.json there; give an exported model folder "
                                "(OUTPUT/model, or launch/export.py's output)")
        for name in ("seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise EvaluateError(f"--{name.replace('_', '-')} must be positive")
        if not 8 <= self.seq_len <= 512:
            raise EvaluateError(f"--seq-len {self.seq_len} must be between 8 and 512")
        if self.max_examples is not None and self.max_examples < 1:
            raise EvaluateError("--max-examples must be positive")


def _device(name: str | None) -> torch.device:
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class _First:
    """The first ``n`` examples of a dataset."""

    def __init__(self, dataset: Any, n: int | None) -> None:
        self.dataset, self.n = dataset, len(dataset) if n is None else min(n, len(dataset))
        self.vocab_info = dataset.vocab_info

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]


def whole_word_ids(examples: list[Any], labels: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``int64 [B, T]``: an id per word whose every token is labelled (unique in the batch), ``-1`` elsewhere.

    Needs the masked rows to keep their sentence's positions: a strategy that deletes tokens even in
    evaluation cannot be scored by whole words.
    """
    ids = torch.full(labels.shape, -1, dtype=torch.int64)
    labelled = (labels != IGNORE_INDEX).numpy()
    next_id = 0
    for row, ex in enumerate(examples):
        if int(lengths[row]) != len(ex):
            raise EvaluateError("the masking strategy changes sentence lengths even in evaluation "
                                "(for_evaluation() deletes tokens); whole-word scores need aligned positions")
        for start, end in ex.word_spans:
            if labelled[row, start:end].all():
                ids[row, start:end] = next_id
                next_id += 1
    return ids


def unigram_logprobs(counts: np.ndarray) -> torch.Tensor:
    """``[V]`` add-one-smoothed unigram log-probabilities (finite for every id, ``[UNK]`` in the text included)."""
    counts = counts.astype(np.float64) + 1.0
    return torch.from_numpy(np.log(counts / counts.sum())).float()


@torch.no_grad()
def mlm_scores(model: torch.nn.Module, dataset: Any, collator: Any, device: torch.device, batch_size: int,
               unigram: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """MLM metrics of ``model`` and of the unigram baseline over ``dataset``, masked by ``collator``.

    ``model`` returns logits at labelled positions (``[N, V]``, as
    :class:`~framework.training.masked_lm.BertForMaskedLMAtLabels` does when given ``labels``).
    """
    from framework.training.metrics import MLMMetrics

    metrics, baseline = MLMMetrics(), MLMMetrics()
    for first in range(0, len(dataset), batch_size):
        examples = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        batch = collator(examples)
        batch["word_ids"] = whole_word_ids(examples, batch["labels"], batch["attention_mask"].sum(1))
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
        metrics.update_batch(model(**inputs).logits, batch)
        n = int((batch["labels"] != IGNORE_INDEX).sum())
        baseline.update_batch(unigram[None, :].expand(n, -1), batch)
    return metrics.compute(), baseline.compute()


def _segment(path: Path, tokenizer_path: str, lexicons: list[Path], cfg: EvaluateConfig) -> Any:
    from framework.data.segmented import build_segmented_dataset

    return build_segmented_dataset(path, tokenizer_path, lexicons, cache_dir=cfg.cache_dir, max_seq_len=cfg.seq_len,
                                   progress=False)


def _train_entities(cfg: EvaluateConfig, tokenizer: Any) -> set[tuple[int, ...]]:
    if not cfg.train_lexicon:
        return set()
    from framework.data.lexicon import load_lexicon
    from framework.data.segmenter import entity_token_table

    return cloze.entity_keys(entity_token_table(tokenizer, sorted(load_lexicon([cfg.train_lexicon]))))


def evaluate(cfg: EvaluateConfig, items_out: str | Path | None = None) -> dict[str, Any]:
    """Score ``cfg.model`` on ``cfg.data``: MLM metrics, the entity-cloze probe, and both for the baseline.

    Args:
        cfg: validated by this call.
        items_out: optional ``.npz`` path for the probe's per-item scores (to pair models later).

    Returns:
        ``{"model", "data", "masking", "seed", "sentences", "baseline", "mlm", "mlm_baseline", "cloze",
        "cloze_baseline", "seconds"}``; ``cloze`` maps each group of :data:`cloze.GROUPS` to its summary.
    """
    cfg.validate()
    from framework.batching.collator import MaskingCollator
    from framework.masking.base import MaskingContext
    from framework.masking.registry import build_strategy
    from framework.training.masked_lm import BertForMaskedLMAtLabels
    from framework.training.model import load_tokenizer

    started = time.perf_counter()
    device = _device(cfg.device)
    tokenizer = load_tokenizer(cfg.model)
    lexicon = cfg.lexicon_file()
    dataset = _First(_segment(cfg.sentences_file(), cfg.model, [lexicon] if lexicon else [], cfg), cfg.max_examples)
    if cfg.baseline_corpus:
        counts = _segment(Path(cfg.baseline_corpus), cfg.model, [], cfg).token_counts()
        baseline_source = str(cfg.baseline_corpus)
    else:
        counts = dataset.dataset.token_counts()
        baseline_source = f"{cfg.sentences_file()} (the evaluation text itself)"
    unigram = unigram_logprobs(counts)

    strategy = build_strategy(cfg.masking, cfg.masking_args,
                              MaskingContext(dataset.vocab_info, dataset.dataset.entity_table())).for_evaluation()
    # Reference masks: the questions stay the same when a later version makes mask_batch faster.
    collator = MaskingCollator(strategy, dataset.vocab_info, seed=cfg.seed, reference_masks=True)
    collator.set_epoch(0)
    import pickle

    from framework.training.safe_load import describe_unpickling_error

    try:
        model = BertForMaskedLMAtLabels.from_pretrained(cfg.model, weights_only=True)  # a pickled .bin runs nothing
    except pickle.UnpicklingError as exc:
        raise EvaluateError(f"--model {cfg.model}: {describe_unpickling_error(cfg.model, exc)}") from None
    except (OSError, ValueError) as exc:
        raise EvaluateError(f"--model {cfg.model}: cannot load a BERT masked-LM ({exc})") from exc
    if model.get_input_embeddings().num_embeddings < dataset.vocab_info.vocab_size:
        raise EvaluateError(f"--model {cfg.model}: {model.get_input_embeddings().num_embeddings} embeddings for a "
                            f"{dataset.vocab_info.vocab_size}-token tokenizer; evaluate with the model's own tokenizer")
    model.to(device).eval()

    mlm, mlm_baseline = mlm_scores(model, dataset, collator, device, cfg.batch_size, unigram)
    items = cloze.select_items(dataset, cfg.seed, _train_entities(cfg, tokenizer), cfg.max_cloze_items)
    scores = cloze.score_items(model, dataset, items, collator.pad, device, cfg.batch_size)
    base_scores = cloze.score_items(model, dataset, items, collator.pad, device, cfg.batch_size, unigram)
    if items_out is not None:
        Path(items_out).parent.mkdir(parents=True, exist_ok=True)
        np.savez(items_out, **cloze.items_to_arrays(items), exact_match=scores.exact_match,
                 token_accuracy=scores.token_accuracy, mean_logprob=scores.mean_logprob, num_tokens=scores.num_tokens,
                 baseline_mean_logprob=base_scores.mean_logprob)
    result = {
        "model": cfg.model,
        "data": str(cfg.sentences_file()),
        "lexicon": str(lexicon) if lexicon else None,
        "train_lexicon": cfg.train_lexicon,
        "masking": strategy.describe(),
        "seed": cfg.seed,
        "sentences": len(dataset),
        "baseline": f"unigram of {baseline_source}",
        "mlm": mlm,
        "mlm_baseline": mlm_baseline,
        "cloze": cloze.summarize(items, scores),
        "cloze_baseline": cloze.summarize(items, base_scores),
        # Model minus baseline on the same items: items differ far more in difficulty than the two scorers do, so
        # the paired standard error is the one that says whether the model beats the baseline.
        "cloze_vs_baseline": {group: cloze.paired_difference(scores.mean_logprob[mask], base_scores.mean_logprob[mask])
                              for group, mask in cloze.group_masks(items).items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    return result


MLM_COLUMNS = ("loss", "perplexity", "masked_accuracy", "top5_accuracy", "whole_word_accuracy", "entity_accuracy")
CLOZE_COLUMNS = ("items", "exact_match", "token_accuracy", "mean_logprob", "mean_logprob_se")


def result_tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The readable tables of an :func:`evaluate` result: MLM metrics and the probe, model beside baseline."""
    mlm_rows = [{"": who, **{c: result[key][c] for c in MLM_COLUMNS}}
                for who, key in (("model", "mlm"), ("unigram baseline", "mlm_baseline"))]
    cloze_rows = []
    for group in cloze.GROUPS:
        for who, key in (("model", "cloze"), ("baseline", "cloze_baseline")):
            cloze_rows.append({"group": group, "": who, **{c: result[key][group][c] for c in CLOZE_COLUMNS}})
    n = result["mlm"]["num_predictions"]
    return [
        (f"masked-LM metrics on {result['sentences']} sentences of {result['data']} ({int(n)} predictions, "
         f"masking {result['masking']['name']}, seed {result['seed']}):", mlm_rows),
        ("entity-cloze probe (one whole entity or word masked per item; mean_logprob in nats a token):", cloze_rows),
    ]


def clearly_above_baseline(result: dict[str, Any], margin_se: float = 3.0) -> bool:
    """Whether the model's probe log-probability on ordinary words beats the baseline's by ``margin_se`` SEs.

    The standard error is the paired one (model minus baseline over the same items, ``cloze_vs_baseline``);
    results written before that field existed fall back to the model's own, unpaired standard error, which is
    about twice as large and so stricter. The MLM accuracy is compared too: a model that predicts the most
    frequent token everywhere equals the baseline's accuracy, so a comparison between such models says nothing.
    """
    model, base = result["mlm"], result["mlm_baseline"]
    if not (math.isfinite(model["masked_accuracy"]) and model["masked_accuracy"] > base["masked_accuracy"] + 0.01):
        return False
    paired = result.get("cloze_vs_baseline", {}).get("word")
    if paired is not None:
        return bool(math.isfinite(paired["se"]) and paired["mean"] > margin_se * paired["se"])
    word, word_base = result["cloze"]["word"], result["cloze_baseline"]["word"]
    se = word["mean_logprob_se"]
    return bool(math.isfinite(se) and word["mean_logprob"] - word_base["mean_logprob"] > margin_se * se)
