"""Building the masked-language model and its tokenizer from the run config.

Two ways in:

* ``--model NAME_OR_PATH``: any BERT-architecture checkpoint that ``BertForMaskedLM.from_pretrained`` loads
  (``hfl/chinese-roberta-wwm-ext`` or a local folder). The MLM head is reused when the checkpoint has one.
* ``--model-config tiny|small|base|FILE`` with a tokenizer: a freshly initialised BERT. ``base`` is BERT-base's
  shape; ``small`` (4 layers, hidden 256) is for CPU studies; ``tiny`` (2 layers, hidden 128) is for the demo,
  tests and smoke runs.

A pretrained model must be given its own vocabulary: a tokenizer whose ids mean other tokens than the model's
(checked wherever the model's own tokenizer files can be found) is an error, and so is one with more tokens
than the embedding table, unless ``--resize-embeddings`` (``model.resize_embeddings``) says the table should
grow for a tokenizer that appends tokens (domain terms) to the model's vocabulary. Attention runs on PyTorch's
``scaled_dot_product_attention`` (``attn_implementation="sdpa"``, fused kernels on GPU) wherever the installed
transformers supports it for BERT; the implementation in use is logged once with the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Mapping

from framework.config import ConfigError, ModelConfig

logger = logging.getLogger(__name__)

PRESETS: dict[str, dict[str, Any]] = {
    # For the demo and tests: small enough to train visibly in a minute on two CPU cores.
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                 max_position_embeddings=512),
    # For CPU studies: about 5M parameters with an 8k vocabulary, big enough to learn context in an hour.
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  max_position_embeddings=512),
    # BERT-base, the shape of chinese-roberta-wwm-ext.
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512),
}


def load_tokenizer(name_or_path: str | Path):  # noqa: ANN201 - a transformers BERT tokenizer
    """A fast BERT tokenizer from a folder or hub name, with a clear error when it cannot be loaded."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(name_or_path), use_fast=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(
            f"cannot load a tokenizer from {name_or_path}: give --tokenizer a folder with vocab.txt "
            f"(launch/build_vocab.py writes one) or a hub name ({exc})"
        ) from exc


def attention_implementation() -> str | None:
    """``"sdpa"`` when the installed transformers' BERT supports it, else ``None`` (transformers then chooses).

    transformers 5 already defaults to SDPA for BERT; asking for it explicitly keeps it so for a pretrained
    checkpoint whose config names another implementation, and fails loudly rather than falling back silently
    should a version stop supporting it for BERT.
    """
    from transformers import BertForMaskedLM

    return "sdpa" if getattr(BertForMaskedLM, "_supports_sdpa", False) else None


def bert_config(spec: str, vocab_size: int, pad_token_id: int,  # noqa: ANN201 - transformers.BertConfig
                attn_implementation: str | None = None):
    """The ``BertConfig`` of a preset name or a ``config.json`` path, sized for the tokenizer.

    ``attn_implementation`` (``"sdpa"``, ``"eager"``...) is a runtime choice: transformers does not write it into
    a saved ``config.json``, so an export is the same either way.
    """
    from transformers import BertConfig

    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if spec in PRESETS:
        return BertConfig(vocab_size=vocab_size, pad_token_id=pad_token_id, **PRESETS[spec], **extra)
    path = Path(spec)
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); give a BERT config.json") from exc
    if values.get("model_type", "bert") != "bert":
        raise ConfigError(f"{path}: model_type={values['model_type']!r}; this framework trains BERT-architecture models")
    values["vocab_size"] = max(int(values.get("vocab_size", 0)), vocab_size)
    values.setdefault("pad_token_id", pad_token_id)
    return BertConfig(**{**values, **extra})


def model_vocabulary(name_or_path: str) -> dict[str, int] | None:
    """The token -> id map of a pretrained model's own tokenizer, or ``None`` where none can be found offline.

    Only local files are read (a folder's ``vocab.txt``/``tokenizer.json``, or the hub cache): a check must not
    need the network, and a missing answer only means the check is skipped.
    """
    from transformers import AutoTokenizer

    folder = Path(name_or_path)
    if folder.is_dir() and not any((folder / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
        return None
    try:
        return dict(AutoTokenizer.from_pretrained(str(name_or_path), use_fast=True, local_files_only=True).get_vocab())
    except (OSError, ValueError):
        return None


def check_vocabulary(model_name: str, embedding_rows: int, model_vocab: Mapping[str, int] | None, tokenizer,  # noqa: ANN001
                     tokenizer_name: str, resize: bool) -> bool:
    """Refuse a tokenizer that does not fit a pretrained model; return whether the embeddings must grow.

    Args:
        model_name: the checkpoint (for messages).
        embedding_rows: rows of the model's input embedding table (``vocab_size`` of its ``config.json``).
        model_vocab: the model's own token -> id map (:func:`model_vocabulary`), or ``None`` when unknown.
        tokenizer: the run's tokenizer.
        tokenizer_name: where it came from (for messages).
        resize: ``model.resize_embeddings``: growing the table for appended tokens is allowed.

    Raises:
        ConfigError: the tokenizer's ids mean other tokens than the model's (another vocabulary), or it has
            more tokens than the table and ``resize`` is off.
    """
    size = len(tokenizer)
    if model_vocab is not None:
        ours = {i: t for t, i in tokenizer.get_vocab().items()}
        theirs = {i: t for t, i in model_vocab.items()}
        for i in sorted(set(ours) & set(theirs)):
            if ours[i] != theirs[i]:
                raise ConfigError(
                    f"--tokenizer {tokenizer_name} is not the vocabulary of --model {model_name}: token id {i} is "
                    f"{theirs[i]!r} in the model's vocabulary and {ours[i]!r} in the tokenizer, so every such id would "
                    "look up another token's embedding; leave --tokenizer out (the model's own is used), or give a "
                    "tokenizer that keeps the model's ids and only appends tokens (with --resize-embeddings)"
                )
    if size <= embedding_rows:
        return False
    if not resize:
        raise ConfigError(
            f"--tokenizer {tokenizer_name} has {size} tokens but --model {model_name} has {embedding_rows} embedding "
            f"rows: the extra tokens would start from untrained embeddings. If the tokenizer appends tokens to the "
            "model's vocabulary, pass --resize-embeddings to grow the table; otherwise give the model's own tokenizer"
        )
    if model_vocab is None:
        logger.warning("--resize-embeddings: %s has no tokenizer files to compare with, so it cannot be checked that "
                       "%s only appends tokens to the model's vocabulary", model_name, tokenizer_name)
    return True


def build_model(config: ModelConfig, tokenizer, seed: int):  # noqa: ANN001, ANN201 - tokenizer, BertForMaskedLM
    """Create the ``BertForMaskedLM`` a run trains (as :class:`~framework.training.masked_lm.BertForMaskedLMAtLabels`,
    which runs the MLM head only at labelled positions; same weights, same export).

    Args:
        config: the run's model section (``name_or_path`` or ``config``; validated already).
        tokenizer: the run's tokenizer; its length bounds the embedding table from below.
        seed: seeds the initialisation of new weights (all of them from scratch; a missing head otherwise).

    Raises:
        ConfigError: a pretrained model given a tokenizer of another vocabulary, or a larger one without
            ``config.resize_embeddings`` (:func:`check_vocabulary`).
    """
    import pickle

    import torch

    from framework.training.masked_lm import BertForMaskedLMAtLabels as BertForMaskedLM
    from framework.training.safe_load import UnsafeFileError, describe_unpickling_error

    torch.manual_seed(seed)
    attention = attention_implementation()
    if config.name_or_path:
        try:
            # weights_only=True (transformers 5's default, kept explicit): a pickled pytorch_model.bin runs nothing.
            model = BertForMaskedLM.from_pretrained(config.name_or_path, weights_only=True,
                                                    **({"attn_implementation": attention} if attention else {}))
        except pickle.UnpicklingError as exc:
            message = describe_unpickling_error(config.name_or_path, exc)
            raise UnsafeFileError(f"--model {config.name_or_path}: {message}") from None
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(
                f"cannot load a BERT checkpoint from {config.name_or_path}: give --model a folder with config.json "
                f"and weights, or a hub name ({exc})"
            ) from exc
        source = f"pretrained {config.name_or_path}"
        tokenizer_name = str(config.tokenizer or getattr(tokenizer, "name_or_path", "") or config.name_or_path)
        same = Path(tokenizer_name) == Path(config.name_or_path) or tokenizer_name == config.name_or_path
        check_vocabulary(config.name_or_path, model.get_input_embeddings().num_embeddings,
                         None if same else model_vocabulary(config.name_or_path), tokenizer, tokenizer_name,
                         config.resize_embeddings)
    else:
        model = BertForMaskedLM(bert_config(config.config or "tiny", len(tokenizer), tokenizer.pad_token_id,
                                            attn_implementation=attention))
        source = f"from scratch ({config.config or 'tiny'})"
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:
        # Round up to a multiple of 8 so fp16 tensor cores keep their fast path.
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8)
        logger.info("resized token embeddings from %d to %d rows for a %d-token tokenizer",
                    embeddings, model.get_input_embeddings().num_embeddings, len(tokenizer))
    params = sum(p.numel() for p in model.parameters())
    logger.info("model: BertForMaskedLM %s, %.1fM parameters, vocabulary %d, attention %s", source, params / 1e6,
                len(tokenizer), model.config._attn_implementation)
    return model
