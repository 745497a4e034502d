"""Masked-language-model evaluation metrics, accumulated token-weighted over batches and ranks.

:class:`MLMMetrics` keeps running *sums* (cross-entropy, correct top-1 and top-5 predictions, number of
predictions, the same for entity tokens, and correct and scored whole words) rather than per-batch means, so that batches with different numbers of masked tokens
and ranks with different shards combine exactly: the result equals the metric over all predictions at once.

``update`` accepts either full logits ``[B, L, V]`` with labels ``[B, L]`` (``IGNORE_INDEX`` where nothing is
predicted), or logits already gathered at the labelled positions ``[N, V]`` with labels ``[N]``, so an MLM
head that only runs at labelled positions can feed it without materialising ``[B, L, V]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from framework.data.example import IGNORE_INDEX

# Order of the running sums in the tensor that is all-reduced across ranks.
_LOSS_SUM, _CORRECT, _COUNT, _ENTITY_CORRECT, _ENTITY_COUNT, _TOP5, _WORD_CORRECT, _WORD_COUNT = range(8)
_NUM_SUMS = 8
TOP_K = 5


class MLMMetrics:
    """Accumulates MLM loss, perplexity, top-1/top-5 masked-token accuracy, entity-token and whole-word accuracy.

    Usage::

        metrics = MLMMetrics()
        for batch in loader:
            metrics.update(model(**batch).logits, batch["labels"], batch.get("entity_label_mask"))
        metrics.reduce_across_ranks()   # no-op without torch.distributed
        results = metrics.compute()

    Accuracy and perplexity are undefined without predictions; :meth:`compute` then reports ``nan``
    (``entity_accuracy`` likewise when no prediction lies inside an entity, ``whole_word_accuracy`` when no
    ``word_ids`` were given).
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX) -> None:
        self.ignore_index = ignore_index
        self._sums = torch.zeros(_NUM_SUMS, dtype=torch.float64)
        self._reduced = False

    def reset(self) -> None:
        """Forget everything accumulated so far (for example before the next evaluation)."""
        self._sums = torch.zeros(_NUM_SUMS, dtype=torch.float64, device=self._sums.device)
        self._reduced = False

    @torch.no_grad()
    def update(
        self, logits: torch.Tensor, labels: torch.Tensor, entity_label_mask: torch.Tensor | None = None,
        word_ids: torch.Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            logits: ``[B, L, V]`` for every position, or ``[N, V]`` already gathered at labelled positions.
            labels: ``[B, L]`` or ``[N]``, matching ``logits`` without the vocabulary axis; ``ignore_index``
                marks positions that are not predicted (allowed in both layouts).
            entity_label_mask: optional bool tensor shaped like ``labels``, True where a predicted position
                lies inside an entity occurrence.
            word_ids: optional integer tensor shaped like ``labels``: at the predicted positions of a word whose
                every token is predicted, an id that is the same for the word's tokens and unique within this
                call; ``-1`` elsewhere. A word counts as right when all its tokens are (whole-word accuracy).
        """
        if self._reduced:
            raise RuntimeError("MLMMetrics.update after reduce_across_ranks(); call reset() to start a new pass")
        if logits.dim() < 2 or logits.shape[:-1] != labels.shape:
            raise ValueError(
                f"MLMMetrics.update: logits {tuple(logits.shape)} must be labels {tuple(labels.shape)} plus a "
                "vocabulary axis ([B, L, V] with [B, L], or [N, V] with [N])"
            )
        for name, extra in (("entity_label_mask", entity_label_mask), ("word_ids", word_ids)):
            if extra is not None and extra.shape != labels.shape:
                raise ValueError(f"MLMMetrics.update: {name} {tuple(extra.shape)} must match labels {tuple(labels.shape)}")
        flat_labels = labels.reshape(-1)
        selected = flat_labels != self.ignore_index
        target = flat_labels[selected]
        # Gather before the softmax: only labelled positions cost vocabulary-sized work.
        picked = logits.reshape(-1, logits.shape[-1])[selected].float()
        if self._sums.device != picked.device:
            self._sums = self._sums.to(picked.device)

        loss_sum = F.cross_entropy(picked, target, reduction="sum") if target.numel() else picked.new_zeros(())
        correct = picked.argmax(dim=-1) == target
        count = torch.tensor(float(target.numel()), dtype=torch.float64, device=picked.device)
        sums = [loss_sum.double(), correct.sum().double(), count]
        if entity_label_mask is not None:
            in_entity = entity_label_mask.reshape(-1).to(picked.device)[selected].bool()
            sums += [(correct & in_entity).sum().double(), in_entity.sum().double()]
        else:
            sums += [self._sums.new_zeros(()), self._sums.new_zeros(())]
        k = min(TOP_K, picked.shape[-1])
        in_top = (picked.topk(k, dim=-1).indices == target[:, None]).any(dim=-1) if target.numel() else correct
        sums.append(in_top.sum().double())
        sums += _whole_words(word_ids, selected, correct, self._sums)
        self._sums += torch.stack(sums)

    def update_batch(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Add a collated batch whose model returned logits only at labelled positions (``[N, V]``).

        ``batch`` is what the collator made (``labels`` ``[B, T]``, optionally ``entity_label_mask`` and
        ``word_ids``); the labelled positions are taken in row-major order, the order of the logits.
        """
        labels = batch["labels"].to(logits.device)
        selected = labels != self.ignore_index
        extras = {}
        for name in ("entity_label_mask", "word_ids"):
            if batch.get(name) is not None:
                extras[name] = batch[name].to(logits.device)[selected]
        self.update(logits, labels[selected], **extras)

    def reduce_across_ranks(self, group: "torch.distributed.ProcessGroup | None" = None) -> None:
        """Sum the running totals over all ranks (in place); a no-op when torch.distributed is not in use.

        Every rank of ``group`` must call it (it is a collective). Call it once per evaluation pass: a second
        call would count every rank's batches again, so it raises instead.
        """
        if self._reduced:
            raise RuntimeError("MLMMetrics.reduce_across_ranks() was already called for this pass; call reset()")
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sums = self._sums
            if torch.distributed.get_backend(group) == "nccl" and sums.device.type != "cuda":
                # NCCL only moves CUDA tensors; a rank that saw no batch still holds its totals on the CPU.
                sums = sums.to(torch.device("cuda", torch.cuda.current_device()))
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=group)
            self._sums = sums
        self._reduced = True

    def compute(self) -> dict[str, float]:
        """The metrics over everything accumulated: loss, perplexity, accuracies and the prediction count."""
        loss_sum, correct, count, entity_correct, entity_count, top5, word_correct, word_count = self._sums.tolist()
        loss = loss_sum / count if count else math.nan
        return {
            "loss": loss,
            "perplexity": _perplexity(loss),
            "masked_accuracy": correct / count if count else math.nan,
            "top5_accuracy": top5 / count if count else math.nan,
            "entity_accuracy": entity_correct / entity_count if entity_count else math.nan,
            "whole_word_accuracy": word_correct / word_count if word_count else math.nan,
            "num_predictions": count,
            "num_entity_predictions": entity_count,
            "num_words": word_count,
        }


def _whole_words(word_ids: torch.Tensor | None, selected: torch.Tensor, correct: torch.Tensor,
                 like: torch.Tensor) -> list[torch.Tensor]:
    """``[words all right, words scored]`` of one update (zeros without ``word_ids``)."""
    if word_ids is None:
        return [like.new_zeros(()), like.new_zeros(())]
    ids = word_ids.reshape(-1).to(correct.device)[selected].long()
    in_word = ids >= 0
    if not bool(in_word.any()):
        return [like.new_zeros(()), like.new_zeros(())]
    ids, wrong = ids[in_word], (~correct[in_word]).double()
    # Segmented sum of wrong tokens per word id: a word is right when none of its tokens is wrong.
    wrong_per_word = torch.zeros(int(ids.max()) + 1, dtype=torch.float64, device=ids.device).index_add_(0, ids, wrong)
    present = torch.zeros_like(wrong_per_word).index_add_(0, ids, torch.ones_like(wrong)) > 0
    return [((wrong_per_word == 0) & present).sum().double().to(like.device),
            present.sum().double().to(like.device)]


def _perplexity(loss: float) -> float:
    """``exp(loss)``, but ``inf`` instead of an OverflowError for a diverged model (and ``nan`` stays ``nan``)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf
