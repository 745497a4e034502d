"""Exporting a trained model as a plain transformers folder.

The folder holds ``config.json``, ``model.safetensors`` (fp32) and the tokenizer files, so that
``BertForMaskedLM.from_pretrained``, ``BertTokenizer.from_pretrained`` and ``pipeline("fill-mask")`` load it
with no DeepSpeed installed, plus the model card ``README.md`` (and the ``model_card.json`` it is rendered from,
:mod:`framework.training.model_card`). Two sources:

* :func:`export_from_engine`: the live engine (or model) at the end of a run.
* :func:`export_checkpoint`: a DeepSpeed checkpoint folder written by ``engine.save_checkpoint(root, tag)``.
  ZeRO stage 1-3 checkpoints hold the fp32 master weights partitioned across ranks; DeepSpeed's
  ``zero_to_fp32`` reassembles them. A stage-0 checkpoint holds whole module weights in
  ``mp_rank_00_model_states.pt``, in the training precision; in a bf16/fp16 run its ``'optimizer'`` entry also
  holds DeepSpeed's fp32 master copies (``fp32_groups`` of ``FP16_UnfusedOptimizer``, ``fp32_groups_flat`` of
  ``FP16_Optimizer``), and those are exported.

Master weights: a bf16/fp16 run keeps fp32 master weights in its optimizer and rounds them into the module after
every step. The module weights are therefore the masters rounded to 8 (bf16) or 11 (fp16) significant bits;
widening them back to fp32 would silently drop the precision the run paid for. Both sources export the masters
wherever the optimizer keeps them (ZeRO 0-2; see :func:`engine_master_weights` and
:func:`_checkpoint_master_state`) and the module weights only where they are the masters (fp32 runs). What the
weights were taken from is written to the model card (``weights_from``).

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

    The weights are the optimizer's fp32 master weights wherever it keeps them (bf16/fp16 at ZeRO 0-2, see
    :func:`engine_master_weights`), else the module's (fp32 runs, where they are the masters). Every rank must
    call it: under ZeRO-1/2 each rank holds a partition of the masters and reassembling them is an all-reduce,
    under ZeRO-3 gathering the parameters is a collective. Rank 0 alone writes; the others return ``None``.

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

        # Collective: each rank contributes its partition; only rank 0 keeps a copy. ZeRO-3's fp32 masters are
        # not gathered here (no recipe of this framework uses ZeRO-3): the card says these are module weights.
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            state = _fp32_cpu(module.state_dict()) if rank == 0 else None
        weights_from = f"{_module_dtype(module)} module weights widened to fp32 (ZeRO-3 masters are not gathered)"
    else:
        # Every rank: under ZeRO-1/2 reassembling a master parameter is an all-reduce over the partitions.
        masters, weights_from = engine_master_weights(engine_or_model)
        state = _with_masters(module, masters) if rank == 0 else None
    if rank != 0:
        return None
    return _write_transformers_folder(module.config, state, tokenizer, Path(out_dir), source=f"engine (ZeRO-{stage})",
                                      card_facts=card_facts, weights_from=weights_from)


def engine_master_weights(engine_or_model: Any) -> tuple[dict[int, torch.Tensor], str]:
    """The fp32 master copy of each parameter the optimizer holds one for, and what the weights are, in words.

    Returns ``({id(parameter): fp32 tensor}, description)``; parameters without an entry (all of them in an fp32
    run at ZeRO-0, frozen ones in any run) are their own masters. Where the masters live depends on DeepSpeed's
    wrapper (ZeRO-0 to 2; ZeRO-3 is not handled here):

    * ZeRO-0 with a client optimizer (our LAMB) in bf16/fp16: ``FP16_UnfusedOptimizer``, one fp32 clone per
      parameter in ``fp32_groups``, aligned with ``fp16_groups`` (the module's parameters, group by group).
    * ZeRO-0 with DeepSpeed's fused Adam: ``FP16_Optimizer``, one flat fp32 buffer per group in
      ``fp32_groups_flat``, laid out as ``fp16_groups`` (unflattened against them here).
    * ZeRO-1/2 and ``BF16_Optimizer``: each rank owns a partition of flat fp32 buffers, linked to the
      parameters (``_hp_mapping``); DeepSpeed's ``safe_get_full_fp32_param`` reassembles a parameter with an
      all-reduce, so every rank must call this function, in the same order (it walks ``named_parameters``).

    Tied parameters (the MLM decoder shares the word embeddings and its bias) are one parameter object, so
    every name of it gets the same master (see :func:`_with_masters`).
    """
    module = getattr(engine_or_model, "module", engine_or_model)
    optimizer = getattr(engine_or_model, "optimizer", None)
    dtype = _module_dtype(module)
    masters: dict[int, torch.Tensor] = {}
    if optimizer is not None:
        from deepspeed.runtime.fp16.fused_optimizer import FP16_Optimizer
        from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

        if isinstance(optimizer, FP16_UnfusedOptimizer):
            for low, high in zip(optimizer.fp16_groups, optimizer.fp32_groups, strict=True):
                masters.update({id(p): m for p, m in zip(low, high, strict=True)})
        elif isinstance(optimizer, FP16_Optimizer):
            from torch._utils import _unflatten_dense_tensors

            for low, flat in zip(optimizer.fp16_groups, optimizer.fp32_groups_flat, strict=True):
                masters.update({id(p): m for p, m in zip(low, _unflatten_dense_tensors(flat, low), strict=True)})
        else:
            from deepspeed.utils import safe_get_full_fp32_param

            for _, param in module.named_parameters():
                if hasattr(param, "_hp_mapping"):  # set on every rank, None where it owns no fragment
                    masters[id(param)] = safe_get_full_fp32_param(param)  # ZeRO-1/2, BF16_Optimizer
    if masters:
        return masters, f"fp32 master weights of {_a_run(dtype)}"
    if dtype == "fp32":
        return masters, "fp32 module weights of an fp32 run (they are the masters)"
    return masters, f"{dtype} module weights widened to fp32 (the optimizer keeps no fp32 master copy)"


def _with_masters(module: torch.nn.Module, masters: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``module``'s state dict (detached fp32 CPU copies) with each parameter replaced by its master.

    ``keep_vars=True`` keeps the parameter objects, so a tied weight listed under two names maps to one master.
    """
    state = module.state_dict(keep_vars=True)
    return _fp32_cpu({name: masters.get(id(tensor), tensor) for name, tensor in state.items()})


def _a_run(precision: str) -> str:
    """``a bf16 run``, ``an fp16 run``: the card's wording."""
    return f"{'an' if precision.startswith('f') else 'a'} {precision} run"


def _module_dtype(module: torch.nn.Module) -> str:
    """The floating dtype(s) of ``module``'s parameters, named as the run's precision (``bf16``, ``fp32``...)."""
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    return "/".join(sorted(_DTYPE_NAMES.get(d, str(d).removeprefix("torch.")) for d in dtypes)) or "fp32"


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
        # zero_to_fp32 reads the fp32 partitions (single_partition_of_fp32_groups), i.e. the masters.
        weights_from = f"fp32 master weights of {_a_run(_checkpoint_precision(model_states))}"
        config = _model_config(tag_dir, state)
    else:
        module = model_states.get("module")
        if not module:
            raise ExportError(f"{tag_dir / MODEL_STATES}: no 'module' weights in this DeepSpeed file")
        config = _model_config(tag_dir, module)
        state, weights_from = _checkpoint_master_state(tag_dir, model_states, config)
        source = f"{tag_dir} (ZeRO-0, {weights_from})"

    tokenizer = tokenizer_dir if tokenizer_dir is not None else _tokenizer_source(tag_dir)
    from framework.training.model_card import checkpoint_card_facts

    return _write_transformers_folder(config, state, tokenizer, Path(out_dir), source=source,
                                      card_facts=checkpoint_card_facts(tag_dir, model_states),
                                      weights_from=weights_from)


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


_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
MASTER_NAMES_KEY = "master_param_names"  # client_state entry of CheckpointManager.save (optimizer_param_names)


def optimizer_param_names(engine: Any) -> list[list[str]] | None:
    """Names of the parameters in each fp32 master group of a ZeRO-0 bf16/fp16 optimizer, group by group.

    DeepSpeed saves ``FP16_UnfusedOptimizer.fp32_groups`` / ``FP16_Optimizer.fp32_groups_flat`` without names;
    :class:`~framework.training.checkpoint.CheckpointManager` stores this list next to them so that
    :func:`export_checkpoint` maps the masters back to names without guessing. ``None`` where there is no such
    optimizer (fp32 runs; ZeRO-1+, whose shards carry their own ``param_shapes``).
    """
    groups = getattr(getattr(engine, "optimizer", None), "fp16_groups", None)
    module = getattr(engine, "module", None)
    stage = engine.zero_optimization_stage() if hasattr(engine, "zero_optimization_stage") else 0
    if groups is None or module is None or stage != 0:
        return None
    names = {id(p): n for n, p in module.named_parameters()}  # a tied parameter appears once, by its first name
    return [[names[id(p)] for p in group] for group in groups]


def _checkpoint_precision(model_states: dict[str, Any]) -> str:
    """``bf16``, ``fp16`` or ``fp32``, from the checkpoint's DeepSpeed config."""
    ds = model_states.get("ds_config") or {}
    for name in ("fp16", "bf16"):
        if (ds.get(name) or {}).get("enabled"):
            return name
    return "fp32"


def _checkpoint_master_state(tag_dir: Path, model_states: dict[str, Any],
                             config: Any) -> tuple[dict[str, torch.Tensor], str]:
    """A ZeRO-0 checkpoint's weights, with the optimizer's fp32 masters where it saved any, and their description.

    The masters are saved group by group without names (``'optimizer'``: ``fp32_groups``, a list of tensors per
    group, or ``fp32_groups_flat``, one flat buffer per group). Their names come from the checkpoint's own list
    (:func:`optimizer_param_names`), else, for checkpoints written before it, from the framework's grouping
    (:func:`~framework.training.deepspeed_config.optimizer_param_groups`) or one group in ``named_parameters``
    order (a client optimizer over ``model.parameters()``). A layout is only used when every master has its
    parameter's shape and rounds exactly to the saved module weight (DeepSpeed copies the rounded master into the
    module after every step), so a wrong guess cannot slip through; when none passes the module weights are
    exported, with a warning. Tied names (the decoder) share storage with the parameter they alias in the loaded
    file (``torch.save`` keeps the sharing) and get the same master.
    """
    module: dict[str, torch.Tensor] = model_states["module"]
    precision = _checkpoint_precision(model_states)
    optimizer = model_states.get("optimizer")
    optimizer = optimizer if isinstance(optimizer, dict) else {}
    if precision == "fp32" or not ({"fp32_groups", "fp32_groups_flat"} & optimizer.keys()):
        description = ("fp32 module weights of an fp32 run (they are the masters)" if precision == "fp32"
                       else f"{precision} module weights widened to fp32 (the checkpoint holds no fp32 masters)")
        return _fp32_cpu(module), description
    flat = "fp32_groups_flat" in optimizer
    groups = [[g] if flat else list(g) for g in optimizer["fp32_groups_flat" if flat else "fp32_groups"]]

    for names in _candidate_group_names(model_states, config):
        masters = _match_masters(groups, names, module, flat)
        if masters is not None:
            state = {}
            for key, tensor in module.items():
                alias = next((n for n in masters if _same_storage(module[n], tensor)), None)
                state[key] = masters[alias] if alias is not None else tensor
            return _fp32_cpu(state), f"fp32 master weights of {_a_run(precision)}"
    logger.warning("%s: the optimizer's fp32 master weights could not be matched to parameter names; exporting "
                   "the %s module weights widened to fp32 (without the masters' low bits)", tag_dir, precision)
    return _fp32_cpu(module), (f"{precision} module weights widened to fp32 (the checkpoint's fp32 masters could not "
                               "be matched to parameter names)")


def _candidate_group_names(model_states: dict[str, Any], config: Any) -> list[list[list[str]]]:
    """Parameter names per optimizer group: the checkpoint's own record first, then the framework's layouts."""
    candidates = []
    recorded = model_states.get(MASTER_NAMES_KEY)
    if recorded:
        candidates.append([list(group) for group in recorded])
    from transformers import BertForMaskedLM

    from framework.training.deepspeed_config import optimizer_param_groups

    with torch.device("meta"):  # names and shapes only; nothing is allocated
        model = BertForMaskedLM(config)
    names = {id(p): n for n, p in model.named_parameters()}
    candidates.append([[names[id(p)] for p in g["params"]] for g in optimizer_param_groups(model)])
    candidates.append([[n for n, p in model.named_parameters() if p.requires_grad]])
    return candidates


def _match_masters(groups: list[list[torch.Tensor]], names: list[list[str]], module: dict[str, torch.Tensor],
                   flat: bool) -> dict[str, torch.Tensor] | None:
    """``{name: master}`` when ``names`` lays out ``groups`` exactly (see :func:`_checkpoint_master_state`)."""
    if len(groups) != len(names) or any(n not in module for group in names for n in group):
        return None
    masters: dict[str, torch.Tensor] = {}
    for tensors, group_names in zip(groups, names):
        if flat:  # FP16_Optimizer: the group's parameters back to back, in the group's order
            sizes = [module[n].numel() for n in group_names]
            if tensors[0].dim() != 1 or tensors[0].numel() != sum(sizes):
                return None
            tensors = [t.view(module[n].shape) for t, n in zip(torch.split(tensors[0], sizes), group_names)]
        if len(tensors) != len(group_names):
            return None
        for tensor, name in zip(tensors, group_names):
            saved = module[name]
            if tensor.shape != saved.shape or not torch.equal(tensor.to(saved.dtype), saved):
                return None
            masters[name] = tensor
    return masters


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` is ``a`` under another name (a tied weight)."""
    return (a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() and a.shape == b.shape
            and a.stride() == b.stride() and a.storage_offset() == b.storage_offset())


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
                               source: str, card_facts: dict[str, Any] | None = None,
                               weights_from: str | None = None) -> Path:
    """Build a fresh fp32 ``BertForMaskedLM`` from ``config``, load ``state`` strictly, save it with the tokenizer
    and the model card (``README.md``, :mod:`framework.training.model_card`); ``weights_from`` (what ``state``
    was taken from, e.g. ``fp32 master weights of a bf16 run``) goes into the card."""
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

    if weights_from is not None:
        card_facts = {**(card_facts or {}), "weights_from": weights_from}
    try:
        write_model_card(out_dir, card_facts)
    except (OSError, ValueError, TypeError, KeyError) as err:  # the weights are safe; a card must not undo an export
        logger.warning("%s: the model is exported but its model card (README.md) could not be written (%s: %s)",
                       out_dir, type(err).__name__, err)
    params = sum(p.numel() for p in model.parameters())
    logger.info("exported %s -> %s (%.1fM parameters, fp32, %d-token tokenizer)", source, out_dir, params / 1e6,
                len(tokenizer))
    return out_dir
