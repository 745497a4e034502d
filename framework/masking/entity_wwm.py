"""``entity_wwm`` (the default): whole word masking that favours the lexicon's keyword entities.

Inspired by ERNIE 1.0's entity-level masking (Sun et al., 2019), on top of Chinese WWM:

1. **Budget**: ``mask_prob`` of the non-special tokens, as for every strategy (:mod:`framework.masking.units`).
2. **Entities first**: each entity occurrence is picked independently with ``entity_prob``; the picked ones, in
   random order, are taken until the budget is spent (the budget rule of :mod:`framework.masking.units`).
3. **Ordinary words fill the rest**: whole words outside every entity occurrence, in random order, until the
   budget is spent. Words inside an entity are only ever chosen as part of the whole entity.
4. **Per chosen entity**: with ``entity_delete_prob`` it is deleted from the input (augmentation: the model
   must read the sentence without the term; the deleted tokens are not predicted and the example gets
   shorter). Otherwise ``[MASK]`` with ``entity_mask_token_prob``, replaced by *another lexicon entity of the
   same token length* with ``entity_replace_prob`` (random tokens when the lexicon has no other entity of that
   length), else left unchanged; always predicted as the original.
5. **Per chosen ordinary word**: the usual ``mask_token_prob`` / ``random_token_prob`` / unchanged rule.

:meth:`EntityWholeWordMasking.mask` is the reference, one example at a time; ``mask_batch`` (what training
uses) applies the same procedure to a whole batch at once with counter-based randomness
(:mod:`framework.masking.batch`).

Why ``entity_prob = 0.4``: entity tokens should be chosen at least twice as often as other tokens. Entity
occurrences are long units (3 tokens on average on CSL), and a budget of ``mask_prob * n`` tokens caps what
entity-dense sentences (titles) can take, so a lower value falls short. Measured on the CSL sample with its
own keywords (29% of tokens inside entities), at ``mask_prob = 0.15``, entity vs. other token selection rates:
``entity_prob`` 0.3 -> 21% vs 12% (1.8x), 0.4 -> 26% vs 10% (2.7x), 0.5 -> 30% vs 8% (3.7x); plain ``wwm``
gives 11% vs 17%. 0.4 is the smallest round value with a clear margin that still leaves ordinary words most
of their share.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from framework.data.example import MaskedExample, SegmentedExample
from framework.masking.base import (
    MaskingConfigError,
    MaskingContext,
    MaskingOptions,
    MaskingStrategy,
    check_probability,
)
from framework.masking.batch import (
    STREAM_ENTITY,
    STREAM_ENTITY_ACTION,
    STREAM_EXAMPLE,
    STREAM_REPLACEMENT,
    STREAM_UNIT,
    BatchApplier,
    FlatBatch,
    counter,
    draw_bits,
    high_uniform,
    low_uniform,
    sort_order,
    take_within_budget_batch,
    token_budgets,
)
from framework.masking.batch import span_positions as flat_span_positions
from framework.masking.units import (
    KEEP,
    MASK,
    RANDOM,
    UnitMasker,
    coverage_mask,
    draw_actions,
    finish,
    span_lengths,
    span_positions,
    take_within_budget,
    token_budget,
)


@dataclass(frozen=True)
class EntityWWMOptions(MaskingOptions):
    """Options of ``entity_wwm`` (on top of :class:`~framework.masking.base.MaskingOptions`, which govern words).

    Attributes:
        entity_prob: probability that an entity occurrence is picked before ordinary words (capped by the
            budget). See the module docstring for why 0.4.
        entity_delete_prob: probability that a chosen entity is deleted from the input instead of masked.
            Small (0.05) because deleted tokens give no prediction and the rest of the sentence shifts.
        entity_mask_token_prob: share of the other chosen entities that become ``[MASK]`` tokens.
        entity_replace_prob: share replaced by another lexicon entity of the same token length.
            The rest (``1 - entity_mask_token_prob - entity_replace_prob``) stay unchanged.
    """

    entity_prob: float = 0.4
    entity_delete_prob: float = 0.05
    entity_mask_token_prob: float = 0.8
    entity_replace_prob: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("entity_prob", "entity_delete_prob", "entity_mask_token_prob", "entity_replace_prob"):
            check_probability("EntityWWMOptions", name, getattr(self, name))
        if self.entity_mask_token_prob + self.entity_replace_prob > 1.0 + 1e-9:
            raise MaskingConfigError(
                "EntityWWMOptions: entity_mask_token_prob + entity_replace_prob = "
                f"{self.entity_mask_token_prob + self.entity_replace_prob:g} exceeds 1; lower one of them"
            )


def drop_overlapping(spans: np.ndarray, order: np.ndarray) -> np.ndarray:
    """``order`` without the entries whose span overlaps an earlier entry's (first come, first kept).

    The segmenter never emits overlapping entities; hand-built examples might, and an overlap would label a
    token twice.
    """
    if len(order) < 2:
        return order
    picked = spans[order]
    by_start = picked[np.argsort(picked[:, 0], kind="stable")]
    if np.all(by_start[1:, 0] >= by_start[:-1, 1]):
        return order
    covered = np.zeros(int(spans[order, 1].max()), dtype=bool)
    kept = []
    for i in order.tolist():  # a few entities per sentence
        start, end = int(spans[i, 0]), int(spans[i, 1])
        if not covered[start:end].any():
            covered[start:end] = True
            kept.append(i)
    return np.asarray(kept, dtype=order.dtype)


class EntityWholeWordMasking(MaskingStrategy):
    """Entity-enhanced whole word masking; see the module docstring for the procedure."""

    name = "entity_wwm"
    Options = EntityWWMOptions

    def __init__(self, context: MaskingContext, **options: object) -> None:
        super().__init__(context, **options)
        self.masker = UnitMasker(context)
        self.applier = BatchApplier(self.masker.mask_token_id, self.masker.pool)
        cls = type(self)
        # A subclass that changes the reference procedure keeps it: the batch path would silently ignore it.
        self._vectorised = (cls.mask is EntityWholeWordMasking.mask
                            and cls.replacement is EntityWholeWordMasking.replacement)

    @property
    def vectorised(self) -> bool:
        """Whether ``mask_batch`` masks the batch at once (False for subclasses that change :meth:`mask`)."""
        return self._vectorised

    def mask(self, example: SegmentedExample, rng: np.random.Generator) -> MaskedExample:
        """Entities first, ordinary words after, within one token budget."""
        opts = self.options
        length = len(example)
        budget = token_budget(example.num_tokens, opts, rng)
        entities = example.entity_spans.astype(np.int64).reshape(-1, 2)

        picked = np.flatnonzero(rng.random(len(entities)) < opts.entity_prob)
        entity_order = drop_overlapping(entities, rng.permutation(picked))
        in_entity = coverage_mask(entities, length)
        ordinary = example.word_spans[~in_entity[example.word_spans[:, 0]]].astype(np.int64)
        word_order = rng.permutation(len(ordinary))
        # One walk over [picked entities..., ordinary words...]: entities come first, and a single budget
        # rule keeps the expected total equal to the budget (two separate walks would overshoot on average).
        units = np.concatenate([entities[entity_order], ordinary[word_order]])
        taken = take_within_budget(span_lengths(units), budget, rng)
        num_picked = len(entity_order)
        chosen_entities = entities[np.sort(entity_order[taken[taken < num_picked]])]
        words = ordinary[np.sort(word_order[taken[taken >= num_picked] - num_picked])]

        deleted = rng.random(len(chosen_entities)) < opts.entity_delete_prob
        entity_actions = draw_actions(len(chosen_entities), opts.entity_mask_token_prob, opts.entity_replace_prob, rng)
        word_actions = draw_actions(len(words), opts.mask_token_prob, opts.random_token_prob, rng)

        kept_entities = chosen_entities[~deleted]
        kept_actions = entity_actions[~deleted]
        replaced = kept_entities[kept_actions == RANDOM]
        # Lexicon replacement is written below; the shared masker must leave those tokens alone meanwhile.
        kept_actions = np.where(kept_actions == RANDOM, KEEP, kept_actions).astype(np.int8)
        input_ids, labels = self.masker.apply(
            example, np.concatenate([kept_entities, words]), np.concatenate([kept_actions, word_actions]), rng
        )
        for start, end in replaced.tolist():  # about 1 in 10 chosen entities
            input_ids[start:end] = self.replacement(input_ids[start:end], rng)

        keep = None
        if deleted.any():
            keep = np.ones(length, dtype=bool)
            keep[span_positions(chosen_entities[deleted])] = False
        return finish(example, input_ids, labels, keep)

    def mask_batch(self, examples: Sequence[SegmentedExample], seed: int, epoch: int) -> list[MaskedExample]:
        """:meth:`mask`'s procedure for a whole batch at once; an example's draws depend on ``(seed, epoch, index)``.

        A subclass that overrides :meth:`mask` or :meth:`replacement` gets the per-example path instead.
        """
        if not self._vectorised or not examples:
            return super().mask_batch(examples, seed, epoch)
        opts = self.options
        batch = FlatBatch.from_examples(examples, seed, epoch)
        size = batch.size
        entity_owner, entity_local = batch.entity_owner, batch.entity_local
        num_entities = len(entity_owner)
        # Every unit of the batch, entities first: spans, example, random bits.
        spans = np.concatenate([batch.entity_spans, batch.word_spans])
        owner = np.concatenate([entity_owner, batch.word_owner])
        # One hash call: [examples | entities: pick, order | words: order, action | entities: deletion, action].
        bits = draw_bits(
            batch.keys[np.concatenate([np.arange(size), owner, entity_owner])],
            np.concatenate([np.full(size, counter(STREAM_EXAMPLE, 0)), counter(STREAM_ENTITY, entity_local),
                            counter(STREAM_UNIT, batch.word_start), counter(STREAM_ENTITY_ACTION, entity_local)]),
        )
        example_bits, unit_bits = bits[:size], bits[size:size + len(owner)]
        # Per unit, the bits of its 80/10/10 action (and, for entities, deletion).
        action_bits = np.concatenate([bits[size + len(owner):], unit_bits[num_entities:]])
        budgets = token_budgets(batch, opts, example_bits)

        entity_bits = unit_bits[:num_entities]
        picked = low_uniform(entity_bits) < opts.entity_prob
        picked = self._drop_overlapping(batch.entity_spans, entity_owner, entity_local, entity_bits, picked)
        # The walk of mask(): picked entities, then the words outside every entity, each group in random
        # order (the group is part of the sort key), under one budget.
        candidates = np.flatnonzero(np.concatenate([picked, ~batch.in_entity[batch.word_spans[:, 0]]]))
        is_entity = candidates < num_entities
        candidate_owner = owner[candidates]
        order = sort_order(candidate_owner, unit_bits[candidates] >> np.uint64(32), ~is_entity)
        candidate_spans = spans[candidates]
        taken = take_within_budget_batch(candidate_owner, candidate_spans[:, 1] - candidate_spans[:, 0], order,
                                         budgets, low_uniform(example_bits))
        chosen, entity = candidate_spans[taken], is_entity[taken]
        chosen_bits = action_bits[candidates[taken]]
        u = low_uniform(chosen_bits)
        actions = np.where(u < np.where(entity, opts.entity_mask_token_prob, opts.mask_token_prob), MASK,
                           np.where(u < np.where(entity, opts.entity_mask_token_prob + opts.entity_replace_prob,
                                                 opts.mask_token_prob + opts.random_token_prob), RANDOM, KEEP))
        actions = actions.astype(np.int8)
        deleted = entity & (high_uniform(chosen_bits) < opts.entity_delete_prob)
        lexicon_replaced = entity & ~deleted & (actions == RANDOM)
        # Lexicon replacement is written below; apply() must leave those tokens alone meanwhile.
        actions[lexicon_replaced] = KEEP
        kept = ~deleted
        input_ids, labels = self.applier.apply(batch, chosen[kept], actions[kept])
        if lexicon_replaced.any():
            self._replace(batch, input_ids, candidates[taken][lexicon_replaced])
        keep = None
        if deleted.any():
            keep = np.ones(len(input_ids), dtype=bool)
            keep[flat_span_positions(chosen[deleted])] = False
        return self.applier.split(batch, input_ids, labels, keep)

    @staticmethod
    def _drop_overlapping(entities: np.ndarray, owner: np.ndarray, local: np.ndarray, bits: np.ndarray,
                          picked: np.ndarray) -> np.ndarray:
        """:func:`drop_overlapping` for the batch: the segmenter never emits overlapping entities, so one
        vectorised check usually settles it; examples that have some resolve them in their random order."""
        if len(entities) < 2:
            return picked
        starts = entities[:, 0]
        # Flat positions of different examples never overlap: in start order, a clash is between neighbours.
        by_start = None if (starts[1:] >= starts[:-1]).all() else np.argsort(starts, kind="stable")
        ordered = entities if by_start is None else entities[by_start]
        clash = np.flatnonzero(ordered[1:, 0] < ordered[:-1, 1])
        if not len(clash):
            return picked
        picked = picked.copy()
        for example in np.unique(owner[clash if by_start is None else by_start[clash]]).tolist():  # hand-built only
            idx = np.flatnonzero((owner == example) & picked)
            idx = idx[np.lexsort((local[idx], bits[idx] >> np.uint64(32)))]
            picked[np.setdiff1d(idx, drop_overlapping(entities, idx))] = False
        return picked

    def _replace(self, batch: FlatBatch, input_ids: np.ndarray, replaced: np.ndarray) -> None:
        """Write :meth:`replacement`'s choice for every entity in ``replaced`` into the flat ``input_ids``.

        A row drawn from the same-length table, drawn again (up to three times) while it equals the original,
        then a scan of the table (only a table made almost only of the original gets there), else random
        tokens, as in :meth:`replacement`. A Python loop over the replaced entities: a few per batch.
        """
        attempts = 4
        owner = batch.entity_owner[replaced]
        first = batch.entity_local[replaced] * attempts
        draws = (draw_bits(batch.keys[owner], counter(STREAM_REPLACEMENT, first)) >> np.uint64(32)).tolist()
        lexicon = self.context.entities
        for i, (start, end) in enumerate(batch.entity_spans[replaced].tolist()):
            table = lexicon.candidates(end - start) if lexicon is not None else None
            row = None
            if table is not None:
                original = batch.input_ids[start:end]
                draw = draws[i]
                for attempt in range(attempts):
                    if attempt:  # a redraw: only when the first row was the original itself
                        draw = int(draw_bits(batch.keys[owner[i:i + 1]],
                                             counter(STREAM_REPLACEMENT, first[i:i + 1] + attempt))[0] >> 32)
                    if attempt < attempts - 1:
                        candidate = table[(draw * len(table)) >> 32]
                        if not (candidate == original).all():
                            row = candidate
                            break
                    else:
                        others = np.flatnonzero(~np.all(table == original, axis=1))
                        if len(others):
                            row = table[others[(draw * len(others)) >> 32]]
            input_ids[start:end] = self.applier.random_tokens(batch, np.arange(start, end)) if row is None else row

    def for_evaluation(self) -> "EntityWholeWordMasking":
        """The same masking without deletion, so validation scores prediction only."""
        if self.options.entity_delete_prob == 0:
            return self
        options = {**dataclasses.asdict(self.options), "entity_delete_prob": 0.0}
        return type(self)(self.context, **options)

    def replacement(self, original: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Another lexicon entity with as many tokens as ``original``; random tokens when there is none."""
        table = self.context.entities.candidates(len(original)) if self.context.entities is not None else None
        if table is not None:
            # A random row is almost never the original on a real lexicon (hundreds of thousands of rows):
            # try that first instead of scanning the whole table on every replacement.
            for _ in range(3):
                row = table[rng.integers(len(table))]
                if not np.array_equal(row, original):
                    return row.astype(np.int64)
            others = np.flatnonzero(~np.all(table == original, axis=1))
            if len(others):
                return table[others[rng.integers(len(others))]].astype(np.int64)
        return self.masker.random_tokens(len(original), rng)
