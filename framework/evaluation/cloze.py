"""The entity-cloze probe: mask one whole entity (or one whole ordinary word) per sentence and score it.

Masked-token accuracy mixes easy tokens with hard ones, and at small scale it barely moves. The probe asks a
sharper question of a model: given a sentence with every token of one keyword occurrence replaced by
``[MASK]`` (and nothing else masked), how well does it restore the keyword? Three scores per item:

* ``exact_match``: every token of the entity is the model's top-1 prediction;
* ``token_accuracy``: the share of the entity's tokens that are;
* ``mean_logprob``: the mean log-probability of the true tokens (nats a token), which still separates models
  when both accuracies sit at the floor.

Items are drawn once per sentence from ``(seed, sentence index)`` with the same generator the masking
strategies use (:func:`~framework.masking.base.example_rng`), so every model is scored on the same questions.
Entities are split into those in the *training* lexicon (masked as units during ``entity_wwm`` pretraining)
and those outside it; ordinary multi-token jieba words (overlapping no entity) form a control group, so a gain
on entities that costs ordinary words shows. :func:`paired_difference` compares two models item by item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from framework.data.example import IGNORE_INDEX, MaskedExample
from framework.masking.base import example_rng

ENTITY, WORD = "entity", "word"
GROUPS = ("entity", "entity_in_lexicon", "entity_out_of_lexicon", "word")
_EPOCH = 0  # items are fixed: one draw, never re-drawn


@dataclass(frozen=True)
class ClozeItem:
    """One question: sentence ``index`` of the dataset with tokens ``[start, end)`` masked.

    Attributes:
        index: the sentence's position in the segmented dataset.
        start, end: the masked token span (positions in the example, ``[CLS]`` at 0).
        kind: ``"entity"`` (a lexicon entity occurrence) or ``"word"`` (an ordinary multi-token word).
        in_train_lexicon: for entities, whether the entity is in the training lexicon.
    """

    index: int
    start: int
    end: int
    kind: str
    in_train_lexicon: bool = False


def entity_keys(table: dict[int, np.ndarray] | Any | None) -> set[tuple[int, ...]]:
    """The token-id tuples of a lexicon (an :class:`~framework.data.example.EntityTable` or ``{n: rows}``)."""
    if table is None:
        return set()
    by_length = getattr(table, "by_length", table)
    return {tuple(int(t) for t in row) for rows in by_length.values() for row in rows}


def select_items(dataset: Any, seed: int, train_entities: set[tuple[int, ...]] | None = None,
                 max_items: int | None = None) -> list[ClozeItem]:
    """At most one entity item and one word item per sentence, drawn from ``(seed, index)``.

    Args:
        dataset: a segmented dataset (``dataset[i]`` is a :class:`~framework.data.example.SegmentedExample`)
            whose entity spans come from the probe lexicon.
        seed: fixes every draw.
        train_entities: token-id tuples of the training lexicon (:func:`entity_keys`), for the in/out split.
        max_items: keep at most this many items of each kind (a seeded subset, in sentence order).
    """
    train_entities = train_entities or set()
    entities: list[ClozeItem] = []
    words: list[ClozeItem] = []
    for i in range(len(dataset)):
        ex = dataset[i]
        rng = example_rng(seed, _EPOCH, ex.index)
        covered = ex.entity_token_mask()
        if len(ex.entity_spans):
            start, end = (int(v) for v in ex.entity_spans[int(rng.integers(len(ex.entity_spans)))])
            key = tuple(int(t) for t in ex.input_ids[start:end])
            entities.append(ClozeItem(int(ex.index), start, end, ENTITY, key in train_entities))
        spans = [(int(s), int(e)) for s, e in ex.word_spans if e - s >= 2 and not covered[s:e].any()]
        if spans:
            start, end = spans[int(rng.integers(len(spans)))]
            words.append(ClozeItem(int(ex.index), start, end, WORD))
    return _cap(entities, max_items, seed) + _cap(words, max_items, seed + 1)


def _cap(items: list[ClozeItem], max_items: int | None, seed: int) -> list[ClozeItem]:
    if max_items is None or len(items) <= max_items:
        return items
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=max_items, replace=False))
    return [items[k] for k in keep]


@dataclass
class ClozeScores:
    """Per-item scores, aligned with the items they were computed for (numpy arrays of length ``n``)."""

    exact_match: np.ndarray
    token_accuracy: np.ndarray
    mean_logprob: np.ndarray
    num_tokens: np.ndarray


def masked_item(example: Any, item: ClozeItem, mask_token_id: int) -> MaskedExample:
    """The model input of one item: the span's tokens become ``[MASK]`` and are the only labels."""
    ids = np.asarray(example.input_ids, dtype=np.int64).copy()
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    labels[item.start:item.end] = ids[item.start:item.end]
    ids[item.start:item.end] = mask_token_id
    return MaskedExample(ids, labels)


@torch.no_grad()
def score_items(model: torch.nn.Module, dataset: Any, items: Sequence[ClozeItem], pad: Any,
                device: torch.device, batch_size: int = 64,
                unigram_logprobs: torch.Tensor | None = None) -> ClozeScores:
    """Score ``items`` with ``model`` (logits at labelled positions, ``[N, V]``) or with a unigram baseline.

    Args:
        model: a :class:`~framework.training.masked_lm.BertForMaskedLMAtLabels` in eval mode.
        dataset: the segmented dataset the items index.
        items: from :func:`select_items`.
        pad: a callable from masked examples to a batch of tensors (``MaskingCollator.pad``).
        device: where the model runs.
        batch_size: items per forward pass.
        unigram_logprobs: ``[V]`` log-probabilities; when given, the model is not run and every position is
            predicted from them (the most-frequent-token baseline).
    """
    mask_id = dataset.vocab_info.mask_token_id
    exact, accuracy, logprob, count = [], [], [], []
    for first in range(0, len(items), batch_size):
        chunk = items[first:first + batch_size]
        batch = pad([masked_item(dataset[it.index], it, mask_id) for it in chunk])
        labels = batch["labels"]
        selected = labels != IGNORE_INDEX
        if unigram_logprobs is None:
            inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
            log_probs = torch.log_softmax(model(**inputs).logits.float(), dim=-1).cpu()
        else:
            log_probs = unigram_logprobs[None, :].expand(int(selected.sum()), -1)
        target = labels[selected]
        correct = (log_probs.argmax(-1) == target).double()
        true_lp = log_probs.gather(1, target[:, None]).squeeze(1).double()
        # Positions come row by row, in order: item k owns the next (end - start) of them.
        sizes = torch.tensor([it.end - it.start for it in chunk])
        owner = torch.repeat_interleave(torch.arange(len(chunk)), sizes)
        n = torch.zeros(len(chunk), dtype=torch.float64).index_add_(0, owner, torch.ones_like(correct))
        right = torch.zeros_like(n).index_add_(0, owner, correct)
        lp = torch.zeros_like(n).index_add_(0, owner, true_lp)
        exact.append((right == n).numpy())
        accuracy.append((right / n).numpy())
        logprob.append((lp / n).numpy())
        count.append(n.numpy())
    join = (lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))
    return ClozeScores(join(exact, np.float64), join(accuracy, np.float64), join(logprob, np.float64),
                       join(count, np.int64))


def group_masks(items: Sequence[ClozeItem]) -> dict[str, np.ndarray]:
    """Boolean item masks of the reported groups (:data:`GROUPS`)."""
    kind = np.array([it.kind for it in items], dtype=object)
    in_lex = np.array([it.in_train_lexicon for it in items], dtype=bool)
    is_entity = kind == ENTITY
    return {"entity": is_entity, "entity_in_lexicon": is_entity & in_lex,
            "entity_out_of_lexicon": is_entity & ~in_lex, "word": kind == WORD}


def summarize(items: Sequence[ClozeItem], scores: ClozeScores) -> dict[str, dict[str, float]]:
    """Per group: item count, exact match, token accuracy, mean log-probability and its standard error."""
    out: dict[str, dict[str, float]] = {}
    for name, mask in group_masks(items).items():
        n = int(mask.sum())
        lp = scores.mean_logprob[mask]
        out[name] = {
            "items": n,
            "exact_match": float(scores.exact_match[mask].mean()) if n else math.nan,
            "token_accuracy": float(scores.token_accuracy[mask].mean()) if n else math.nan,
            "mean_logprob": float(lp.mean()) if n else math.nan,
            "mean_logprob_se": float(lp.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        }
    return out


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """``a - b`` over the same items: mean, paired standard error and the mean in standard errors."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape} and {b.shape} are not scores of the same items")
    d = a - b
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": mean, "se": se, "z": mean / se if se and math.isfinite(se) and se > 0 else math.nan, "items": n}


def items_to_arrays(items: Iterable[ClozeItem]) -> dict[str, np.ndarray]:
    """Items as columns (for ``np.savez`` beside the scores, so a study can pair models later)."""
    items = list(items)
    return {
        "index": np.array([it.index for it in items], dtype=np.int64),
        "start": np.array([it.start for it in items], dtype=np.int64),
        "end": np.array([it.end for it in items], dtype=np.int64),
        "is_entity": np.array([it.kind == ENTITY for it in items], dtype=bool),
        "in_train_lexicon": np.array([it.in_train_lexicon for it in items], dtype=bool),
    }
