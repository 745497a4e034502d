"""Pluggable masking strategies: the interface, the built-ins and the registry (see ``docs/masking.md``)."""

from framework.masking.base import (
    MaskingConfigError,
    MaskingContext,
    MaskingOptions,
    MaskingStrategy,
    NoOptions,
    check_probability,
    example_rng,
)
from framework.masking.entity_wwm import EntityWholeWordMasking, EntityWWMOptions
from framework.masking.ngram import NgramMasking, NgramOptions
from framework.masking.registry import (
    BUILTIN_STRATEGIES,
    DEFAULT_STRATEGY,
    ENTRY_POINT_GROUP,
    available_strategies,
    build_strategy,
    parse_masking_args,
    resolve_strategy,
)
from framework.masking.span import SpanMasking, SpanOptions
from framework.masking.token_mlm import TokenMasking
from framework.masking.units import UnitMaskingStrategy
from framework.masking.wwm import WholeWordMasking

__all__ = [
    "BUILTIN_STRATEGIES",
    "DEFAULT_STRATEGY",
    "ENTRY_POINT_GROUP",
    "EntityWWMOptions",
    "EntityWholeWordMasking",
    "MaskingConfigError",
    "MaskingContext",
    "MaskingOptions",
    "MaskingStrategy",
    "NgramMasking",
    "NgramOptions",
    "NoOptions",
    "SpanMasking",
    "SpanOptions",
    "TokenMasking",
    "UnitMaskingStrategy",
    "WholeWordMasking",
    "available_strategies",
    "build_strategy",
    "check_probability",
    "example_rng",
    "parse_masking_args",
    "resolve_strategy",
]
