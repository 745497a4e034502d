"""masked_example_rows (issue 11, item 5): each target is marked as masked, replaced or kept, so a row whose
``masked`` equals its ``original`` (every target kept by the 10% rule) reads as what it is."""

from __future__ import annotations

from transformers import BertTokenizer

from framework.batching.collator import MaskingCollator
from framework.data.example import IGNORE_INDEX
from framework.masking import MaskingContext, build_strategy
from framework.training.trainer import masked_example_rows, target_kind


def test_target_kind() -> None:
    assert target_kind(4, 10, 4) == "masked"
    assert target_kind(10, 10, 4) == "kept"
    assert target_kind(11, 10, 4) == "replaced"


def test_every_target_is_marked_and_kept_ones_are_told_apart(csl_segmented, tiny_tokenizer_dir) -> None:  # noqa: ANN001
    tokenizer = BertTokenizer.from_pretrained(tiny_tokenizer_dir)
    context = MaskingContext(vocab=csl_segmented.vocab_info, entities=csl_segmented.entity_table())
    collator = MaskingCollator(build_strategy("wwm", None, context), csl_segmented.vocab_info, seed=7)
    rows = masked_example_rows(csl_segmented, collator, tokenizer, 60, split="valid")
    masked = collator.mask([csl_segmented[i] for i in range(60)])
    seen = {"masked": 0, "replaced": 0, "kept": 0}
    for row, ex, m in zip(rows, (csl_segmented[i] for i in range(60)), masked):
        assert row["split"] == "valid"
        targets, kinds, marked = row["targets"].split(), row["target_kinds"].split(), row["marked"].split()
        assert len(targets) == len(kinds) == len(marked) == int((m.labels != IGNORE_INDEX).sum())
        positions = [i for i, lab in enumerate(m.labels) if lab != IGNORE_INDEX]
        for i, kind, mark, target in zip(positions, kinds, marked, targets):
            seen[kind] += 1
            assert mark.startswith(f"{kind}:{target}")
            if kind == "kept":
                assert m.input_ids[i] == ex.input_ids[i]
            elif kind == "masked":
                assert m.input_ids[i] == tokenizer.mask_token_id
            else:
                assert m.input_ids[i] not in (ex.input_ids[i], tokenizer.mask_token_id) and "→" in mark
    # BERT's 80/10/10 over some hundreds of targets: all three kinds appear, [MASK] the most.
    assert seen["kept"] > 0 and seen["replaced"] > 0 and seen["masked"] > seen["kept"] + seen["replaced"]
