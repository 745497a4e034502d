"""Choosing masking units within a token budget, and BERT's 80/10/10 rule applied per unit.

Every built-in strategy works the same way; only *what a unit is* differs (a token, a jieba word, an entity,
a run of words):

1. **Budget.** ``budget = stochastic_round(mask_prob * n)`` tokens for an example of ``n`` non-special
   tokens. Plain rounding (BERT's and HuggingFace's former ``DataCollatorForWholeWordMask``'s ``max(1, round(n * p))``)
   is biased on short sentences:
   at ``p = 0.15`` a 10-token sentence always gets 2 tokens (20%) and a 13-token one 2 (15.4%). Rounding up
   with probability equal to the fractional part makes the *expected* budget exactly ``p * n`` for every
   length, so the realised corpus ratio hits the target.
2. **Units in random order until the budget is spent** (:func:`take_within_budget`). Units that fit are
   taken. At the first unit that would overshoot, with ``r`` tokens of budget left, there are two outcomes:
   take it (and stop), or skip it and fill greedily with later units that still fit (BERT-wwm's rule),
   reaching ``budget - r + f`` for some ``f <= r``. The unit is taken with probability
   ``q = (r - f) / (length - f)``, which makes the *expected* number of chosen tokens exactly the budget.
   Always skipping (BERT-wwm, HuggingFace's former WWM collator) undershoots systematically when units are long (SpanBERT spans
   average ~4 words, entities ~3 tokens); always stopping wastes examples. Units are never cut. On CSL
   sentences of at most 12 tokens, ``round`` gives 17.5-17.8% and always-skip 11.5-13% for the whole-word
   strategies; these two rules give 14.6-15.0% (``tests/test_masking_strategies.py`` holds them to 1 point).
3. **One action per unit** (:func:`draw_actions`): ``[MASK]`` with ``mask_token_prob``, random tokens with
   ``random_token_prob``, else unchanged, so all tokens of a whole word share one treatment. Every token of a
   chosen unit is predicted (labelled with its original id).

Units are token spans ``[start, end)``; a unit made of several spans (a run of words across a special token)
carries one unit id per span. All work is NumPy over span arrays: no Python loop per token (the few loops
per unit stop as soon as the budget is spent).

The functions here are the reference, one example at a time with a NumPy generator (:meth:`mask`). Training
goes through :meth:`UnitMaskingStrategy.mask_batch`, which applies the same rules to a whole batch at once with
counter-based randomness (:mod:`framework.masking.batch`) for every strategy that describes its units to it
(:meth:`UnitMaskingStrategy.batch_units`).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np

from framework.data.example import IGNORE_INDEX, MaskedExample, SegmentedExample
from framework.masking.base import MaskingContext, MaskingOptions, MaskingStrategy
from framework.masking.batch import (
    STREAM_EXAMPLE,
    STREAM_UNIT,
    BatchApplier,
    FlatBatch,
    counter,
    draw_actions_from,
    draw_bits,
    low_uniform,
    sort_order,
    take_within_budget_batch,
    token_budgets,
)

MASK, RANDOM, KEEP = 0, 1, 2
"""Per-unit actions of the 80/10/10 rule."""


def stochastic_round(value: float, rng: np.random.Generator) -> int:
    """``floor(value)`` plus one with probability ``value - floor(value)``: unbiased integer rounding."""
    base = int(np.floor(value))
    return base + int(rng.random() < value - base)


def token_budget(num_tokens: int, options: MaskingOptions, rng: np.random.Generator) -> int:
    """How many tokens of an ``num_tokens``-token example to choose (expected value ``mask_prob * num_tokens``)."""
    budget = stochastic_round(options.mask_prob * num_tokens, rng)
    if options.max_predictions is not None:
        budget = min(budget, options.max_predictions)
    return min(budget, num_tokens)


def take_within_budget(lengths: np.ndarray, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Which units (already in random order) to take so that the expected total equals ``budget``.

    Returns the positions in ``lengths`` of the taken units, ascending. See the module docstring for the
    rule; one random number is drawn exactly when some unit would overshoot.
    """
    if budget <= 0 or len(lengths) == 0:
        return np.zeros(0, dtype=np.int64)
    total = np.cumsum(lengths)
    fit = int(np.searchsorted(total, budget, side="right"))  # leading units with running total <= budget
    remaining = budget - (int(total[fit - 1]) if fit else 0)
    if fit == len(lengths) or remaining == 0:
        return np.arange(fit, dtype=np.int64)
    fill, left = [], remaining
    for j in range(fit + 1, len(lengths)):  # greedy fill if the overshooting unit is skipped; stops when full
        if lengths[j] <= left:
            fill.append(j)
            left -= int(lengths[j])
            if left == 0:
                break
    if rng.random() < overshoot_probability(remaining, remaining - left, int(lengths[fit])):
        return np.arange(fit + 1, dtype=np.int64)
    return np.concatenate([np.arange(fit, dtype=np.int64), np.asarray(fill, dtype=np.int64)])


def overshoot_probability(remaining: int, fill: int, length: int) -> float:
    """Probability of taking a unit of ``length > remaining`` tokens so the expected total hits the budget.

    Taking it spends ``length``; skipping it spends ``fill`` (what later units that fit add). Solving
    ``q * length + (1 - q) * fill = remaining`` gives ``q = (remaining - fill) / (length - fill)``.
    """
    return (remaining - fill) / (length - fill)


def span_lengths(spans: np.ndarray) -> np.ndarray:
    """Token count of each ``[start, end)`` span."""
    return (spans[:, 1] - spans[:, 0]).astype(np.int64)


def span_positions(spans: np.ndarray) -> np.ndarray:
    """All token positions covered by ``spans``, span by span, as one ``int64`` array (no Python loop)."""
    lengths = span_lengths(spans)
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.repeat(spans[:, 0].astype(np.int64), lengths)
    offsets = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return starts + offsets


def coverage_mask(spans: np.ndarray, length: int) -> np.ndarray:
    """``bool [length]``: True at positions inside any of ``spans`` (spans may overlap)."""
    delta = np.zeros(length + 1, dtype=np.int64)
    if len(spans):
        np.add.at(delta, spans[:, 0], 1)
        np.add.at(delta, spans[:, 1], -1)
    return np.cumsum(delta[:-1]) > 0


def draw_actions(num_units: int, mask_token_prob: float, random_token_prob: float,
                 rng: np.random.Generator) -> np.ndarray:
    """One 80/10/10 action per unit: ``MASK``, ``RANDOM`` or ``KEEP`` (``int8``)."""
    u = rng.random(num_units)
    actions = np.full(num_units, KEEP, dtype=np.int8)
    actions[u < mask_token_prob + random_token_prob] = RANDOM
    actions[u < mask_token_prob] = MASK
    return actions


def choose_word_runs(
    word_spans: np.ndarray, budget: int, length_probs: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Runs of consecutive whole words (SpanBERT spans, MacBERT n-grams) totalling about ``budget`` tokens.

    Each candidate has a length ``n`` in words drawn from ``length_probs`` (``length_probs[k]`` is the
    probability of ``k + 1`` words) and covers a uniformly drawn anchor word at a uniformly drawn offset,
    shifted inside the example where it would hang over an end (SpanBERT's anchor sampling, without its
    right-only extension). Shifting rather than clipping keeps run lengths intact: clipped runs are short,
    the budget rule favours short units, and the example's ends would be masked up to 1.6x as often (measured
    on CSL). A candidate whose first word is already chosen is skipped, one that reaches a chosen word is cut
    there. The budget rule is :func:`take_within_budget`'s. Returns the chosen words' spans in text order and
    the run each belongs to.
    """
    num_words = len(word_spans)
    if budget <= 0 or num_words == 0:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Enough candidates that running out before the budget is spent is practically impossible.
    num_candidates = 2 * num_words + 8
    run_words = rng.choice(len(length_probs), size=num_candidates, p=length_probs) + 1
    run_words = np.minimum(run_words, num_words)
    anchors = rng.integers(0, num_words, size=num_candidates)
    starts = np.clip(anchors - rng.integers(0, run_words), 0, num_words - run_words)
    ends = starts + run_words
    token_end = np.concatenate([[0], np.cumsum(span_lengths(word_spans))])
    covered = np.zeros(num_words, dtype=bool)
    runs: list[tuple[int, int]] = []
    fill: list[tuple[int, int]] = []
    overshooting: tuple[int, int, int] | None = None  # (start, end, tokens) of the first run that overshoots
    left = budget
    # One iteration per candidate run, stopping once the budget is spent: a few per sentence, not per token.
    for start, end in zip(starts.tolist(), ends.tolist()):
        if covered[start]:
            continue
        blocked = np.flatnonzero(covered[start + 1:end])  # the run's later words that are taken
        if len(blocked):
            end = start + 1 + int(blocked[0])
        size = int(token_end[end] - token_end[start])
        if size <= left:
            (runs if overshooting is None else fill).append((start, end))
            covered[start:end] = True
            left -= size
        elif overshooting is None:
            overshooting = (start, end, size)
            remaining = left
        if left == 0:
            break
    if overshooting is not None:
        if rng.random() < overshoot_probability(remaining, remaining - left, overshooting[2]):
            runs.append(overshooting[:2])
        else:
            runs.extend(fill)
    runs.sort()
    words = np.concatenate([np.arange(a, b) for a, b in runs]) if runs else np.zeros(0, dtype=np.int64)
    unit_of_span = np.repeat(np.arange(len(runs)), [b - a for a, b in runs]) if runs else np.zeros(0, dtype=np.int64)
    return word_spans[words].astype(np.int64), unit_of_span.astype(np.int64)


class UnitMasker:
    """Applies chosen units and their actions to an example's tokens; holds what that needs from the vocab."""

    def __init__(self, context: MaskingContext) -> None:
        self.mask_token_id = int(context.vocab.mask_token_id)
        self.pool = context.vocab.replacement_pool().astype(np.int64)
        if len(self.pool) == 0:
            raise ValueError("the vocabulary has no non-special token to draw random replacements from")

    def random_tokens(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """``count`` random non-special token ids."""
        return self.pool[rng.integers(0, len(self.pool), count)]

    def apply(
        self,
        example: SegmentedExample,
        spans: np.ndarray,
        actions: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """New ``input_ids`` and ``labels`` (``int64``) with ``actions[i]`` applied to every token of ``spans[i]``."""
        input_ids = example.input_ids.astype(np.int64)  # a copy: examples may be memory-mapped
        labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
        lengths = span_lengths(spans)
        positions = span_positions(spans)
        token_action = np.repeat(actions, lengths)
        labels[positions] = input_ids[positions]
        input_ids[positions[token_action == MASK]] = self.mask_token_id
        random_positions = positions[token_action == RANDOM]
        if len(random_positions):
            input_ids[random_positions] = self.random_tokens(len(random_positions), rng)
        return input_ids, labels


def finish(example: SegmentedExample, input_ids: np.ndarray, labels: np.ndarray,
           keep: np.ndarray | None = None) -> MaskedExample:
    """Wrap the result, computing ``entity_label_mask`` and dropping positions where ``keep`` is False."""
    entity_label_mask = coverage_mask(example.entity_spans, len(example)) & (labels != IGNORE_INDEX)
    if keep is not None:
        input_ids, labels, entity_label_mask = input_ids[keep], labels[keep], entity_label_mask[keep]
    return MaskedExample(input_ids=input_ids, labels=labels, entity_label_mask=entity_label_mask)


def non_special_spans(example: SegmentedExample) -> np.ndarray:
    """One single-token span per non-special position (the units of token-level masking)."""
    positions = np.flatnonzero(~example.special_mask.astype(bool))
    return np.stack([positions, positions + 1], axis=1)


class UnitMaskingStrategy(MaskingStrategy):
    """A strategy defined by how it chooses units; budget, 80/10/10 and labels are shared.

    Subclasses implement :meth:`choose_units`, returning the chosen units as token spans (``int64 [K, 2]``)
    and the unit each span belongs to (``int64 [K]``, non-decreasing; ``arange(K)`` when every unit is a
    single span). All tokens of a unit get the same action.

    A strategy whose units are single spans taken in uniformly random order (``token``, ``wwm``) can also
    implement :meth:`batch_units`; :meth:`mask_batch` then masks the whole batch at once. A subclass that
    overrides :meth:`choose_units` or :meth:`mask` without its own :meth:`batch_units` gets the per-example
    path, so its override is always honoured.
    """

    Options: ClassVar[type] = MaskingOptions

    def __init__(self, context: MaskingContext, **options: object) -> None:
        super().__init__(context, **options)
        self.masker = UnitMasker(context)
        self.applier = BatchApplier(self.masker.mask_token_id, self.masker.pool)
        cls = type(self)
        definer = next(c for c in cls.__mro__ if "batch_units" in vars(c))
        self._vectorised = (definer is not UnitMaskingStrategy and cls.choose_units is definer.choose_units
                            and cls.mask is UnitMaskingStrategy.mask)

    @property
    def vectorised(self) -> bool:
        """Whether :meth:`mask_batch` masks the batch at once (see the class docstring)."""
        return self._vectorised

    def batch_units(self, batch: FlatBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Every example's candidate units for :meth:`mask_batch`, or ``None`` for the per-example path.

        Returns flat token spans (``int64 [N, 2]``, :class:`~framework.masking.batch.FlatBatch` positions, each
        example's units in their order within it), the example of each (``int64 [N]``, non-decreasing) and a
        number naming it within its example (``int64 [N]``, distinct within an example, below ``2**32``; it
        keys the unit's random draws: a word's start position, say). Units are taken in uniformly random order
        until the budget is spent, as :func:`take_within_budget` does.
        """
        return None

    def mask_batch(self, examples: Sequence[SegmentedExample], seed: int, epoch: int) -> list[MaskedExample]:
        """The whole batch at once where :meth:`batch_units` describes the units, else one example at a time."""
        if not self._vectorised or not examples:
            return super().mask_batch(examples, seed, epoch)
        batch = FlatBatch.from_examples(examples, seed, epoch)
        units = self.batch_units(batch)
        if units is None:
            return super().mask_batch(examples, seed, epoch)
        spans, owner, local = units
        opts = self.options
        size = batch.size
        # One hash call for the per-example and the per-unit draws.
        bits = draw_bits(np.concatenate([batch.keys, batch.keys[owner]]),
                         np.concatenate([np.full(size, counter(STREAM_EXAMPLE, 0)), counter(STREAM_UNIT, local)]))
        example_bits, unit_bits = bits[:size], bits[size:]
        budgets = token_budgets(batch, opts, example_bits)
        order = sort_order(owner, unit_bits >> np.uint64(32))
        taken = take_within_budget_batch(owner, spans[:, 1] - spans[:, 0], order, budgets, low_uniform(example_bits))
        actions = draw_actions_from(low_uniform(unit_bits[taken]), opts.mask_token_prob, opts.random_token_prob)
        input_ids, labels = self.applier.apply(batch, spans[taken], actions)
        return self.applier.split(batch, input_ids, labels)

    def mask(self, example: SegmentedExample, rng: np.random.Generator) -> MaskedExample:
        """Budget, choose units, one action per unit, label every chosen token."""
        budget = token_budget(example.num_tokens, self.options, rng)
        spans, unit_of_span = self.choose_units(example, budget, rng)
        num_units = int(unit_of_span[-1]) + 1 if len(unit_of_span) else 0
        opts = self.options
        actions = draw_actions(num_units, opts.mask_token_prob, opts.random_token_prob, rng)[unit_of_span]
        input_ids, labels = self.masker.apply(example, spans, actions, rng)
        return finish(example, input_ids, labels)
