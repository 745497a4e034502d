"""The model card: ``README.md`` of an exported model folder, in Hugging Face's model-card layout.

Every export writes one (:mod:`framework.training.export` calls :func:`write_model_card`), so it lives with the
export in the training layer; the evaluation layer adds its results through :func:`record_results`. A folder
holds three files:

    model_card.json     the facts gathered at export: base model, corpus, lexicon, masking, steps, tokens seen,
                        hardware, final validation metrics, weights and what they were exported from
                        (``weights_from``, e.g. the fp32 master weights of a bf16 run; written once per export)
    eval_results.json   evaluation and fine-tuning results by key (``evaluate``, ``finetune/csl-category``...)
    README.md           rendered from the two files above, deterministically: same files, same bytes

The card is always re-rendered from both files, so recording a result never loses the export's facts, and
anything unknown (an old checkpoint, a folder this framework did not write) reads "unknown", never a guess.

Facts come from :func:`run_card_facts` at the end of a run (the live objects) or :func:`checkpoint_card_facts`
for ``launch/export.py`` (the checkpoint's ``run_config.json``, DeepSpeed's saved config and client state, the
``COMPLETE`` marker, the run folder's ``metrics.jsonl`` and the data folder's ``stats.json``).

Results recorded for earlier weights are not carried over to new ones: an export whose weights differ (by
SHA-256) from the folder's previous export moves ``eval_results.json`` aside to ``eval_results.stale.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import struct
from pathlib import Path
from typing import Any, Iterable

import yaml

from framework.data.atomic import atomic_text_file
from framework.jsonsafe import json_safe

logger = logging.getLogger(__name__)

CARD_FACTS = "model_card.json"
EVAL_RESULTS = "eval_results.json"
STALE_RESULTS = "eval_results.stale.json"
README = "README.md"
FORMAT_VERSION = 1
UNKNOWN = "unknown"

_ARCHITECTURE_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings", "vocab_size")
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
TOKENS_SEEN_NOTE = ("non-padding tokens fed to the model ([CLS]/[SEP] included), counted on rank 0 and multiplied "
                    "by the world size (ranks see equally many sequences, so this is an estimate)")


# ----------------------------------------------------------------------------------------------------------
# Public API


def write_model_card(model_dir: str | Path, facts: dict[str, Any] | None = None) -> Path:
    """Store ``facts`` (plus what the folder's own files say) as ``model_card.json`` and render ``README.md``.

    Called by every export, after the weights and tokenizer are written. ``facts`` is what
    :func:`run_card_facts` or :func:`checkpoint_card_facts` gathered (``None``: only the folder's own facts;
    everything else reads "unknown"). Returns the README path.
    """
    model_dir = Path(model_dir)
    facts = dict(facts or {})
    facts["format_version"] = FORMAT_VERSION
    facts.update(folder_facts(model_dir))
    previous = _read_json(model_dir / CARD_FACTS) or {}
    results_path = model_dir / EVAL_RESULTS
    if results_path.is_file() and (previous.get("weights") or {}).get("sha256") != facts["weights"].get("sha256"):
        # The results describe other weights; keep them next to the folder's files, out of the card.
        os.replace(results_path, model_dir / STALE_RESULTS)
        logger.warning("%s: the new weights differ from the ones evaluated; moved their results to %s",
                       model_dir, STALE_RESULTS)
    _write_json(model_dir / CARD_FACTS, facts)
    return render_to_folder(model_dir)


def record_results(model_dir: str | Path, key: str, result: dict[str, Any]) -> Path:
    """Store ``result`` under ``key`` in ``model_dir/eval_results.json`` and re-render the card; returns README.md.

    Args:
        model_dir: an exported model folder.
        key: what produced the result, e.g. ``evaluate`` or ``finetune/csl-category``; recording the same key
            again replaces its entry, other keys are kept.
        result: the command's result (nested dicts, lists, numbers and strings; non-finite numbers become
            ``null``).

    Raises:
        FileNotFoundError: ``model_dir`` is not a folder.
        ValueError: an empty key, or a result that is not a mapping.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"record_results: {model_dir} is not a model folder; give the exported model folder "
                                "(OUTPUT/model or what launch/export.py wrote)")
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"record_results: key must be a non-empty string such as 'evaluate', got {key!r}")
    if not isinstance(result, dict):
        raise ValueError(f"record_results({key!r}): result must be a dict, got {type(result).__name__}")
    results = _read_json(model_dir / EVAL_RESULTS) or {}
    if not isinstance(results, dict):
        raise ValueError(f"{model_dir / EVAL_RESULTS}: expected a JSON object of results by key, got "
                         f"{type(results).__name__}; move the file aside and record again")
    results[key.strip()] = json_safe(result)
    _write_json(model_dir / EVAL_RESULTS, results, sort_keys=False)  # a result's own order is its table's order
    return render_to_folder(model_dir)


def render_to_folder(model_dir: str | Path) -> Path:
    """Re-render ``README.md`` from the folder's ``model_card.json`` and ``eval_results.json``; returns its path.

    A folder without ``model_card.json`` (not exported by this framework, e.g. a downloaded hub model) gets its
    facts from its own files, and a README it already has is kept as ``README.original.md``.
    """
    model_dir = Path(model_dir)
    path = model_dir / README
    facts = _read_json(model_dir / CARD_FACTS)
    if facts is None:
        facts = folder_facts(model_dir)
        original = model_dir / "README.original.md"
        if path.is_file() and not original.exists():
            os.replace(path, original)
            logger.warning("%s was not written by an export of this framework; kept it as %s", path, original.name)
    results = _read_json(model_dir / EVAL_RESULTS) or {}
    with atomic_text_file(path) as f:
        f.write(render_model_card(facts, results))
    return path


def run_card_facts(cfg: Any, *, deepspeed: Any, world_size: int, device: Any, state: Any,
                   valid_metrics: dict[str, float] | None, data: Any, strategy: Any) -> dict[str, Any]:
    """The facts of a run that just finished (rank 0), for :func:`write_model_card`.

    Args:
        cfg: the run's :class:`~framework.config.RunConfig` (data folder and tokenizer resolved).
        deepspeed: the :class:`~framework.training.deepspeed_config.ResolvedDeepSpeedConfig`.
        world_size: ranks of the run.
        device: this rank's torch device.
        state: the final :class:`~framework.training.checkpoint.TrainState`.
        valid_metrics: the last evaluation's metrics (empty or ``None`` without a validation set).
        data: the run's ``PreparedData`` (data folder, segmented train/valid sets).
        strategy: the masking strategy the run trained with.
    """
    train_meta = getattr(data.train_set, "meta", None)
    valid_meta = getattr(data.valid_set, "meta", None) if data.valid_set is not None else None
    ds = deepspeed.config
    tokens = getattr(state, "tokens_seen", None)
    return {
        "source": "end of the pretraining run",
        "base_model": cfg.model.name_or_path,
        "model_config": None if cfg.model.name_or_path else (cfg.model.config or "tiny"),
        "tokenizer": cfg.model.tokenizer,
        "corpus": _corpus_facts(Path(data.data_dir), train_meta, valid_meta),
        "lexicon": _lexicon_facts(Path(data.data_dir), train_meta),
        "masking": {"name": cfg.masking.name, **_strategy_description(strategy), "resolved": True},
        "training": {
            "steps": int(state.step),
            "planned_steps": int(deepspeed.total_steps),
            "tokens_seen": int(tokens) * int(world_size) if tokens else None,
            "tokens_seen_note": TOKENS_SEEN_NOTE,
            "epochs_started": int(state.epoch) + 1,
            "seq_len": cfg.data.seq_len,
            "micro_batch_size": ds.get("train_micro_batch_size_per_gpu"),
            "gradient_accumulation_steps": ds.get("gradient_accumulation_steps"),
            "train_batch_size": ds.get("train_batch_size"),
            "optimizer": _optimizer_name(ds, deepspeed),
            "seed": cfg.training.seed,
        },
        "hardware": {"device": device_description(device), "precision": deepspeed.precision,
                     "zero_stage": deepspeed.zero_stage, "world_size": int(world_size)},
        "validation": _validation(valid_metrics, int(state.step)),
    }


def checkpoint_card_facts(tag_dir: str | Path, model_states: dict[str, Any] | None = None) -> dict[str, Any]:
    """The facts a checkpoint folder still holds, for :func:`write_model_card` (``launch/export.py``).

    Reads the tag folder's ``run_config.json`` (or the run folder's), DeepSpeed's saved ``ds_config`` and our
    ``train_state`` from ``model_states`` (``mp_rank_00_model_states.pt``, already loaded by the export), the
    ``COMPLETE`` marker (world size), the run folder's ``metrics.jsonl`` (the last validation record at or
    before the checkpoint's step) and the data folder's ``stats.json`` and segmented caches. What is missing
    stays ``None`` ("unknown" on the card); a damaged file is one warning, never a failed export.
    """
    tag_dir = Path(tag_dir)
    states = model_states or {}
    run_config = _find_run_config(tag_dir) or {}
    model = run_config.get("model") or {}
    data_cfg = run_config.get("data") or {}
    masking = run_config.get("masking") or {}
    training = run_config.get("training") or {}
    ds = states.get("ds_config") if isinstance(states.get("ds_config"), dict) else {}
    train_state = states.get("train_state") if isinstance(states.get("train_state"), dict) else {}
    marker = _read_json(tag_dir / "COMPLETE") or {}
    world = marker.get("world_size") or states.get("dp_world_size")
    step = train_state.get("step", states.get("global_steps"))
    tokens = train_state.get("tokens_seen")  # absent in checkpoints written before it was counted
    epoch = _int_or_none(train_state.get("epoch"))

    data_dir = Path(data_cfg["dir"]) if data_cfg.get("dir") else None
    train_meta = valid_meta = None
    if data_dir is not None:
        train_meta = _segmented_meta(data_dir, data_cfg, model, data_cfg.get("train_file") or "train.txt")
        valid_meta = _segmented_meta(data_dir, data_cfg, model, data_cfg.get("valid_file") or "valid.txt")
    run_dir = _run_folder(tag_dir, run_config)
    return {
        "source": f"checkpoint {tag_dir}",
        "base_model": model.get("name_or_path"),
        "model_config": None if model.get("name_or_path") else model.get("config"),
        "tokenizer": model.get("tokenizer"),
        "corpus": _corpus_facts(data_dir, train_meta, valid_meta) if data_dir is not None else {},
        "lexicon": _lexicon_facts(data_dir, train_meta) if data_dir is not None else {},
        "masking": _resolve_masking(masking),
        "training": {
            "steps": _int_or_none(step),
            "planned_steps": _int_or_none(training.get("max_steps")),
            "tokens_seen": int(tokens) * int(world) if tokens and world else None,
            "tokens_seen_note": TOKENS_SEEN_NOTE,
            "epochs_started": epoch + 1 if epoch is not None else None,
            "seq_len": data_cfg.get("seq_len"),
            "micro_batch_size": ds.get("train_micro_batch_size_per_gpu"),
            "gradient_accumulation_steps": ds.get("gradient_accumulation_steps"),
            "train_batch_size": ds.get("train_batch_size"),
            "optimizer": (ds.get("optimizer") or {}).get("type") if isinstance(ds.get("optimizer"), dict) else None,
            "seed": training.get("seed"),
        },
        "hardware": {"device": None, "precision": _precision(ds) if ds else None,
                     "zero_stage": int((ds.get("zero_optimization") or {}).get("stage", 0) or 0) if ds else None,
                     "world_size": _int_or_none(world)},
        "validation": _last_validation(run_dir / "metrics.jsonl", _int_or_none(step)) if run_dir else None,
    }


def folder_facts(model_dir: str | Path) -> dict[str, Any]:
    """What an exported folder says about itself: architecture (``config.json``) and weights (safetensors)."""
    model_dir = Path(model_dir)
    config = _read_json(model_dir / "config.json") or {}
    return {
        "architecture": {k: config.get(k) for k in _ARCHITECTURE_KEYS} | {
            "model_type": config.get("model_type"), "architectures": config.get("architectures")},
        "weights": _weights_facts(model_dir),
    }


def device_description(device: Any) -> str:
    """A device in words: the GPU's name (``NVIDIA GeForce RTX 2080 Ti``), or the CPU's."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.get_device_name(device)
        except (RuntimeError, AssertionError):
            return "CUDA GPU"
    cpu = platform.processor() or platform.machine() or "unknown"
    return f"CPU ({cpu}, {os.cpu_count()} cores)"


# ----------------------------------------------------------------------------------------------------------
# Rendering


def render_model_card(facts: dict[str, Any], results: dict[str, Any] | None = None) -> str:
    """The README text for ``facts`` and ``results``; a pure function of its arguments."""
    results = results or {}
    base = facts.get("base_model")
    masking = facts.get("masking") or {}
    training = facts.get("training") or {}
    hardware = facts.get("hardware") or {}
    arch = facts.get("architecture") or {}
    weights = facts.get("weights") or {}
    corpus = facts.get("corpus") or {}
    lexicon = facts.get("lexicon") or {}

    front: dict[str, Any] = {"language": ["zh"], "library_name": "transformers", "pipeline_tag": "fill-mask"}
    if base:
        front["base_model"] = base
    tags = ["bert", "fill-mask", "chinese", "academic", "masked-lm", "deepspeed"]
    if masking.get("name"):
        tags.append(str(masking["name"]).replace(":", "-"))
    front["tags"] = tags
    if corpus.get("datasets"):
        front["datasets"] = list(corpus["datasets"])
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]

    title = f"Chinese academic BERT ({masking.get('name') or 'unknown masking'})"
    lines += [f"# {title}", "",
              "A BERT masked-language model for Chinese academic text, "
              + (f"continued from `{base}`" if base else "trained from scratch")
              + f" by academic-bert with DeepSpeed. Exported from the {facts.get('source') or 'unknown source'}.",
              ""]

    lines += ["## Base model", ""]
    if base:
        lines += [f"Continued pretraining of `{base}`.", ""]
    else:
        spec = facts.get("model_config")
        lines += [f"From scratch: a new BERT (architecture `{_show(spec)}`).", ""]
    lines += [*_table(["setting", "value"], [[k, _show(arch.get(k))] for k in _ARCHITECTURE_KEYS]), ""]

    lines += ["## Training data", ""]
    lines += [*_table(["", "value"], [
        ["corpus folder", _show(corpus.get("data_dir"))],
        ["inputs", _show(", ".join(corpus["inputs"]) if corpus.get("inputs") else None)],
        ["papers read / train / valid", _slash(corpus.get("papers_read"), corpus.get("papers_train"),
                                                corpus.get("papers_valid"))],
        ["sentences train / valid", _slash(corpus.get("sentences_train"), corpus.get("sentences_valid"))],
        ["tokens train / valid (segmented, no special tokens)", _slash(corpus.get("tokens_train"),
                                                                       corpus.get("tokens_valid"))],
        ["keyword occurrences in train", _show(corpus.get("entities_train"))],
        ["input characters", _show(corpus.get("input_characters"))],
        ["lexicon keywords", _show(lexicon.get("keywords"))],
        ["lexicon files", _show(", ".join(lexicon["files"]) if lexicon.get("files") else None)],
    ]), ""]

    lines += ["## Masking", ""]
    args = masking.get("args")
    lines += [f"Strategy `{_show(masking.get('name'))}` "
              + ("with its resolved options:" if masking.get("resolved") else
                 "with the options as given (defaults not resolved):" if args is not None else "(options unknown)."),
              ""]
    if isinstance(args, dict) and args:
        # None is a real option value (no cap, no file), not a missing fact.
        rows = [[k, "none" if v is None else _cell(v)] for k, v in sorted(args.items())]
        lines.extend(_table(["option", "value"], rows))
        lines.append("")
    elif isinstance(args, dict):
        lines += ["(no options)", ""]

    lines += ["## Training", ""]
    planned = training.get("planned_steps")
    lines += [*_table(["", "value"], [
        ["optimiser steps", _show(training.get("steps")) + (f" (of {planned} planned)" if planned else "")],
        ["tokens seen", _show(training.get("tokens_seen"))],
        ["sequence length", _show(training.get("seq_len"))],
        ["micro-batch x accumulation x ranks = batch", " x ".join([
            _show(training.get("micro_batch_size")), _show(training.get("gradient_accumulation_steps")),
            _show(hardware.get("world_size"))]) + f" = {_show(training.get('train_batch_size'))}"],
        ["optimizer", _show(training.get("optimizer"))],
        ["seed", _show(training.get("seed"))],
    ]), ""]
    if training.get("tokens_seen") is not None:
        lines += [f"Tokens seen: {training.get('tokens_seen_note') or TOKENS_SEEN_NOTE}.", ""]

    lines += ["## Hardware", ""]
    zero = hardware.get("zero_stage")
    lines += [*_table(["", "value"], [
        ["device", _show(hardware.get("device"))],
        ["precision", _show(hardware.get("precision"))],
        ["ZeRO stage", _show(zero)],
        ["world size (ranks)", _show(hardware.get("world_size"))],
    ]), ""]

    lines += ["## Final validation", ""]
    validation = facts.get("validation")
    if validation and validation.get("metrics"):
        lines += [f"Held-out masked-LM metrics at step {_show(validation.get('step'))} (the run's validation set, "
                  "its own fixed masks):", ""]
        rows = [[k, _cell(v)] for k, v in sorted(validation["metrics"].items())]  # null: not computed ("-")
        lines += [*_table(["metric", "value"], rows), ""]
    else:
        lines += ["unknown (no validation record)", ""]

    lines += ["## Weights", ""]
    lines += [*_table(["", "value"], [
        ["dtype", _show(weights.get("dtype"))],
        ["exported from", _show(facts.get("weights_from"))],  # e.g. the fp32 master weights of a bf16 run
        ["parameters (stored tensors)", _show(weights.get("parameters"))],
        ["files", _show(", ".join(weights["files"]) if weights.get("files") else None)],
        ["sha256", _show(weights.get("sha256"))],
    ]), ""]

    lines += ["## How to load", "", "```python",
              "from transformers import AutoTokenizer, BertForMaskedLM, pipeline",
              "",
              'model = BertForMaskedLM.from_pretrained("MODEL_DIR")  # this folder',
              'tokenizer = AutoTokenizer.from_pretrained("MODEL_DIR")',
              'fill = pipeline("fill-mask", model="MODEL_DIR")',
              'print(fill("本文研究了复合[MASK]料的力学性能"))',
              "```", "",
              "Whole words for runs of masks: `python launch/fill_mask.py --model MODEL_DIR "
              "\"本文研究了[MASK][MASK]材料的力学性能\"`.", ""]

    if results:
        lines += ["## Evaluation results", ""]
        for key in sorted(results):
            lines += [f"### {key}", ""]
            lines += [*_result_section(results[key]), ""]
    return "\n".join(lines).rstrip() + "\n"


def _result_section(result: Any) -> list[str]:
    """A result as Markdown: its scalar leaves as one table (``a/b`` names), lists of rows as further tables."""
    if not isinstance(result, dict):
        return [_cell(result)]
    scalars: list[list[str]] = []
    tables: list[str] = []
    for name, value in _leaves(result):
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns: dict[str, None] = {}
            for row in value:
                for k, v in row.items():
                    if not isinstance(v, (dict, list)):
                        columns.setdefault(str(k), None)
            tables += ["", f"`{name}`:", ""]
            tables += _table(list(columns), [[_cell(row.get(c)) for c in columns] for row in value])
        elif isinstance(value, list):
            scalars.append([name, ", ".join(_cell(v) for v in value)])
        else:
            scalars.append([name, _cell(value)])
    out = _table(["metric", "value"], scalars) if scalars else []
    return out + tables


def _leaves(mapping: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key in mapping:
        value = mapping[key]
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, name + "/")
        else:
            yield name, value


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(_escape(h) for h in header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in rows]
    return out


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _cell(value: Any) -> str:
    """A result value: floats with 4 decimals (scientific when tiny or huge), ``null`` as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def _show(value: Any) -> str:
    """A fact: ``unknown`` when missing, integers with thousands separators, floats like :func:`_cell`."""
    if value is None or value == "":
        return UNKNOWN
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_show(v) for v in value) if value else UNKNOWN
    return _cell(value)


def _slash(*values: Any) -> str:
    return " / ".join(_show(v) for v in values)


# ----------------------------------------------------------------------------------------------------------
# Gathering facts


def _corpus_facts(data_dir: Path | None, train_meta: dict[str, Any] | None,
                  valid_meta: dict[str, Any] | None) -> dict[str, Any]:
    """Corpus statistics: ``stats.json`` of the preprocessing, sentence/token counts of the segmented caches."""
    stats = _read_json(data_dir / "stats.json") if data_dir is not None else None
    stats = stats or {}
    inputs = [str(p) for p in ((stats.get("config") or {}).get("inputs") or [])]
    facts: dict[str, Any] = {
        "data_dir": str(data_dir) if data_dir is not None else None,
        "inputs": inputs,
        # Dataset names for the card's front matter: the input files the papers came from.
        "datasets": sorted({Path(p).name.split(".")[0] for p in inputs}),
        "papers_read": stats.get("papers_read"),
        "papers_train": stats.get("papers_train"),
        "papers_valid": stats.get("papers_valid"),
        "sentences_train": stats.get("sentences_train"),
        "sentences_valid": stats.get("sentences_valid"),
        "input_characters": stats.get("input_characters"),
        "tokens_train": None, "tokens_valid": None, "entities_train": None,
    }
    for split, meta in (("train", train_meta), ("valid", valid_meta)):
        if meta:
            facts[f"sentences_{split}"] = meta.get("sentences", facts[f"sentences_{split}"])
            facts[f"tokens_{split}"] = meta.get("tokens")
    if train_meta:
        facts["entities_train"] = train_meta.get("entities")
    return facts


def _lexicon_facts(data_dir: Path | None, train_meta: dict[str, Any] | None) -> dict[str, Any]:
    """The keyword lexicon: how many keywords the segmenter loaded (else the preprocessing's count)."""
    if train_meta and "lexicon_keywords" in train_meta:
        return {"keywords": train_meta.get("lexicon_keywords"), "files": list(train_meta.get("lexicons") or [])}
    stats = (_read_json(data_dir / "stats.json") if data_dir is not None else None) or {}
    return {"keywords": (stats.get("keywords") or {}).get("lexicon_entries"), "files": []}


def _strategy_description(strategy: Any) -> dict[str, Any]:
    """``{"name", "args"}`` of a built strategy, its options resolved (defaults filled in)."""
    try:
        described = strategy.describe()
        return {"name": described.get("name"), "args": json_safe(described.get("args") or {})}
    except Exception as err:  # noqa: BLE001 - a third-party strategy's describe() must not fail an export
        logger.warning("masking strategy describe() failed (%s); the card lists no options", err)
        return {"args": None}


def _resolve_masking(masking: dict[str, Any]) -> dict[str, Any]:
    """The run config's masking section with its options resolved through the strategy's Options class."""
    name = masking.get("name")
    args = masking.get("args") if isinstance(masking.get("args"), dict) else {}
    if not name:
        return {"name": None, "args": None, "resolved": False}
    try:
        from framework.masking.base import build_options
        from framework.masking.registry import resolve_strategy

        cls = resolve_strategy(name)
        options = build_options(cls.Options, getattr(cls, "name", None) or name, dict(args))
        return {"name": name, "args": json_safe(dataclasses.asdict(options)), "resolved": True}
    except Exception as err:  # noqa: BLE001 - e.g. a plugin strategy not importable where we export
        logger.info("masking strategy %r cannot be resolved here (%s); the card lists its options as given", name, err)
        return {"name": name, "args": json_safe(args), "resolved": False}


def _segmented_meta(data_dir: Path, data_cfg: dict[str, Any], model: dict[str, Any],
                    corpus_file: str) -> dict[str, Any] | None:
    """The ``meta.json`` of the segmented cache built from ``data_dir/corpus_file`` with the run's tokenizer."""
    corpus = (data_dir / corpus_file).resolve()
    root = Path(data_cfg["cache_dir"]) if data_cfg.get("cache_dir") else data_dir / "segmented"
    if not root.is_dir():
        return None
    tokenizer = str(model.get("tokenizer") or model.get("name_or_path") or "")
    matches = []
    for meta_path in sorted(root.glob(f"{Path(corpus_file).stem}-*/meta.json")):
        meta = _read_json(meta_path) or {}
        if meta.get("corpus") == str(corpus) and (not tokenizer or meta.get("tokenizer") == tokenizer):
            matches.append(meta)
    if len(matches) > 1:
        # Several caches (other lexicons or segmenter settings): the counts may differ, so say nothing.
        lexicons = data_cfg.get("lexicons")
        wanted = sorted(str(Path(p).resolve()) for p in lexicons) if lexicons else None
        exact = [m for m in matches if wanted is not None and sorted(m.get("lexicons") or []) == wanted]
        return exact[0] if len(exact) == 1 else None
    return matches[0] if matches else None


def _find_run_config(tag_dir: Path) -> dict[str, Any] | None:
    for folder in (tag_dir, tag_dir.parent, tag_dir.parent.parent):
        config = _read_json(folder / "run_config.json")
        if config is not None:
            return config
    return None


def _run_folder(tag_dir: Path, run_config: dict[str, Any]) -> Path | None:
    """The run's output folder (``metrics.jsonl``): ``OUTPUT`` of ``OUTPUT/checkpoints/<tag>``, else the config's."""
    candidates = [tag_dir.parent.parent]
    output_dir = (run_config.get("checkpoint") or {}).get("output_dir")
    if output_dir:
        candidates.append(Path(output_dir))
    return next((c for c in candidates if (c / "metrics.jsonl").is_file()), None)


def _last_validation(metrics_path: Path, step: int | None) -> dict[str, Any] | None:
    """The last ``valid`` record of ``metrics.jsonl`` at or before ``step`` (a resumed run may log a step twice)."""
    best: dict[str, Any] | None = None
    try:
        with open(metrics_path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a killed run
                if record.get("split") != "valid" or (step is not None and record.get("step", 0) > step):
                    continue
                if best is None or record.get("step", 0) >= best.get("step", 0):
                    best = record
    except OSError as err:
        logger.warning("cannot read %s (%s); the card's validation metrics are unknown", metrics_path, err)
        return None
    if best is None:
        return None
    metrics = {k: v for k, v in best.items() if k not in ("step", "split", "wall_time")}
    return _validation(metrics, best.get("step"))


def _validation(metrics: dict[str, Any] | None, step: int | None) -> dict[str, Any] | None:
    """Validation metrics for the card (timings are left out: they describe the machine, not the model)."""
    if not metrics:
        return None
    kept = {k: v for k, v in metrics.items() if not k.endswith("_time_s")}
    return {"step": step, "metrics": json_safe(kept)}


def _weights_facts(model_dir: Path) -> dict[str, Any]:
    """dtype, stored parameter count and SHA-256 of the folder's safetensors files (read from their headers)."""
    files = sorted(model_dir.glob("model*.safetensors"))
    if not files:
        return {"dtype": None, "parameters": None, "files": [], "sha256": None}
    dtypes: set[str] = set()
    parameters = 0
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
            f.seek(0)
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtypes.add(_SAFETENSORS_DTYPES.get(entry["dtype"], entry["dtype"]))
            parameters += math.prod(entry["shape"])
    return {"dtype": "/".join(sorted(dtypes)), "parameters": parameters, "files": [p.name for p in files],
            "sha256": digest.hexdigest()}


def _precision(ds: dict[str, Any]) -> str:
    if (ds.get("fp16") or {}).get("enabled"):
        return "fp16"
    if (ds.get("bf16") or {}).get("enabled"):
        return "bf16"
    return "fp32"


def _optimizer_name(ds: dict[str, Any], deepspeed: Any) -> str | None:
    if getattr(deepspeed, "client_optimizer", None) is not None:
        return "Lamb (framework.training.lamb, client optimizer)"
    optimizer = ds.get("optimizer")
    return optimizer.get("type") if isinstance(optimizer, dict) else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _read_json(path: Path) -> Any:
    """A JSON file's content, ``None`` when absent; a damaged file is a warning and ``None``."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        logger.warning("cannot read %s (%s); treating it as absent", path, err)
        return None


def _write_json(path: Path, data: Any, sort_keys: bool = True) -> None:
    with atomic_text_file(path) as f:
        json.dump(data, f, ensure_ascii=False, indent=2, sort_keys=sort_keys, allow_nan=False)
        f.write("\n")
