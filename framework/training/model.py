"""Building the masked-language model and its tokenizer from the run config.

Two ways in:

* ``--model NAME_OR_PATH``: any BERT-architecture checkpoint that ``BertForMaskedLM.from_pretrained`` loads
  (``hfl/chinese-roberta-wwm-ext`` or a local folder). The MLM head is reused when the checkpoint has one.
* ``--model-config tiny|small|base|FILE`` with a tokenizer: a freshly initialised BERT. ``base`` is BERT-base's
  shape; ``small`` (4 layers, hidden 256) is for CPU studies; ``tiny`` (2 layers, hidden 128) is for the demo,
  tests and smoke runs.

Either way, when the tokenizer has more tokens than the embedding table (a vocabulary extended with domain
terms), the embeddings are resized so every id has a row, and attention runs on PyTorch's
``scaled_dot_product_attention`` (``attn_implementation="sdpa"``, fused kernels on GPU) wherever the installed
transformers supports it for BERT; the implementation in use is logged once with the model.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

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


def build_model(config: ModelConfig, tokenizer, seed: int):  # noqa: ANN001, ANN201 - tokenizer, BertForMaskedLM
    """Create the ``BertForMaskedLM`` a run trains (as :class:`~framework.training.masked_lm.BertForMaskedLMAtLabels`,
    which runs the MLM head only at labelled positions; same weights, same export).

    Args:
        config: the run's model section (``name_or_path`` or ``config``; validated already).
        tokenizer: the run's tokenizer; its length bounds the embedding table from below.
        seed: seeds the initialisation of new weights (all of them from scratch; a missing head otherwise).
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
