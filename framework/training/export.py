"""Exporting a trained model as a plain transformers folder.

The folder holds ``config.json``, ``model.safetensors`` (fp32) and the tokenizer files, so that
``BertForMaskedLM.from_pretrained``, ``BertTokenizer.from_pretrained`` and ``pipeline("fill-mask")`` load it
with no DeepSpeed installed, plus the model card ``README.md`` (and the ``model_card.json`` it is rendered from,
:mod:`framework.training.model_card`). Two sources:

* :func:`export_from_engine`: the live engine (or model) at the end of a run.
* :func:`export_checkpoint`: a DeepSpeed checkpoint folder written by ``engine.save_checkpoint(root, tag)``.
  ZeRO stage 1-3 checkpoints hold the fp32 master weights partitioned across ranks; DeepSpeed's
  ``zero_to_fp32`` reassembles them. A stage-0 checkpoint holds whole module weights in
  ``mp_rank_00_model_states.pt`` (in the training precision; they are widened to fp32).

Rebuilding the model needs its architecture and tokenizer. Each checkpoint tag folder carries them in
``hf_config/`` (``config.json`` plus tokenizer files, written by :func:`write_hf_config`); for checkpoints
without it, ``run_config.json`` (the run's model section) is used, with the vocabulary size read from the
saved embedding matrix.

Safety: every file is read with ``torch.load(weights_only=True)`` and the allow-list of the few classes DeepSpeed
pickles (:mod:`framework.training.safe_load`), ``zero_to_fp32``'s shard reads included; a file that pickles
anything else is refused with an :class:`ExportError` naming it and the offending global, and nothing of it runs.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import torch

from framework.training.checkpoint import MARKER as COMPLETE_MARKER  # written last, once every rank has saved

logger = logging.getLogger(__name__)

MODEL_STATES = "mp_rank_00_model_states.pt"
HF_CONFIG_DIR = "hf_config"
RUN_CONFIG = "run_config.json"
_ZERO_SHARDS = "*zero_pp_rank_*_optim_states.pt"  # stage 1-2 ("bf16_" prefix in bf16) and stage 3 shards
_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")
_FRAMEWORK_TAG = re.compile(r"^step-\d+$")


class ExportError(RuntimeError):
    """A checkpoint or model cannot be exported; the message names the folder, what is missing and the fix."""


# ----------------------------------------------------------------------------------------------------------
# Public API


def write_hf_config(model_or_config: Any, tokenizer: Any, folder: str | Path) -> Path:
    """Write ``folder/hf_config/`` (the model's ``config.json`` and the tokenizer files) for later export.

    Call it (rank 0) for every checkpoint tag folder, so that :func:`export_checkpoint` can rebuild the model
    without the original run's paths.
    """
    target = Path(folder) / HF_CONFIG_DIR
    target.mkdir(parents=True, exist_ok=True)
    config = getattr(model_or_config, "config", model_or_config)
    config.save_pretrained(str(target))
    _load_tokenizer(tokenizer).save_pretrained(str(target))
    return target


def export_from_engine(engine_or_model: Any, tokenizer: Any, out_dir: str | Path,
                       card_facts: dict[str, Any] | None = None) -> Path | None:
    """Write the engine's (or a bare model's) weights in fp32 as a transformers folder; returns ``out_dir``.

    With ZeRO stages 0-2 every rank holds the whole module, so calling this on rank 0 alone is enough (other
    ranks return ``None`` and write nothing). With ZeRO-3 the parameters are partitioned and gathering them
    is a collective: then every rank must call it.

    Args:
        engine_or_model: a DeepSpeed engine (its ``.module`` is exported) or a ``BertForMaskedLM``.
        tokenizer: a transformers tokenizer, or the path of a tokenizer folder.
        out_dir: folder to write (created; existing model files in it are replaced).
        card_facts: what the run knows for the model card ``README.md`` (see
            :func:`framework.training.model_card.run_card_facts`); ``None`` writes a card of the folder's own facts.
    """
    module = getattr(engine_or_model, "module", engine_or_model)
    if not hasattr(module, "config") or not hasattr(module, "state_dict"):
        raise ExportError(f"export_from_engine: {type(module).__name__} is not a transformers model (no .config)")
    stage = engine_or_model.zero_optimization_stage() if hasattr(engine_or_model, "zero_optimization_stage") else 0
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if distributed else 0

    if stage == 3:
        import deepspeed

        # Collective: each rank contributes its partition; only rank 0 keeps a copy.
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = _fp32_cpu(module.state_dict()) if rank == 0 else None
    else:
        state = _fp32_cpu(module.state_dict()) if rank == 0 else None
    if rank != 0:
        return None
    return _write_transformers_folder(module.config, state, tokenizer, Path(out_dir), source=f"engine (ZeRO-{stage})",
                                      card_facts=card_facts)


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Export a DeepSpeed checkpoint as a transformers folder and return ``out_dir``.

    Args:
        checkpoint_dir: a tag folder (``.../checkpoints/step-00000200``, the one holding ``mp_rank_00_model_states.pt``)
            or the folder above it (``.../checkpoints``; the tag in its ``latest`` file, else the newest complete
            tag, is exported).
        out_dir: folder to write.
        tokenizer_dir: tokenizer folder; by default the checkpoint's ``hf_config/``, else the run config's
            tokenizer.
    """
    tag_dir = resolve_tag_folder(Path(checkpoint_dir))
    model_states = _load_model_states(tag_dir / MODEL_STATES)
    stage = int((model_states.get("ds_config") or {}).get("zero_optimization", {}).get("stage", 0) or 0)
    has_shards = any(tag_dir.glob(_ZERO_SHARDS))

    if stage >= 1 or has_shards:
        if not has_shards:
            raise ExportError(
                f"{tag_dir}: a ZeRO-{stage} checkpoint without its optimizer shards ({_ZERO_SHARDS}); copy the whole "
                "tag folder from the training machine (every rank's shard files)"
            )
        state = _zero_fp32_state_dict(tag_dir)
        source = f"{tag_dir} (ZeRO-{stage}, fp32 master weights)"
    else:
        module = model_states.get("module")
        if not module:
            raise ExportError(f"{tag_dir / MODEL_STATES}: no 'module' weights in this DeepSpeed file")
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in module.values() if t.is_floating_point()})
        state = _fp32_cpu(module)
        source = f"{tag_dir} (ZeRO-0, module weights in {'/'.join(dtypes)} widened to fp32)"

    config = _model_config(tag_dir, state)
    tokenizer = tokenizer_dir if tokenizer_dir is not None else _tokenizer_source(tag_dir)
    from framework.training.model_card import checkpoint_card_facts

    return _write_transformers_folder(config, state, tokenizer, Path(out_dir), source=source,
                                      card_facts=checkpoint_card_facts(tag_dir, model_states))


def resolve_tag_folder(path: Path) -> Path:
    """The checkpoint tag folder that ``path`` names (see :func:`export_checkpoint`), with clear errors."""
    if not path.is_dir():
        raise ExportError(f"{path}: no such checkpoint folder")
    if (path / MODEL_STATES).is_file():
        _check_complete(path)
        return path
    latest = path / "latest"
    if latest.is_file():
        tag = latest.read_text(encoding="utf-8").strip()
        if not (path / tag / MODEL_STATES).is_file():
            raise ExportError(f"{latest} names tag {tag!r}, but {path / tag / MODEL_STATES} does not exist")
        _check_complete(path / tag)
        return path / tag
    tags = sorted(p for p in path.iterdir() if (p / MODEL_STATES).is_file())
    complete = [p for p in tags if (p / COMPLETE_MARKER).is_file() or not _FRAMEWORK_TAG.match(p.name)]
    if not complete:
        raise ExportError(
            f"{path}: no DeepSpeed checkpoint here (expected {MODEL_STATES} in this folder or in a tag folder below "
            f"it{'; the tag folders found are incomplete saves' if tags else ''}); give the folder that "
            "engine.save_checkpoint wrote, e.g. OUTPUT/checkpoints/step-00000200"
        )
    if len(complete) > 1:
        logger.info("%s holds %d checkpoints and no 'latest' file; exporting the newest, %s", path, len(complete),
                    complete[-1].name)
    return complete[-1]


# ----------------------------------------------------------------------------------------------------------
# Reading checkpoints


def _check_complete(tag_dir: Path) -> None:
    """Refuse a framework checkpoint whose save was interrupted (no ``COMPLETE`` marker) or whose files no longer
    match its manifest (truncated, emptied or corrupted since)."""
    if not _FRAMEWORK_TAG.match(tag_dir.name):
        return
    if not (tag_dir / COMPLETE_MARKER).is_file():
        raise ExportError(
            f"{tag_dir}: no {COMPLETE_MARKER} marker, so its save was interrupted and shards may be missing; "
            "export an earlier complete checkpoint (or the checkpoints folder, which picks the latest complete one)"
        )
    from framework.training.checkpoint import verify_checkpoint

    reason = verify_checkpoint(tag_dir)
    if reason is not None:
        raise ExportError(f"{tag_dir}: damaged checkpoint: {reason}; export an earlier one")


def _load_model_states(path: Path) -> dict[str, Any]:
    """DeepSpeed's ``mp_rank_00_model_states.pt``, loaded weights-only (see the module docstring)."""
    from framework.training.safe_load import UnsafeFileError, load_weights_only

    try:
        return load_weights_only(path, map_location="cpu")
    except UnsafeFileError as err:
        raise ExportError(str(err)) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise ExportError(f"{path}: cannot read this DeepSpeed file ({type(err).__name__}: {err}); "
                          "it may be truncated by an interrupted save") from err


def _zero_fp32_state_dict(tag_dir: Path) -> dict[str, torch.Tensor]:
    """Reassemble the fp32 weights of a ZeRO checkpoint from all ranks' shards (DeepSpeed's zero_to_fp32)."""
    from framework.training.safe_load import UnsafeFileError, safe_zero_to_fp32

    try:
        with safe_zero_to_fp32() as zero_to_fp32:  # its shard reads are weights-only too
            state = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)
    except UnsafeFileError as err:
        raise ExportError(str(err)) from None
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise ExportError(f"{tag_dir}: DeepSpeed could not reassemble the ZeRO shards ({type(err).__name__}: "
                          f"{err}); the folder must hold every rank's *_optim_states.pt") from err
    return _fp32_cpu(state)


def _fp32_cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies; floating tensors in fp32 (integer buffers keep their dtype)."""
    return {k: (v.detach().to("cpu", torch.float32) if v.is_floating_point() else v.detach().cpu())
            for k, v in state.items()}


def _model_config(tag_dir: Path, state: dict[str, torch.Tensor]):  # noqa: ANN202 - transformers.BertConfig
    """The model's config from ``hf_config/``, else rebuilt from ``run_config.json`` and the weights' shapes."""
    from transformers import AutoConfig

    hf_config = tag_dir / HF_CONFIG_DIR / "config.json"
    if hf_config.is_file():
        return AutoConfig.from_pretrained(str(hf_config.parent))

    run_config = _run_config(tag_dir)
    if run_config is None:
        raise ExportError(
            f"{tag_dir}: neither {HF_CONFIG_DIR}/config.json nor {RUN_CONFIG} is here, so the model architecture is "
            "unknown; copy the checkpoint folder with those files, or export from the run's OUTPUT/model"
        )
    model = run_config.get("model", {})
    embeddings = state.get("bert.embeddings.word_embeddings.weight")
    if embeddings is None:
        raise ExportError(f"{tag_dir}: the weights have no bert.embeddings.word_embeddings.weight; not a BERT model")
    vocab_rows = int(embeddings.shape[0])
    if model.get("name_or_path"):
        try:
            config = AutoConfig.from_pretrained(model["name_or_path"])
        except (OSError, ValueError) as err:
            raise ExportError(
                f"{tag_dir / RUN_CONFIG}: model.name_or_path={model['name_or_path']!r} cannot be loaded here ({err}); "
                f"put its config.json into {tag_dir / HF_CONFIG_DIR}/"
            ) from err
    else:
        from framework.training.model import bert_config

        config = bert_config(model.get("config") or "tiny", vocab_rows, pad_token_id=0)
    config.vocab_size = vocab_rows  # the table may have been resized for an extended vocabulary
    return config


def _run_config(tag_dir: Path) -> dict[str, Any] | None:
    """``run_config.json`` of the checkpoint (tag folder first, then the folders above), or None."""
    for folder in (tag_dir, tag_dir.parent, tag_dir.parent.parent):
        path = folder / RUN_CONFIG
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise ExportError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    return None


def _tokenizer_source(tag_dir: Path) -> Path | str:
    """Where the checkpoint's tokenizer is: ``hf_config/``, the run config's tokenizer, or ``OUTPUT/tokenizer``."""
    candidates: list[Path | str] = [tag_dir / HF_CONFIG_DIR]
    model = (_run_config(tag_dir) or {}).get("model", {})
    candidates += [c for c in (model.get("tokenizer"), model.get("name_or_path")) if c]
    candidates.append(tag_dir.parent.parent / "tokenizer")  # OUTPUT/checkpoints/<tag> -> OUTPUT/tokenizer
    for candidate in candidates:
        if any((Path(candidate) / name).is_file() for name in _TOKENIZER_FILES):
            return candidate
    raise ExportError(
        f"{tag_dir}: no tokenizer found (looked in {', '.join(str(c) for c in candidates)}); pass the tokenizer "
        "folder the run used: launch/export.py CHECKPOINT OUT --tokenizer DIR"
    )


# ----------------------------------------------------------------------------------------------------------
# Writing the folder


def _load_tokenizer(tokenizer: Any):  # noqa: ANN202 - a transformers tokenizer
    """A tokenizer object, loading it when given a folder path."""
    if hasattr(tokenizer, "save_pretrained"):
        return tokenizer
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tokenizer))
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot load a tokenizer from {tokenizer} ({err}); give a folder with vocab.txt") from err


def _write_transformers_folder(config: Any, state: dict[str, torch.Tensor], tokenizer: Any, out_dir: Path,
                               source: str, card_facts: dict[str, Any] | None = None) -> Path:
    """Build a fresh fp32 ``BertForMaskedLM`` from ``config``, load ``state`` strictly, save it with the tokenizer
    and the model card (``README.md``, :mod:`framework.training.model_card`)."""
    from transformers import BertForMaskedLM

    bad = [name for name, tensor in state.items()
           if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all())]
    if bad:  # a model of NaNs loads and "works" everywhere downstream; refuse it here, before anything is written
        raise ExportError(f"{source}: {len(bad)} of {len(state)} tensors hold NaN or infinite values "
                          f"({', '.join(bad[:3])}{'...' if len(bad) > 3 else ''}); the training diverged. Export an "
                          "earlier checkpoint")
    tokenizer = _load_tokenizer(tokenizer)
    model = BertForMaskedLM(config).float()
    if len(tokenizer) > model.config.vocab_size:
        raise ExportError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens but the model only {model.config.vocab_size} "
            "embedding rows; this is not the tokenizer the model was trained with"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights (the MLM decoder shares the word embeddings) and non-persistent buffers may be absent.
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in missing if k not in tied and k not in buffers]
    if missing or unexpected:
        raise ExportError(
            f"{source}: the weights do not fit BertForMaskedLM({type(config).__name__}): missing {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    model.tie_weights()
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    if not (out_dir / "model.safetensors").is_file() and not any(out_dir.glob("model-*.safetensors")):
        raise ExportError(f"{out_dir}: save_pretrained wrote no safetensors weights; upgrade transformers (>=4.40)")
    from framework.training.model_card import write_model_card

    try:
        write_model_card(out_dir, card_facts)
    except (OSError, ValueError, TypeError, KeyError) as err:  # the weights are safe; a card must not undo an export
        logger.warning("%s: the model is exported but its model card (README.md) could not be written (%s: %s)",
                       out_dir, type(err).__name__, err)
    params = sum(p.numel() for p in model.parameters())
    logger.info("exported %s -> %s (%.1fM parameters, fp32, %d-token tokenizer)", source, out_dir, params / 1e6,
                len(tokenizer))
    return out_dir
