"""The masking-strategy interface.

A strategy turns :class:`~framework.data.example.SegmentedExample` objects into
:class:`~framework.data.example.MaskedExample` objects. It is built once per run from a
:class:`MaskingContext` and keyword options (from ``masking: {name, args}`` in the run config or
``--masking-args``), then called for every example of every epoch.

Options: a strategy declares its options as a frozen dataclass (``Options``, a subclass of
:class:`MaskingOptions` or any dataclass). The base class builds it from the keyword arguments, so an unknown
option or a bad value fails when the strategy is built, with a message naming the accepted options, and
:meth:`MaskingStrategy.describe` reports every resolved value for logs and saved configs.

Dynamic masking and reproducibility: the trainer never hands a strategy a shared random generator. Each
example gets its own generator from :func:`example_rng` ``(seed, epoch, index)``, so the draw for an example
is the same whichever data-loader worker or rank computes it, and different in every epoch.

Speed: the collator calls :meth:`MaskingStrategy.mask_batch` with a whole batch and the key material
``(seed, epoch)`` (each example carries its ``index``), not with ready-made generators: creating a NumPy
generator costs about 13 µs per example, more than a vectorised strategy needs for the whole example. The
default ``mask_batch`` builds each example's :func:`example_rng` and loops over :meth:`mask`; a strategy that
vectorises over the batch overrides it and derives its randomness from ``(seed, epoch, index)`` its own way,
keeping the same guarantee: an example's draw depends on nothing else. The built-in ``token``, ``wwm`` and
``entity_wwm`` do so with counter-based hashes (:mod:`framework.masking.batch`): their training masks are
not the ones :meth:`mask` draws with :func:`example_rng` (the reference, one example at a time), but follow
the same rules and distribution.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from framework.data.example import EntityTable, MaskedExample, SegmentedExample, VocabInfo


class MaskingConfigError(ValueError):
    """A masking strategy could not be built: unknown name, unknown option or bad option value.

    Raised at start-up (never mid-training); the message names what is available or accepted.
    """


@dataclass(frozen=True)
class MaskingContext:
    """Everything a strategy may need besides the examples themselves.

    Attributes:
        vocab: special ids and vocabulary size of the tokenizer.
        entities: the lexicon's entities by token length, for entity replacement; ``None`` without a lexicon.
    """

    vocab: VocabInfo
    entities: EntityTable | None = None


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator for one example in one epoch.

    Derived from ``(seed, epoch, index)`` through NumPy's ``SeedSequence``, so it does not depend on which
    worker or rank draws it, nor on the order examples are visited.
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(index)]))


def check_probability(owner: str, name: str, value: float) -> None:
    """Raise :class:`MaskingConfigError` unless ``value`` is a number in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise MaskingConfigError(f"{owner}: {name}={value!r} must be a probability between 0 and 1")


@dataclass(frozen=True)
class MaskingOptions:
    """Options every built-in strategy shares.

    Attributes:
        mask_prob: target share of non-special tokens chosen for prediction (BERT: 0.15).
        mask_token_prob: share of chosen units whose tokens become ``[MASK]`` (BERT: 0.8).
        random_token_prob: share of chosen units whose tokens become random tokens (BERT: 0.1); the rest,
            ``1 - mask_token_prob - random_token_prob``, keep their original tokens but are still predicted.
        max_predictions: upper bound on chosen tokens per example (BERT's ``max_predictions_per_seq``);
            ``None`` for no bound. A bound lowers the realised ratio on long examples.
    """

    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    max_predictions: int | None = None

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for name in ("mask_prob", "mask_token_prob", "random_token_prob"):
            check_probability(owner, name, getattr(self, name))
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-9:
            raise MaskingConfigError(
                f"{owner}: mask_token_prob + random_token_prob = "
                f"{self.mask_token_prob + self.random_token_prob:g} exceeds 1; lower one of them"
            )
        if self.max_predictions is not None and (
            isinstance(self.max_predictions, bool) or not isinstance(self.max_predictions, int)
            or self.max_predictions < 1
        ):
            raise MaskingConfigError(f"{owner}: max_predictions={self.max_predictions!r} must be a positive integer or null")


@dataclass(frozen=True)
class NoOptions:
    """The options of a strategy that takes none."""


def build_options(options_class: type, owner: str, values: dict[str, Any]) -> Any:
    """Build an options dataclass from user values, turning mistakes into :class:`MaskingConfigError`."""
    if not dataclasses.is_dataclass(options_class):
        raise MaskingConfigError(
            f"masking strategy {owner!r}: its Options must be a dataclass (got {options_class!r}); "
            "declare it with @dataclass(frozen=True)"
        )
    fields = {f.name: f for f in dataclasses.fields(options_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        accepted = ", ".join(f"{n} (default {_default(f)!r})" for n, f in fields.items()) or "none"
        raise MaskingConfigError(f"masking strategy {owner!r} has no option {', '.join(map(repr, unknown))}; accepted options: {accepted}")
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}  # YAML/JSON lists
    try:
        return options_class(**values)
    except MaskingConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise MaskingConfigError(f"masking strategy {owner!r}: {err}") from err


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return "required"


class MaskingStrategy(ABC):
    """Base class of every masking strategy, built-in or third-party.

    Subclasses set ``name``, optionally ``Options`` (a frozen dataclass validating its own values in
    ``__post_init__``), and implement :meth:`mask`. ``__init__(context, **options)`` stores the context as
    ``self.context`` and the built options as ``self.options``; an unknown option or bad value raises
    :class:`MaskingConfigError` naming the accepted ones.

    Contract for :meth:`mask` (tests in ``tests/test_masking_*.py`` check it for every built-in):

    * positions where ``example.special_mask`` is True are never changed and never labelled;
    * ``labels[i]`` is the original token id where the model must predict it, else ``IGNORE_INDEX`` (-100);
    * ``entity_label_mask`` is True exactly at predicted positions inside an entity occurrence;
    * the strategy must not modify the example's arrays in place (examples may be memory-mapped);
    * all randomness comes from the ``rng`` argument.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions

    def __init__(self, context: MaskingContext, **options: Any) -> None:
        self.context = context
        self.options = build_options(self.Options, self.name or type(self).__name__, options)

    @abstractmethod
    def mask(self, example: SegmentedExample, rng: np.random.Generator) -> MaskedExample:
        """Mask one example, drawing every random choice from ``rng``."""

    def mask_batch(self, examples: Sequence[SegmentedExample], seed: int, epoch: int) -> list[MaskedExample]:
        """Mask a batch for ``epoch``; example ``ex`` draws from ``(seed, epoch, ex.index)`` alone.

        The default masks each example with :meth:`mask` and :func:`example_rng`, so a strategy that only
        implements :meth:`mask` works unchanged. Override to vectorise over the batch (see the module
        docstring); the result must not depend on the batch an example is in, nor on its position there.
        """
        return self.mask_reference(examples, seed, epoch)

    def mask_reference(self, examples: Sequence[SegmentedExample], seed: int, epoch: int) -> list[MaskedExample]:
        """The reference masks: :meth:`mask` with :func:`example_rng` for each example, whatever ``mask_batch`` does.

        Evaluation uses these: a faster ``mask_batch`` draws other (statistically equal) masks, and evaluation
        questions must stay the same across framework versions for scores to remain comparable.
        """
        return [self.mask(ex, example_rng(seed, epoch, ex.index)) for ex in examples]

    @property
    def vectorised(self) -> bool:
        """Whether :meth:`mask_batch` masks the batch at once rather than example by example (for reports)."""
        return type(self).mask_batch is not MaskingStrategy.mask_batch

    def for_evaluation(self) -> "MaskingStrategy":
        """The strategy that validation metrics use: this one without input augmentation.

        Augmentations that change the input beyond masking (``entity_wwm``'s deletion) make validation
        loss depend on how much was removed rather than on how well the model predicts; strategies with
        such options override this to switch them off. The default is the strategy itself.
        """
        return self

    def describe(self) -> dict[str, Any]:
        """The strategy's name and resolved options, for logs and saved configs."""
        return {"name": self.name, "args": dataclasses.asdict(self.options)}
