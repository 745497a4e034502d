"""Classification metrics of fine-tuning: accuracy and macro-F1, from a confusion matrix.

The confusion matrix is the unit of exchange: each rank counts its shard of an evaluation set and the counts
are summed across ranks (:func:`framework.training.distributed.all_reduce_sum`), so the metrics of a sharded
evaluation are exactly those of one process seeing everything.

Macro-F1 averages the per-class F1 over the classes that occur in the gold labels or the predictions (as
scikit-learn does when it is given no label list). A class the run knows but that neither side contains
(a discipline absent from a small dev set, never predicted) has an undefined F1 and is left out rather than
counted as 0, so a dev set's score does not depend on how many unused classes the label list has.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> np.ndarray:
    """``int64 [num_labels, num_labels]``: row = gold label, column = prediction."""
    gold = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(predictions, dtype=np.int64)
    if gold.shape != pred.shape:
        raise ValueError(f"{len(gold)} labels but {len(pred)} predictions")
    if gold.size and (min(gold.min(), pred.min()) < 0 or max(gold.max(), pred.max()) >= num_labels):
        raise ValueError(f"a label or prediction is outside 0..{num_labels - 1}")
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (gold, pred), 1)
    return matrix


def accuracy_from_confusion(matrix: np.ndarray) -> float:
    """Share of correct predictions (``nan`` for an empty matrix)."""
    total = float(np.asarray(matrix).sum())
    return float(np.trace(matrix)) / total if total else float("nan")


def per_class_f1(matrix: np.ndarray) -> np.ndarray:
    """F1 of each class; ``nan`` where the class is neither a gold label nor a prediction."""
    matrix = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    denominator = support + predicted  # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (support + predicted)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, 2 * tp / np.where(denominator > 0, denominator, 1), np.nan)


def macro_f1_from_confusion(matrix: np.ndarray) -> float:
    """Mean per-class F1 over the classes that occur (see the module docstring); ``nan`` when none does."""
    f1 = per_class_f1(matrix)
    present = ~np.isnan(f1)
    return float(f1[present].mean()) if present.any() else float("nan")


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Share of ``predictions`` equal to ``labels``."""
    num = int(max([*labels, *predictions], default=0)) + 1
    return accuracy_from_confusion(confusion_matrix(labels, predictions, num))


def macro_f1(labels: Sequence[int], predictions: Sequence[int], num_labels: int | None = None) -> float:
    """Macro-averaged F1 of ``predictions`` against ``labels`` (classes as in the module docstring)."""
    num = num_labels if num_labels is not None else int(max([*labels, *predictions], default=0)) + 1
    return macro_f1_from_confusion(confusion_matrix(labels, predictions, num))


def classification_metrics(matrix: np.ndarray) -> dict[str, float]:
    """``{"accuracy", "macro_f1", "examples"}`` of a confusion matrix."""
    return {"accuracy": accuracy_from_confusion(matrix), "macro_f1": macro_f1_from_confusion(matrix),
            "examples": int(np.asarray(matrix).sum())}
