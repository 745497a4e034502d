"""Show what a masking strategy does to real sentences, for people writing or tuning strategies.

    python launch/preview_masking.py --strategy NAME [--masking-args JSON] [--keywords kw1,kw2 | --lexicon FILE]
        [--seed N] [--samples K] (--text "..." | --input FILE) [--tokenizer PATH] [--json]

Each sentence is cleaned and segmented exactly as the training data is (jieba words, keyword entities,
:class:`~framework.data.segmenter.Segmenter`), then masked ``--samples`` times: sample ``k`` is the draw of
epoch ``k`` for seed ``--seed``, so the output is what training would see in its first K epochs.

Human output: the sentence's words separated by ``|``, entities in ``【】``, then one line per sample with
``[MASK]``, ``~random~`` (replaced, predicted) and ``_kept_`` (unchanged, predicted) tokens.

``--json``: one JSON object a line per sample with ``tokens`` (original tokens, ``[CLS]``/``[SEP]``
included), ``words`` and ``entities`` (``[start, end)`` spans into ``tokens``), ``input_tokens`` (after
masking, deletions applied) and ``labels`` (the original token where predicted, else ``null``, aligned with
``input_tokens``), plus ``sentence``, ``sample``, ``seed``, ``strategy``, ``args`` and ``deleted``.

Without ``--tokenizer`` a WordPiece vocabulary is built from the given text itself (into a temporary
folder): fine for seeing which units are chosen, but random replacements then only draw characters of that
text. Pass the run's tokenizer (a local folder or hub name with a fast tokenizer) to see real replacements.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence, TextIO

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from framework.data.cleaning import clean_text  # noqa: E402
from framework.data.example import IGNORE_INDEX, EntityTable, MaskedExample, SegmentedExample, VocabInfo  # noqa: E402
from framework.data.lexicon import LexiconError, load_lexicon, normalize_keyword  # noqa: E402
from framework.data.segmenter import Segmenter, SegmentedSentence, entity_token_table  # noqa: E402
from framework.masking import (  # noqa: E402
    DEFAULT_STRATEGY,
    MaskingConfigError,
    MaskingContext,
    MaskingStrategy,
    build_strategy,
    example_rng,
    parse_masking_args,
)


def to_example(sentence: SegmentedSentence, vocab: VocabInfo, index: int) -> SegmentedExample:
    """``[CLS] sentence [SEP]`` as the training data has it (spans shifted past ``[CLS]``)."""
    ids = np.concatenate([[vocab.cls_token_id], sentence.token_ids, [vocab.sep_token_id]]).astype(np.int32)
    special = np.zeros(len(ids), dtype=bool)
    special[[0, -1]] = True
    return SegmentedExample(
        input_ids=ids,
        special_mask=special,
        word_spans=sentence.word_spans.astype(np.int32) + 1,
        entity_spans=sentence.entity_spans.astype(np.int32) + 1,
        entity_ids=sentence.entity_ids.astype(np.int32),
        index=index,
    )


def read_sentences(args: argparse.Namespace) -> list[str]:
    """The sentences to preview, cleaned like the corpus; errors name the file and line."""
    if args.text is not None:
        raw = [(None, args.text)]
    else:
        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"--input {path}: no such file")
        try:
            raw = list(enumerate(path.read_text(encoding="utf-8").splitlines(), 1))
        except UnicodeDecodeError as err:
            raise ValueError(f"--input {path}: not UTF-8 ({err}); re-encode it as UTF-8") from err
    sentences = [clean_text(text) for _, text in raw]
    sentences = [s for s in sentences if s]
    if not sentences:
        raise ValueError("no text to preview: --text is empty or --input has only empty lines")
    return sentences


def read_lexicon(args: argparse.Namespace) -> dict[str, int] | None:
    """Keywords from ``--keywords`` or ``--lexicon`` as ``{keyword: frequency}``; ``None`` for neither."""
    if args.keywords:
        words = [normalize_keyword(k) for k in args.keywords.split(",")]
        return {w: 1 for w in words if w} or None
    if args.lexicon:
        return load_lexicon(args.lexicon) or None
    return None


def load_tokenizer(path: str | None, sentences: Sequence[str], workdir: Path):  # noqa: ANN201 - a fast tokenizer
    """The given fast tokenizer, or one built from ``sentences`` in ``workdir``."""
    from framework.data.segmented import load_fast_tokenizer
    from framework.data.vocab import build_vocab

    if path is None:
        path = str(build_vocab(sentences, workdir / "tokenizer"))
    return load_fast_tokenizer(path)


def render_words(tokens: list[str], example: SegmentedExample) -> str:
    """Words separated by `` | ``, entity occurrences in ``【】`` (entities are whole words)."""
    entity_starts = {int(s) for s, _ in example.entity_spans}
    parts = []
    for start, end in example.word_spans.tolist():
        word = " ".join(tokens[start:end])
        parts.append(f"【{word}】" if start in entity_starts else word)
    return " | ".join(parts)


def render_sample(input_tokens: list[str], labels: list[str | None], mask_token: str) -> str:
    """Masked tokens with ``[MASK]``, ``~replaced~`` and ``_kept_`` marks on predicted positions."""
    out = []
    for tok, label in zip(input_tokens, labels):
        if label is None or tok == mask_token:
            out.append(tok)
        elif tok == label:
            out.append(f"_{tok}_")
        else:
            out.append(f"~{tok}~")
    return " ".join(out)


def sample_record(tokenizer, example: SegmentedExample, masked: MaskedExample) -> dict[str, Any]:  # noqa: ANN001
    """The JSON fields of one masked sample."""
    tokens = tokenizer.convert_ids_to_tokens(example.input_ids.tolist())
    input_tokens = tokenizer.convert_ids_to_tokens(masked.input_ids.tolist())
    label_tokens = tokenizer.convert_ids_to_tokens([int(i) for i in masked.labels if i != IGNORE_INDEX])
    labels: list[str | None] = [None] * len(masked)
    for pos, tok in zip(np.flatnonzero(masked.labels != IGNORE_INDEX).tolist(), label_tokens):
        labels[pos] = tok
    return {
        "tokens": tokens,
        "words": example.word_spans.tolist(),
        "entities": example.entity_spans.tolist(),
        "input_tokens": input_tokens,
        "labels": labels,
        "deleted": len(example) - len(masked),
    }


def preview(args: argparse.Namespace, out: TextIO | None = None) -> None:
    """Segment, mask and print every sentence ``args.samples`` times (to ``out``, default stdout)."""
    out = out if out is not None else sys.stdout
    sentences = read_sentences(args)
    lexicon = read_lexicon(args)
    masking_args = parse_masking_args(args.masking_args)
    with tempfile.TemporaryDirectory(prefix="preview-masking-") as tmp:
        tokenizer = load_tokenizer(args.tokenizer, sentences, Path(tmp))
    segmenter = Segmenter(tokenizer, lexicon)
    vocab = VocabInfo.from_tokenizer(tokenizer)
    table = entity_token_table(tokenizer, segmenter.keywords)
    strategy: MaskingStrategy = build_strategy(
        args.strategy, masking_args, MaskingContext(vocab=vocab, entities=EntityTable(table) if table else None)
    )
    described = strategy.describe()
    if not args.json:
        print(f"strategy {args.strategy}: {json.dumps(described.get('args', {}), ensure_ascii=False)}; "
              f"seed {args.seed}; sample k = epoch k", file=out)
        print("marks: [MASK] masked, ~x~ replaced, _x_ kept unchanged (all predicted); 【entity】", file=out)
    for i, (text, segmented) in enumerate(zip(sentences, segmenter.segment_many(sentences))):
        example = to_example(segmented, vocab, index=i)
        if not args.json:
            tokens = tokenizer.convert_ids_to_tokens(example.input_ids.tolist())
            print(f"\nsentence {i}: {text}", file=out)
            print(f"  words:    {render_words(tokens, example)}", file=out)
        for k in range(args.samples):
            masked = strategy.mask(example, example_rng(args.seed, k, i))
            record = sample_record(tokenizer, example, masked)
            if args.json:
                head = {"sentence": i, "sample": k, "seed": args.seed, "strategy": args.strategy,
                        "args": described.get("args", {}), "text": text}
                print(json.dumps({**head, **record}, ensure_ascii=False), file=out)
            else:
                predicted = sum(label is not None for label in record["labels"])
                note = f"{predicted}/{example.num_tokens} predicted"
                if record["deleted"]:
                    note += f", {record['deleted']} deleted"
                print(f"  sample {k}: {render_sample(record['input_tokens'], record['labels'], tokenizer.mask_token)}"
                      f"   ({note})", file=out)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY,
                        help=f"built-in, entry-point or package.module:Class strategy (default {DEFAULT_STRATEGY})")
    parser.add_argument("--masking-args", default=None, help="options as a JSON or YAML mapping")
    lex = parser.add_mutually_exclusive_group()
    lex.add_argument("--keywords", help="comma-separated keyword entities")
    lex.add_argument("--lexicon", help="keyword file (jieba user dictionary: 'word freq' a line)")
    parser.add_argument("--seed", type=int, default=0, help="masking seed (default 0)")
    parser.add_argument("--samples", type=int, default=3, help="masked versions per sentence (default 3)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="one sentence")
    src.add_argument("--input", help="UTF-8 file, one sentence a line")
    parser.add_argument("--tokenizer", default=None,
                        help="fast tokenizer folder or name (default: a vocabulary built from the text)")
    parser.add_argument("--json", action="store_true", help="one JSON object a line per masked sample")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the preview; returns the exit status (2 with a one-line message for bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples {args.samples}: must be at least 1")
    try:
        preview(args)
    except (MaskingConfigError, LexiconError, FileNotFoundError, ValueError, TypeError) as err:
        print(f"preview_masking: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
