"""Masking a whole batch at once: counter-based randomness and unit selection vectorised over every example.

The per-example path (:meth:`~framework.masking.base.MaskingStrategy.mask` with
:func:`~framework.masking.base.example_rng`) pays about 13 µs to create each example's NumPy generator and a few
dozen small NumPy calls per example. The built-in strategies' ``mask_batch`` instead concatenates the batch
into flat arrays (:class:`FlatBatch`) and makes every decision with a fixed number of NumPy calls per batch.

**Randomness.** Every random number is a hash of ``(seed, epoch, index)`` and of a counter naming the decision:
``bits(stream, j)`` is output ``j`` of SplitMix64 (Steele et al., 2014) started from the example's key, where
the key is itself a SplitMix64 hash of ``(seed, epoch, index)`` and ``stream`` (the high 32 bits of the
counter) separates kinds of decisions (one per example, one per word, one per entity, one per token...). A
draw depends only on the example and on what it decides, never on the batch, its order or the worker, so an
example's masks are the same whatever batch it lands in. SplitMix64 passes BigCrush, far more than masking
needs (``tests/test_masking_batch.py`` checks uniformity and independence of the bits used). There is no
generator state: a draw that a strategy does not need costs nothing, and two options that decide from
different streams (``entity_wwm``'s deletion) never shift each other's draws.

**Selection.** The semantics are exactly :mod:`framework.masking.units`' (stochastic budget, units in random
order until the budget is spent, the overshoot rule with its greedy fill, one 80/10/10 action per unit):
random order is one stable sort of ``(example, group, random key)`` over all units of the batch, the running
totals are one cumulative sum, and the greedy fill after an overshooting unit runs in rounds over all
overshooting examples at once (each round takes the next unit that still fits in every such example; there
are at most as many rounds as the largest number of tokens left, a handful). The masks differ from the
per-example path's (other random numbers), their distribution does not (``tests/test_masking_batch.py``).
"""

from __future__ import annotations

from functools import cached_property
from typing import Sequence

import numpy as np

from framework.data.example import IGNORE_INDEX, MaskedExample, SegmentedExample
from framework.masking.base import MaskingOptions

_MASK64 = (1 << 64) - 1
_GAMMA_INT = 0x9E3779B97F4A7C15
_GAMMA = np.uint64(_GAMMA_INT)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO_POW_M32 = 2.0 ** -32

# Streams: the high half of the 64-bit counter, so that the draws of different kinds never coincide.
STREAM_EXAMPLE = 1  # one per example: budget rounding (high bits) and the overshoot decision (low bits)
STREAM_UNIT = 2  # one per word or token unit: sort key (high) and 80/10/10 action (low)
STREAM_ENTITY = 3  # one per entity occurrence: sort key (high) and whether it is picked (low)
STREAM_ENTITY_ACTION = 4  # one per entity occurrence: if chosen, deletion (high) and its action (low)
STREAM_REPLACEMENT = 5  # four per entity occurrence: if lexicon-replaced, the row of each try
STREAM_TOKEN = 6  # one per token position: the random replacement token


def _mix_int(x: int) -> int:
    """SplitMix64's output function on a Python int (for the per-batch scalar part of the key)."""
    x = (x + _GAMMA_INT) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function applied in place to a fresh ``uint64`` array (wrapping arithmetic)."""
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def example_keys(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """``uint64 [B]``: the key of each example, a hash of ``(seed, epoch, index)`` alone."""
    base = _mix_int((_mix_int(int(seed) & _MASK64) + (int(epoch) & _MASK64) * _GAMMA_INT) & _MASK64)
    z = np.asarray(indices, dtype=np.int64).astype(np.uint64)
    z += np.uint64(1)
    z *= _GAMMA
    z += np.uint64(base)
    return _mix(z)


def draw_bits(keys: np.ndarray, counters: np.ndarray) -> np.ndarray:
    """``uint64``: output ``counter`` of SplitMix64 started at each ``key`` (element-wise).

    Build counters with :func:`counter` so that each kind of decision has its own stream.
    """
    z = counters.astype(np.uint64)
    z += np.uint64(1)
    z *= _GAMMA
    z += keys
    return _mix(z)


def counter(stream: int, local: np.ndarray | int) -> np.ndarray | int:
    """The counter of draw ``local`` (a per-example number below ``2**32``) in ``stream``.

    ``(stream << 32) + local``: each kind of decision draws from its own stream.
    """
    return local + (int(stream) << 32)


def high_uniform(bits: np.ndarray) -> np.ndarray:
    """``float64`` in ``[0, 1)`` from the high 32 bits."""
    return (bits >> np.uint64(32)).astype(np.float64) * _TWO_POW_M32


def low_uniform(bits: np.ndarray) -> np.ndarray:
    """``float64`` in ``[0, 1)`` from the low 32 bits (independent of :func:`high_uniform`)."""
    return (bits & _LOW32).astype(np.float64) * _TWO_POW_M32


def below(bits: np.ndarray, n: int) -> np.ndarray:
    """``int64`` in ``[0, n)`` from the high 32 bits (multiply-shift; ``n < 2**31``)."""
    return (((bits >> np.uint64(32)) * np.uint64(n)) >> np.uint64(32)).astype(np.int64)


def exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    """``int64``: where each segment of ``counts`` starts in the concatenation."""
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    return starts


def segment_sums(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over each segment ``[start, start + count)`` (empty segments included)."""
    total = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=total[1:])
    return total[starts + counts] - total[starts]


class FlatBatch:
    """A batch of :class:`SegmentedExample` as flat arrays, spans in batch-wide token positions.

    Built by :meth:`from_examples`. Tokens are concatenated at once; word and entity arrays are built the first
    time a strategy asks for them (``token`` never needs words).

    Attributes:
        size: number of examples ``B``.
        keys: ``uint64 [B]`` each example's random key (:func:`example_keys`).
        lengths, offsets: ``int64 [B]`` tokens of each example and where they start in the flat arrays.
        input_ids: ``int64 [T]`` all tokens (a copy: examples may be memory-mapped).
        special: ``bool [T]``.
        num_tokens: ``int64 [B]`` non-special tokens per example.
    """

    def __init__(self, examples: Sequence[SegmentedExample], keys: np.ndarray) -> None:
        self.examples = examples
        self.size = len(examples)
        self.keys = keys
        ids = [ex.input_ids for ex in examples]
        self.lengths = np.fromiter(map(len, ids), dtype=np.int64, count=self.size)
        self.offsets = exclusive_cumsum(self.lengths)
        self.input_ids = np.concatenate(ids).astype(np.int64)
        self.special = np.concatenate([ex.special_mask for ex in examples]).astype(bool, copy=False)
        if self.lengths.min() > 0:
            self.num_tokens = self.lengths - np.add.reduceat(self.special, self.offsets, dtype=np.int64)
        else:  # reduceat cannot sum an empty segment
            self.num_tokens = self.lengths - segment_sums(self.special, self.offsets, self.lengths)

    @classmethod
    def from_examples(cls, examples: Sequence[SegmentedExample], seed: int, epoch: int) -> "FlatBatch":
        """Concatenate ``examples`` (one ``np.concatenate`` per field, no per-token work)."""
        indices = np.fromiter((ex.index for ex in examples), dtype=np.int64, count=len(examples))
        return cls(examples, example_keys(seed, epoch, indices))

    @cached_property
    def _words(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        local, owner = _concat_spans([ex.word_spans for ex in self.examples])
        return local + self.offsets[owner][:, None], owner, local[:, 0]

    @property
    def word_spans(self) -> np.ndarray:
        """``int64 [W, 2]`` flat spans of every word."""
        return self._words[0]

    @property
    def word_owner(self) -> np.ndarray:
        """``int64 [W]`` the example of each word."""
        return self._words[1]

    @property
    def word_start(self) -> np.ndarray:
        """``int64 [W]`` each word's start within its example: words partition the tokens, so it names the
        word (the counter of its draws)."""
        return self._words[2]

    @cached_property
    def _entities(self) -> tuple[np.ndarray, np.ndarray]:
        local, owner = _concat_spans([ex.entity_spans for ex in self.examples])
        return local + self.offsets[owner][:, None], owner

    @property
    def entity_spans(self) -> np.ndarray:
        """``int64 [E, 2]`` flat spans of every entity occurrence."""
        return self._entities[0]

    @property
    def entity_owner(self) -> np.ndarray:
        """``int64 [E]`` the example of each entity occurrence."""
        return self._entities[1]

    @cached_property
    def entity_local(self) -> np.ndarray:
        """``int64 [E]`` each entity's index within its example (entities may overlap in hand-built examples,
        so their start would not name them)."""
        owner = self.entity_owner
        counts = np.bincount(owner, minlength=self.size)
        return np.arange(len(owner), dtype=np.int64) - exclusive_cumsum(counts)[owner]

    @cached_property
    def in_entity(self) -> np.ndarray:
        """``bool [T]``: True inside any entity occurrence."""
        return self.coverage(self.entity_spans)

    def owner_of_positions(self, positions: np.ndarray) -> np.ndarray:
        """The example of each flat token position."""
        return np.searchsorted(self.offsets, positions, side="right") - 1

    def coverage(self, spans: np.ndarray) -> np.ndarray:
        """``bool [T]``: True inside any of ``spans`` (flat positions; spans may overlap)."""
        total = len(self.input_ids)
        if not len(spans):
            return np.zeros(total, dtype=bool)
        delta = np.bincount(spans[:, 0], minlength=total + 1)
        delta -= np.bincount(spans[:, 1], minlength=total + 1)
        return np.cumsum(delta[:total]) > 0


def _concat_spans(per_example: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every example's ``[start, end)`` spans concatenated (``int64 [N, 2]``, own positions) and their example."""
    counts = np.fromiter(map(len, per_example), dtype=np.int64, count=len(per_example))
    try:
        spans = np.concatenate(per_example)
    except ValueError:  # a hand-built example's empty spans of shape (0,)
        spans = np.concatenate([s.reshape(-1, 2) for s in per_example])
    return spans.reshape(-1, 2).astype(np.int64), np.repeat(np.arange(len(per_example), dtype=np.int64), counts)


def token_budgets(batch: FlatBatch, options: MaskingOptions, example_bits: np.ndarray) -> np.ndarray:
    """``int64 [B]``: :func:`~framework.masking.units.token_budget` for every example at once."""
    value = options.mask_prob * batch.num_tokens.astype(np.float64)
    base = np.floor(value)
    budgets = (base + (high_uniform(example_bits) < value - base)).astype(np.int64)
    if options.max_predictions is not None:
        np.minimum(budgets, options.max_predictions, out=budgets)
    return np.minimum(budgets, batch.num_tokens)


def draw_actions_from(uniform: np.ndarray, mask_token_prob: float, random_token_prob: float) -> np.ndarray:
    """:func:`~framework.masking.units.draw_actions` from given uniforms (``MASK`` 0, ``RANDOM`` 1, ``KEEP`` 2)."""
    actions = np.full(len(uniform), 2, dtype=np.int8)
    actions[uniform < mask_token_prob + random_token_prob] = 1
    actions[uniform < mask_token_prob] = 0
    return actions


def sort_order(owner: np.ndarray, key32: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Indices ordering units by ``(owner, group, key32)``: each example's units in random order.

    A stable sort of one packed ``uint64`` key: ties (equal 32-bit keys of one example and group) keep the
    units' order within their example, so the result does not depend on the other examples of the batch.
    """
    if len(owner) and int(owner.max()) >= 1 << 30:  # no real batch comes near this: the same order, slower
        return np.lexsort((key32, owner) if group is None else (key32, group, owner))
    packed = owner.astype(np.uint64) << np.uint64(33)
    if group is not None:
        packed |= group.astype(np.uint64) << np.uint64(32)
    packed |= key32
    return np.argsort(packed, kind="stable")


def take_within_budget_batch(
    owner: np.ndarray, lengths: np.ndarray, order: np.ndarray, budgets: np.ndarray, overshoot_uniform: np.ndarray
) -> np.ndarray:
    """:func:`~framework.masking.units.take_within_budget` for every example of a batch at once.

    Args:
        owner: ``int64 [N]`` the example of each unit.
        lengths: ``int64 [N]`` tokens per unit (at least 1).
        order: :func:`sort_order` of the units (each example's units contiguous, in random order).
        budgets: ``int64 [B]`` token budget per example.
        overshoot_uniform: ``float64 [B]`` the uniform that decides each example's overshooting unit.

    Returns:
        ``bool [N]``: which units are taken (indexed like ``owner``).
    """
    n = len(owner)
    taken = np.zeros(n, dtype=bool)
    if n == 0:
        return taken
    size = len(budgets)
    own = owner[order]
    length = lengths[order]
    counts = np.bincount(own, minlength=size)
    starts = exclusive_cumsum(counts)
    # One running total over the whole batch: example e's units fit while it stays within its total before e
    # plus e's budget, and because it only grows, the units that fit are a prefix found by one searchsorted.
    running = np.cumsum(length)
    before = np.concatenate([[0], running])[starts]
    limit = np.where(budgets > 0, before + budgets, -1)
    chosen = running <= limit[own]
    fit = np.minimum(np.maximum(np.searchsorted(running, limit, side="right") - starts, 0), counts)
    last = np.maximum(starts + fit - 1, 0)
    remaining = np.where(fit > 0, limit - running[last], budgets)
    over = (fit < counts) & (remaining > 0) & (budgets > 0)
    if over.any():
        which = np.flatnonzero(over)
        at = starts[which] + fit[which]  # each overshooting example's overshooting unit
        # Greedy fill of each overshooting example: the units after its overshooting one that still fit, in
        # order, stopping once full. One round takes the next fitting unit of every such example.
        room_of = np.full(size, -1, dtype=np.int64)
        room_of[which] = remaining[which]
        after = np.zeros(size, dtype=np.int64)
        after[which] = at
        candidates = np.flatnonzero((np.arange(n) > after[own]) & (length <= room_of[own]))
        left = room_of
        fill = np.zeros(n, dtype=bool)
        while len(candidates):
            example = own[candidates]
            first = np.empty(len(candidates), dtype=bool)
            first[0] = True
            np.not_equal(example[1:], example[:-1], out=first[1:])
            picked = candidates[first]
            fill[picked] = True
            left[example[first]] -= length[picked]
            rest = ~first
            candidates, example = candidates[rest], example[rest]
            room = left[example]
            candidates = candidates[(length[candidates] <= room) & (room > 0)]
        r = remaining[which]
        f = r - left[which]
        q = (r - f) / (length[at] - f)  # overshoot_probability; length > r >= f, so no division by zero
        take_over = overshoot_uniform[which] < q
        chosen[at[take_over]] = True
        skipped = np.zeros(size, dtype=bool)
        skipped[which[~take_over]] = True
        chosen |= fill & skipped[own]
    taken[order] = chosen
    return taken


def span_positions(spans: np.ndarray, sizes: np.ndarray | None = None) -> np.ndarray:
    """All positions covered by ``spans`` (``sizes``: their lengths, if known), span by span (flat ``int64``)."""
    if sizes is None:
        sizes = spans[:, 1] - spans[:, 0]
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(spans[:, 0] - (ends - sizes), sizes) + np.arange(total, dtype=np.int64)


class BatchApplier:
    """Writes chosen units and their actions into a :class:`FlatBatch`'s tokens and splits the result.

    Args:
        mask_token_id: the ``[MASK]`` id.
        pool: ``int64`` ids random replacement draws from (``VocabInfo.replacement_pool()``).
    """

    def __init__(self, mask_token_id: int, pool: np.ndarray) -> None:
        self.mask_token_id = int(mask_token_id)
        self.pool = pool

    def random_tokens(self, batch: FlatBatch, positions: np.ndarray) -> np.ndarray:
        """A random non-special id for each flat position, drawn from its example's token stream."""
        owner = batch.owner_of_positions(positions)
        bits = draw_bits(batch.keys[owner], counter(STREAM_TOKEN, positions - batch.offsets[owner]))
        return self.pool[below(bits, len(self.pool))]

    def apply(self, batch: FlatBatch, spans: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat ``input_ids`` and ``labels`` with ``actions[i]`` applied to every token of ``spans[i]``."""
        input_ids = batch.input_ids.copy()
        labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
        if not len(spans):
            return input_ids, labels
        sizes = spans[:, 1] - spans[:, 0]
        positions = span_positions(spans, sizes)
        token_action = np.repeat(actions, sizes)
        labels[positions] = input_ids[positions]
        input_ids[positions[token_action == 0]] = self.mask_token_id
        random_positions = positions[token_action == 1]
        if len(random_positions):
            input_ids[random_positions] = self.random_tokens(batch, random_positions)
        return input_ids, labels

    @staticmethod
    def split(batch: FlatBatch, input_ids: np.ndarray, labels: np.ndarray,
              keep: np.ndarray | None = None) -> list[MaskedExample]:
        """One :class:`MaskedExample` per example (views into the flat arrays); ``keep`` is False where deleted."""
        entity_label_mask = batch.in_entity & (labels != IGNORE_INDEX)
        lengths = batch.lengths
        if keep is not None:
            lengths = segment_sums(keep, batch.offsets, lengths)
            input_ids, labels, entity_label_mask = input_ids[keep], labels[keep], entity_label_mask[keep]
        ends = np.cumsum(lengths).tolist()
        starts = [0, *ends[:-1]]
        return [MaskedExample(input_ids[a:b], labels[a:b], entity_label_mask[a:b]) for a, b in zip(starts, ends)]
