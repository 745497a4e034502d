"""The batch-vectorised masking path (``mask_batch``) on the real CSL sentences.

``tests/test_masking_strategies.py`` checks the reference path (``mask`` with ``example_rng``). Training masks
through ``mask_batch``, which draws its random numbers differently (counter-based, :mod:`framework.masking.batch`),
so every statistical property checked there is checked here again on ``mask_batch``'s output, with the same
tolerances; plus what is specific to the batch path: an example's masks do not depend on its batch, the budget
rule is exactly :func:`~framework.masking.units.take_within_budget`'s, and strategies or subclasses without a
vectorised form keep the reference behaviour.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest

from framework.batching.collator import MaskingCollator
from framework.data.example import IGNORE_INDEX, MaskedExample, SegmentedExample
from framework.masking import MaskingContext, build_strategy, example_rng
from framework.masking.batch import (
    draw_bits,
    example_keys,
    high_uniform,
    low_uniform,
    sort_order,
    take_within_budget_batch,
)
from framework.masking.units import take_within_budget

STRATEGIES = ["token", "wwm", "entity_wwm", "span", "ngram"]
WHOLE_WORD = ["wwm", "entity_wwm", "span", "ngram"]
VECTORISED = ["token", "wwm", "entity_wwm"]
TARGET = 0.15
SEED = 1234
BATCH = 32


@dataclass
class Run:
    """One strategy applied to every example through ``mask_batch``."""

    examples: list[SegmentedExample]
    masked: list[MaskedExample]


@pytest.fixture(scope="module")
def examples(csl_segmented) -> list[SegmentedExample]:  # noqa: ANN001 - SegmentedDataset
    """Every CSL sentence as a SegmentedExample (about 4,500)."""
    return [csl_segmented[i] for i in range(len(csl_segmented))]


@pytest.fixture(scope="module")
def context(csl_segmented) -> MaskingContext:  # noqa: ANN001
    """The sample's vocabulary and keyword table."""
    return MaskingContext(vocab=csl_segmented.vocab_info, entities=csl_segmented.entity_table())


def batched(strategy, examples: list[SegmentedExample], epoch: int = 0, seed: int = SEED,  # noqa: ANN001
            batch_size: int = BATCH) -> list[MaskedExample]:
    """``strategy.mask_batch`` over consecutive batches, as the collator calls it."""
    out: list[MaskedExample] = []
    for i in range(0, len(examples), batch_size):
        out.extend(strategy.mask_batch(examples[i:i + batch_size], seed, epoch))
    return out


def run(name: str, args: dict, context: MaskingContext, examples: list[SegmentedExample], epoch: int = 0) -> Run:
    """Mask every example with strategy ``name`` through ``mask_batch``."""
    return Run(examples, batched(build_strategy(name, args, context), examples, epoch))


_cache: dict[tuple, Run] = {}


def cached(name: str, context: MaskingContext, examples: list[SegmentedExample], **args: object) -> Run:
    """``run`` memoised for the module."""
    key = (name, len(examples), tuple(sorted(args.items())))
    if key not in _cache:
        _cache[key] = run(name, dict(args), context, examples)
    return _cache[key]


def aligned(name: str, context: MaskingContext, examples: list[SegmentedExample], **args: object) -> Run:
    """A run whose outputs align position by position with the inputs (no entity deletion)."""
    if name == "entity_wwm":
        args["entity_delete_prob"] = 0.0
    return cached(name, context, examples, **args)


def ratio(r: Run) -> float:
    """Predicted tokens over non-special tokens."""
    return sum(int((m.labels != IGNORE_INDEX).sum()) for m in r.masked) / sum(ex.num_tokens for ex in r.examples)


# --- the properties of tests/test_masking_strategies.py, on mask_batch ---------------------------------------


def test_builtins_report_whether_they_are_vectorised(context: MaskingContext) -> None:
    for name in STRATEGIES:
        assert build_strategy(name, None, context).vectorised == (name in VECTORISED), name


@pytest.mark.parametrize("name", STRATEGIES)
def test_mask_ratio_within_1_5_points(name: str, context: MaskingContext, examples: list[SegmentedExample]) -> None:
    r = cached(name, context, examples)
    tokens = sum(ex.num_tokens for ex in examples)
    predicted = sum(int((m.labels != IGNORE_INDEX).sum()) for m in r.masked)
    deleted = sum(len(ex) - len(m) for ex, m in zip(examples, r.masked))
    assert len(examples) >= 3000 and tokens >= 100_000
    assert abs((predicted + deleted) / tokens - TARGET) <= 0.015, (predicted + deleted) / tokens
    assert abs(predicted / tokens - TARGET) <= 0.015, predicted / tokens


@pytest.mark.parametrize("name", STRATEGIES)
def test_ratio_holds_on_short_sentences(name: str, context: MaskingContext, examples: list[SegmentedExample]) -> None:
    short = [ex for ex in examples if ex.num_tokens <= 12]
    assert len(short) >= 100
    strategy = build_strategy(name, {"entity_delete_prob": 0.0} if name == "entity_wwm" else {}, context)
    predicted = tokens = 0
    for epoch in range(20):
        for m, ex in zip(batched(strategy, short, epoch), short):
            predicted += int((m.labels != IGNORE_INDEX).sum())
            tokens += ex.num_tokens
    assert abs(predicted / tokens - TARGET) <= 0.01, predicted / tokens


@pytest.mark.parametrize("mask_prob", [0.1, 0.3])
def test_configured_ratio_is_realised(mask_prob: float, context: MaskingContext,
                                      examples: list[SegmentedExample]) -> None:
    for name in STRATEGIES:
        r = aligned(name, context, examples[:1500], mask_prob=mask_prob)
        assert abs(ratio(r) - mask_prob) <= 0.015, (name, ratio(r))


@pytest.mark.parametrize("name", STRATEGIES)
def test_specials_never_touched_and_labels_exactly_at_chosen_positions(
    name: str, context: MaskingContext, examples: list[SegmentedExample]
) -> None:
    r = aligned(name, context, examples)
    pool = set(context.vocab.replacement_pool().tolist()) | {context.vocab.mask_token_id}
    for ex, m in zip(examples, r.masked):
        original = ex.input_ids.astype(np.int64)
        assert m.input_ids.dtype == np.int64 and m.labels.dtype == np.int64 and len(m) == len(ex)
        labelled = m.labels != IGNORE_INDEX
        assert not (labelled & ex.special_mask).any()
        assert (m.input_ids[ex.special_mask] == original[ex.special_mask]).all()
        assert (m.labels[labelled] == original[labelled]).all()
        assert (m.input_ids[~labelled] == original[~labelled]).all()
        assert (m.entity_label_mask == (labelled & ex.entity_token_mask())).all()
        # Outside entities (whose replacements are lexicon rows) a change is [MASK] or a non-special token.
        changed = m.input_ids[labelled & (m.input_ids != original) & ~ex.entity_token_mask()]
        assert set(changed.tolist()) <= pool


@pytest.mark.parametrize("name", WHOLE_WORD)
def test_no_word_partly_chosen(name: str, context: MaskingContext, examples: list[SegmentedExample]) -> None:
    r = aligned(name, context, examples)
    partial = 0
    for ex, m in zip(examples, r.masked):
        labelled = np.concatenate([[0], np.cumsum(m.labels != IGNORE_INDEX)])
        per_word = labelled[ex.word_spans[:, 1]] - labelled[ex.word_spans[:, 0]]
        partial += int(((per_word > 0) & (per_word < ex.word_spans[:, 1] - ex.word_spans[:, 0])).sum())
    assert partial == 0


def unit_treatments(ex: SegmentedExample, m: MaskedExample, mask_id: int) -> np.ndarray:
    """For each chosen word: 0 all ``[MASK]``, 1 changed to other tokens, 2 unchanged; -1 mixed [MASK]."""
    chosen = ex.word_spans[m.labels[ex.word_spans[:, 0]] != IGNORE_INDEX]
    out = []
    for start, end in chosen:
        got, orig = m.input_ids[start:end], ex.input_ids[start:end]
        is_mask = got == mask_id
        out.append(0 if is_mask.all() else -1 if is_mask.any() else 2 if (got == orig).all() else 1)
    return np.asarray(out, dtype=np.int64)


def treatment_shares(name: str, r: Run, mask_id: int) -> np.ndarray:
    """Shares of the three 80/10/10 outcomes over the chosen units of a run."""
    if name == "token":
        labelled = np.concatenate([m.labels != IGNORE_INDEX for m in r.masked])
        got = np.concatenate([m.input_ids for m in r.masked])[labelled]
        orig = np.concatenate([ex.input_ids for ex in r.examples]).astype(np.int64)[labelled]
        treatment = np.where(got == mask_id, 0, np.where(got == orig, 2, 1))
    else:
        treatment = np.concatenate([unit_treatments(ex, m, mask_id) for ex, m in zip(r.examples, r.masked)])
    assert (treatment >= 0).all(), "a unit was partly [MASK]"
    assert len(treatment) > 5000
    return np.bincount(treatment, minlength=3) / len(treatment)


@pytest.mark.parametrize("name", STRATEGIES)
def test_80_10_10_per_unit(name: str, context: MaskingContext, examples: list[SegmentedExample]) -> None:
    shares = treatment_shares(name, aligned(name, context, examples), context.vocab.mask_token_id)
    assert abs(shares[0] - 0.8) <= 0.02 and abs(shares[1] - 0.1) <= 0.02 and abs(shares[2] - 0.1) <= 0.02, shares


def entity_rates(r: Run) -> tuple[float, float]:
    """Selection rate of entity tokens (deleted ones included) and of other tokens."""
    entity_tokens = sum(int(ex.entity_token_mask().sum()) for ex in r.examples)
    other_tokens = sum(ex.num_tokens for ex in r.examples) - entity_tokens
    deleted = sum(len(ex) - len(m) for ex, m in zip(r.examples, r.masked))
    entity_chosen = sum(int(m.entity_label_mask.sum()) for m in r.masked) + deleted
    other_chosen = sum(int((m.labels != IGNORE_INDEX).sum()) - int(m.entity_label_mask.sum()) for m in r.masked)
    assert entity_tokens > 20_000
    return entity_chosen / entity_tokens, other_chosen / other_tokens


def test_entity_tokens_chosen_at_least_twice_as_often(context: MaskingContext,
                                                      examples: list[SegmentedExample]) -> None:
    entity_rate, other_rate = entity_rates(cached("entity_wwm", context, examples))
    assert entity_rate >= 2 * other_rate, (entity_rate, other_rate)
    wwm_entity, _ = entity_rates(cached("wwm", context, examples))
    assert wwm_entity < 1.5 * TARGET


def test_entity_replacements_are_other_lexicon_entities_of_same_length(
    context: MaskingContext, examples: list[SegmentedExample]
) -> None:
    r = aligned("entity_wwm", context, examples)
    mask_id = context.vocab.mask_token_id
    replaced = in_lexicon = 0
    for ex, m in zip(examples, r.masked):
        for start, end in ex.entity_spans:
            got, orig = m.input_ids[start:end], ex.input_ids[start:end].astype(np.int64)
            if m.labels[start] == IGNORE_INDEX or (got == mask_id).all() or (got == orig).all():
                continue
            replaced += 1
            table = context.entities.candidates(end - start)
            if table is not None and (table == got).all(axis=1).any():
                in_lexicon += 1
                assert not (got == orig).all()
    assert replaced > 300
    assert in_lexicon == replaced


def test_replacement_falls_back_to_random_tokens_without_another_same_length_entity(context: MaskingContext) -> None:
    """A table holding only the entity itself, and no table at all for another length: random tokens."""
    from framework.data.example import EntityTable

    vocab = context.vocab
    ids = np.asarray([vocab.cls_token_id, 100, 101, 102, 103, 104, vocab.sep_token_id], dtype=np.int32)
    special = np.zeros(len(ids), dtype=bool)
    special[[0, -1]] = True
    words = np.asarray([[1, 3], [3, 6]], dtype=np.int32)
    ex = SegmentedExample(ids, special, words, words.copy(), np.asarray([0, 1], dtype=np.int32))
    only_self = EntityTable({2: np.asarray([[100, 101]], dtype=np.int32)})
    strategy = build_strategy("entity_wwm", {"entity_prob": 1.0, "mask_prob": 1.0, "entity_delete_prob": 0.0,
                                             "entity_mask_token_prob": 0.0, "entity_replace_prob": 1.0},
                              MaskingContext(vocab=vocab, entities=only_self))
    pool = set(vocab.replacement_pool().tolist())
    for index in range(30):
        m = strategy.mask_batch([SegmentedExample(ids, special, words, words.copy(), ex.entity_ids, index)], 0, 0)[0]
        assert (m.labels[1:-1] == ids[1:-1]).all()
        assert not np.array_equal(m.input_ids[1:3], [100, 101])
        assert set(m.input_ids[1:-1].tolist()) <= pool


def test_deleted_entities_leave_the_input_and_are_not_predicted(
    context: MaskingContext, examples: list[SegmentedExample]
) -> None:
    # Deletion decides from its own draw, so both runs choose the same units and word treatments.
    keep_all = build_strategy("entity_wwm", {"entity_delete_prob": 0.0}, context)
    delete_all = build_strategy("entity_wwm", {"entity_delete_prob": 1.0}, context)
    subset = examples[:1500]
    deleted_tokens = 0
    for ex, a, b in zip(subset, batched(keep_all, subset), batched(delete_all, subset)):
        chosen_entities = np.zeros(len(ex), dtype=bool)
        for start, end in ex.entity_spans:
            if a.labels[start] != IGNORE_INDEX:
                chosen_entities[start:end] = True
        keep = ~chosen_entities
        deleted_tokens += int(chosen_entities.sum())
        assert len(b) == int(keep.sum())
        assert (b.labels == a.labels[keep]).all()
        assert (b.input_ids == a.input_ids[keep]).all()
        assert not b.entity_label_mask.any()
        assert b.input_ids[0] == context.vocab.cls_token_id and b.input_ids[-1] == context.vocab.sep_token_id
    assert deleted_tokens > 1000


def test_default_deletion_rate(context: MaskingContext, examples: list[SegmentedExample]) -> None:
    r = cached("entity_wwm", context, examples)
    deleted = sum(len(ex) - len(m) for ex, m in zip(examples, r.masked))
    entity_chosen = sum(int(m.entity_label_mask.sum()) for m in r.masked) + deleted
    assert abs(deleted / entity_chosen - 0.05) <= 0.015


def test_evaluation_masking_deletes_nothing_and_is_otherwise_the_same(
    context: MaskingContext, examples: list[SegmentedExample]
) -> None:
    evaluation = build_strategy("entity_wwm", {"entity_delete_prob": 0.5, "entity_prob": 0.6}, context).for_evaluation()
    reference = build_strategy("entity_wwm", {"entity_delete_prob": 0.0, "entity_prob": 0.6}, context)
    subset = examples[:300]
    for ex, m, r in zip(subset, batched(evaluation, subset), batched(reference, subset)):
        assert len(m) == len(ex)
        assert (m.input_ids == r.input_ids).all() and (m.labels == r.labels).all()


@pytest.mark.parametrize("name", STRATEGIES)
def test_same_seed_same_masks_other_epoch_different(
    name: str, context: MaskingContext, examples: list[SegmentedExample]
) -> None:
    subset = examples[:400]
    first = cached(name, context, examples).masked[:400]
    again = run(name, {}, context, subset)
    later = run(name, {}, context, subset, epoch=1)
    for a, b in zip(first, again.masked):
        assert np.array_equal(a.input_ids, b.input_ids) and np.array_equal(a.labels, b.labels)
    differ = sum(not np.array_equal(a.labels, b.labels) for a, b in zip(first, later.masked))
    assert differ >= 0.8 * len(subset)
    other_seed = batched(build_strategy(name, None, context), subset, seed=SEED + 1)
    assert sum(not np.array_equal(a.labels, b.labels) for a, b in zip(first, other_seed)) >= 0.8 * len(subset)


def test_strategies_do_not_modify_examples(context: MaskingContext, examples: list[SegmentedExample]) -> None:
    frozen = []
    for ex in examples[:64]:
        copy = SegmentedExample(
            input_ids=ex.input_ids.copy(), special_mask=ex.special_mask.copy(), word_spans=ex.word_spans.copy(),
            entity_spans=ex.entity_spans.copy(), entity_ids=ex.entity_ids.copy(), index=ex.index,
        )
        for arr in (copy.input_ids, copy.special_mask, copy.word_spans, copy.entity_spans):
            arr.setflags(write=False)  # a write raises, as it would on a read-only memory map
        frozen.append(copy)
    for name in STRATEGIES:
        strategy = build_strategy(name, {"entity_delete_prob": 0.5} if name == "entity_wwm" else {}, context)
        batched(strategy, frozen)


@pytest.mark.parametrize("name", STRATEGIES)
def test_no_strong_position_bias(name: str, context: MaskingContext, examples: list[SegmentedExample]) -> None:
    r = aligned(name, context, examples)
    hits, counts = np.zeros(10), np.zeros(10)
    for ex, m in zip(examples, r.masked):
        n = len(ex) - 2
        tenth = np.arange(n) * 10 // n
        np.add.at(hits, tenth, m.labels[1:-1] != IGNORE_INDEX)
        np.add.at(counts, tenth, 1)
    rates = hits / counts
    assert np.abs(rates - TARGET).max() <= 0.035, rates.round(3)


def test_overlapping_entities_are_resolved_first_come_first_kept(
    context: MaskingContext, examples: list[SegmentedExample]
) -> None:
    """Hand-built overlapping entities, alone and among real examples: never two overlapping ones chosen."""
    vocab = context.vocab
    ids = np.asarray([vocab.cls_token_id, *range(100, 110), vocab.sep_token_id], dtype=np.int32)
    special = np.zeros(len(ids), dtype=bool)
    special[[0, -1]] = True
    words = np.asarray([[1, 3], [3, 5], [5, 7], [7, 9], [9, 11]], dtype=np.int32)
    entities = np.asarray([[3, 7], [1, 5], [5, 9]], dtype=np.int32)
    strategy = build_strategy("entity_wwm", {"entity_prob": 1.0, "mask_prob": 0.5, "entity_delete_prob": 0.0}, context)
    # What may be labelled: the union of pairwise disjoint units (entities and the one word outside them).
    units = [*entities.tolist(), [9, 11]]
    disjoint_covers = []
    for subset in itertools.chain.from_iterable(itertools.combinations(units, k) for k in range(1, len(units) + 1)):
        cover = np.zeros(len(ids), dtype=np.int64)
        for a, b in subset:
            cover[a:b] += 1
        if cover.max() == 1:
            disjoint_covers.append(cover.astype(bool))
    for seed in range(30):
        ex = SegmentedExample(ids, special, words, entities, np.asarray([0, 1, 2], dtype=np.int32), index=10_000)
        for batch, row in (([ex], 0), ([*examples[:5], ex, *examples[5:9]], 5)):
            out = strategy.mask_batch(batch, seed, 0)[row]
            labelled = out.labels != IGNORE_INDEX
            assert labelled.any() and (out.labels[labelled] >= 100).all()
            assert any(np.array_equal(labelled, cover) for cover in disjoint_covers)


# --- specific to the batch path ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", VECTORISED)
def test_an_example_masks_the_same_whatever_its_batch(
    name: str, context: MaskingContext, examples: list[SegmentedExample]
) -> None:
    """Batches of other sizes, other neighbours and another order give every example the same output."""
    strategy = build_strategy(name, None, context)
    subset = examples[:300]
    reference = {ex.index: m for ex, m in zip(subset, batched(strategy, subset, epoch=3))}
    shuffled = [subset[i] for i in np.random.default_rng(0).permutation(len(subset))]
    for batch_size in (1, 7, 64, 300):
        for ex, m in zip(shuffled, batched(strategy, shuffled, epoch=3, batch_size=batch_size)):
            r = reference[ex.index]
            assert np.array_equal(m.input_ids, r.input_ids) and np.array_equal(m.labels, r.labels), (name, batch_size)
            assert np.array_equal(m.entity_label_mask, r.entity_label_mask)


def test_collated_rows_do_not_depend_on_the_batch(csl_segmented, context: MaskingContext,  # noqa: ANN001
                                                  examples: list[SegmentedExample]) -> None:
    collator = MaskingCollator(build_strategy("entity_wwm", None, context), csl_segmented.vocab_info, seed=11)
    collator.set_epoch(2)
    first = examples[:40]
    second = [examples[17], *examples[100:130], examples[3]]
    a, b = collator(first), collator(second)
    for row_a, row_b in ((17, 0), (3, len(second) - 1)):
        n = int(a["attention_mask"][row_a].sum())
        assert n == int(b["attention_mask"][row_b].sum())
        for key in ("input_ids", "labels", "entity_label_mask", "token_type_ids"):
            assert np.array_equal(a[key][row_a, :n].numpy(), b[key][row_b, :n].numpy()), key


@pytest.mark.parametrize("name", VECTORISED)
def test_batch_statistics_match_the_reference_path(
    name: str, context: MaskingContext, examples: list[SegmentedExample]
) -> None:
    """Different random numbers, same distribution: ratio, treatments and entity rates agree with mask()."""
    strategy = build_strategy(name, {"entity_delete_prob": 0.0} if name == "entity_wwm" else {}, context)
    batch = Run(examples, batched(strategy, examples))
    reference = Run(examples, [strategy.mask(ex, example_rng(SEED, 0, ex.index)) for ex in examples])
    assert abs(ratio(batch) - ratio(reference)) <= 0.005, (ratio(batch), ratio(reference))
    mask_id = context.vocab.mask_token_id
    assert np.abs(treatment_shares(name, batch, mask_id) - treatment_shares(name, reference, mask_id)).max() <= 0.02
    if name != "token":
        assert np.abs(np.subtract(entity_rates(batch), entity_rates(reference))).max() <= 0.01
    # The draws do differ: not a copy of the reference path.
    same = sum(np.array_equal(a.labels, b.labels) for a, b in zip(batch.masked, reference.masked))
    assert same < 0.5 * len(examples)


@pytest.mark.parametrize("name", ["span", "ngram"])
def test_strategies_without_a_vectorised_form_use_the_reference_path(
    name: str, context: MaskingContext, examples: list[SegmentedExample]
) -> None:
    strategy = build_strategy(name, None, context)
    for ex, m in zip(examples[:100], batched(strategy, examples[:100])):
        r = strategy.mask(ex, example_rng(SEED, 0, ex.index))
        assert np.array_equal(m.input_ids, r.input_ids) and np.array_equal(m.labels, r.labels)


def test_subclasses_that_change_the_procedure_keep_it(context: MaskingContext,
                                                      examples: list[SegmentedExample]) -> None:
    """A subclass overriding choose_units / mask / replacement is masked by its own code, not the batch path."""
    from framework.masking import EntityWholeWordMasking, WholeWordMasking

    class FirstWord(WholeWordMasking):
        def choose_units(self, example, budget, rng):  # noqa: ANN001, ANN202 - test double
            return example.word_spans[:1].astype(np.int64), np.zeros(1, dtype=np.int64)

    class NoReplacement(EntityWholeWordMasking):
        def replacement(self, original, rng):  # noqa: ANN001, ANN202 - test double
            return original.astype(np.int64)

    for strategy in (FirstWord(context), NoReplacement(context)):
        assert not strategy.vectorised
        for ex, m in zip(examples[:50], batched(strategy, examples[:50])):
            r = strategy.mask(ex, example_rng(SEED, 0, ex.index))
            assert np.array_equal(m.input_ids, r.input_ids) and np.array_equal(m.labels, r.labels)


class _FixedUniform:
    """Stands in for a generator whose next ``random()`` is a given number."""

    def __init__(self, u: float) -> None:
        self.u = u

    def random(self) -> float:
        return self.u


def test_take_within_budget_batch_is_the_reference_rule() -> None:
    """Exactly take_within_budget's choice for every example, given the same order and overshoot uniform."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        size = int(rng.integers(1, 40))
        counts = rng.integers(0, 25, size)
        owner = np.repeat(np.arange(size), counts)
        lengths = rng.choice([1, 2, 2, 2, 3, 4, 6], size=len(owner)).astype(np.int64)
        budgets = rng.integers(0, 14, size)
        uniform = rng.random(size)
        order = sort_order(owner, rng.integers(0, 2**32, len(owner), dtype=np.uint64))
        taken = take_within_budget_batch(owner, lengths, order, budgets, uniform)
        for e in range(size):
            units = order[owner[order] == e]  # this example's units in their random order
            expected = units[take_within_budget(lengths[units], int(budgets[e]), _FixedUniform(uniform[e]))]
            assert sorted(np.flatnonzero(taken & (owner == e)).tolist()) == sorted(expected.tolist())


def test_counter_based_draws_are_uniform_and_keyed_by_seed_epoch_index() -> None:
    keys = example_keys(7, 3, np.arange(20_000))
    assert len(np.unique(keys)) == len(keys)
    assert keys[5] == example_keys(7, 3, np.asarray([5]))[0]  # the batch around it does not matter
    assert example_keys(8, 3, np.asarray([5]))[0] != keys[5] and example_keys(7, 4, np.asarray([5]))[0] != keys[5]
    bits = draw_bits(np.repeat(keys[:100], 500), np.tile(np.arange(500), 100))
    for u in (high_uniform(bits), low_uniform(bits)):
        assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.003
        assert np.abs(np.bincount((u * 20).astype(int), minlength=20) / len(u) - 0.05).max() < 0.003
    hi, lo = high_uniform(bits), low_uniform(bits)
    assert abs(np.corrcoef(hi, lo)[0, 1]) < 0.01
    assert abs(np.corrcoef(hi[:-1], hi[1:])[0, 1]) < 0.01  # consecutive counters
