"""The masking registry: names, options, and the errors a user sees at start-up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from framework.data.example import SegmentedExample, VocabInfo
from framework.masking import (
    BUILTIN_STRATEGIES,
    DEFAULT_STRATEGY,
    MaskingConfigError,
    MaskingContext,
    available_strategies,
    build_strategy,
    example_rng,
    parse_masking_args,
)

VOCAB = VocabInfo(vocab_size=50, mask_token_id=4, pad_token_id=0, cls_token_id=2, sep_token_id=3,
                  special_ids=(0, 1, 2, 3, 4))
CONTEXT = MaskingContext(vocab=VOCAB)


def test_builtins_are_available_and_default_is_entity_wwm() -> None:
    available = available_strategies()
    for name in ("token", "wwm", "entity_wwm", "span", "ngram"):
        assert available[name] == "built-in"
    assert DEFAULT_STRATEGY == "entity_wwm" and DEFAULT_STRATEGY in BUILTIN_STRATEGIES


def test_unknown_name_lists_what_is_available() -> None:
    with pytest.raises(MaskingConfigError) as err:
        build_strategy("entity-wwm", None, CONTEXT)
    for name in ("token", "wwm", "entity_wwm", "span", "ngram"):
        assert name in str(err.value)
    assert "package.module:Class" in str(err.value)


def test_unknown_option_lists_accepted_options() -> None:
    with pytest.raises(MaskingConfigError) as err:
        build_strategy("wwm", {"mask_probability": 0.2}, CONTEXT)
    message = str(err.value)
    assert "'mask_probability'" in message and "mask_prob (default 0.15)" in message
    assert isinstance(err.value, ValueError)  # callers that catch ValueError keep working


@pytest.mark.parametrize(
    ("name", "args", "fragment"),
    [
        ("token", {"mask_prob": 1.5}, "mask_prob=1.5 must be a probability"),
        ("token", {"mask_prob": "high"}, "mask_prob='high'"),
        ("wwm", {"mask_token_prob": 0.95, "random_token_prob": 0.1}, "exceeds 1"),
        ("wwm", {"max_predictions": 0}, "max_predictions=0"),
        ("entity_wwm", {"entity_prob": -0.1}, "entity_prob=-0.1"),
        ("entity_wwm", {"entity_mask_token_prob": 0.9, "entity_replace_prob": 0.2}, "exceeds 1"),
        ("span", {"geometric_p": 0}, "geometric_p must be above 0"),
        ("span", {"max_span_words": 0}, "max_span_words=0"),
        ("ngram", {"ngram_probs": [0.5, 0.6]}, "sums to 1.1"),
    ],
)
def test_bad_values_fail_with_a_message_saying_what_to_change(name: str, args: dict, fragment: str) -> None:
    with pytest.raises(MaskingConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        build_strategy(name, args, CONTEXT)


def test_args_must_be_a_mapping() -> None:
    with pytest.raises(MaskingConfigError, match="must be a mapping"):
        build_strategy("wwm", [("mask_prob", 0.2)], CONTEXT)  # type: ignore[arg-type]


def test_describe_reports_resolved_options_as_json() -> None:
    strategy = build_strategy("ngram", {"mask_prob": 0.2, "ngram_probs": [0.5, 0.5]}, CONTEXT)
    described = json.loads(json.dumps(strategy.describe()))
    assert described["name"] == "ngram"
    assert described["args"]["mask_prob"] == 0.2 and described["args"]["ngram_probs"] == [0.5, 0.5]
    assert described["args"]["mask_token_prob"] == 0.8
    entity = build_strategy("entity_wwm", None, CONTEXT).describe()["args"]
    assert entity["entity_prob"] == 0.4 and entity["entity_delete_prob"] == 0.05


def test_import_path_resolves_a_class_and_rejects_non_strategies() -> None:
    strategy = build_strategy("framework.masking.wwm:WholeWordMasking", {"mask_prob": 0.3}, CONTEXT)
    assert strategy.name == "wwm" and strategy.options.mask_prob == 0.3
    with pytest.raises(MaskingConfigError, match="not a subclass"):
        build_strategy("framework.masking.units:stochastic_round", None, CONTEXT)
    with pytest.raises(MaskingConfigError, match="cannot import module 'no_such_package.mod'"):
        build_strategy("no_such_package.mod:Thing", None, CONTEXT)
    with pytest.raises(MaskingConfigError, match="has no attribute 'Nope'"):
        build_strategy("framework.masking.wwm:Nope", None, CONTEXT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"mask_prob": 0.2}', {"mask_prob": 0.2}),
        ("mask_prob: 0.2\nentity_prob: 0.5", {"mask_prob": 0.2, "entity_prob": 0.5}),
        ("{mask_prob: 0.2, ngram_probs: [0.5, 0.5]}", {"mask_prob": 0.2, "ngram_probs": [0.5, 0.5]}),
        ("", {}),
        (None, {}),
    ],
)
def test_parse_masking_args_accepts_json_and_yaml(text: str | None, expected: dict) -> None:
    assert parse_masking_args(text) == expected


@pytest.mark.parametrize("text", ["[0.2]", "0.2", "{mask_prob: [", "mask_prob"])
def test_parse_masking_args_rejects_non_mappings(text: str) -> None:
    with pytest.raises(MaskingConfigError, match="mapping|neither JSON nor YAML"):
        parse_masking_args(text)


def test_a_strategy_without_entities_still_works_for_entity_wwm() -> None:
    """No lexicon table: chosen entities that draw 'replace' get random tokens."""
    ids = np.asarray([2, 10, 11, 12, 13, 14, 15, 16, 17, 3], dtype=np.int32)
    special = np.zeros(10, dtype=bool)
    special[[0, -1]] = True
    words = np.asarray([[1, 3], [3, 5], [5, 7], [7, 9]], dtype=np.int32)
    ex = SegmentedExample(ids, special, words, np.asarray([[3, 5]], dtype=np.int32), np.asarray([0], dtype=np.int32))
    strategy = build_strategy("entity_wwm", {"entity_prob": 1.0, "entity_delete_prob": 0.0,
                                             "entity_mask_token_prob": 0.0, "entity_replace_prob": 1.0}, CONTEXT)
    out = strategy.mask(ex, example_rng(0, 0, 0))
    assert out.labels[3:5].tolist() == [12, 13] and out.entity_label_mask[3:5].all()
    assert set(out.input_ids[3:5].tolist()) <= set(VOCAB.replacement_pool().tolist())
