"""The run configuration: typed sections, read from YAML and the command line, validated before heavy work.

A run is described by one :class:`RunConfig` with six sections::

    data:       where the preprocessed corpus is and how examples are cut
    model:      which checkpoint to continue from, or which architecture to build from scratch
    masking:    the masking strategy and its options
    training:   DeepSpeed config, length of the run, optimisation overrides, logging and evaluation cadence
    checkpoint: output folder, checkpoint cadence, retention and resumption
    report:     where metrics go (W&B, TensorBoard or only metrics.jsonl)

Precedence, lowest first: the dataclass defaults, ``--config run.yaml``, then command-line flags. Only flags
that are actually given override the file. :func:`load_run_config` validates the result before any model,
data or DeepSpeed work starts, so a typo costs a second, not a queue slot; every message says what to change.

Secrets: no field holds an API key (W&B reads ``WANDB_API_KEY`` from the environment). A run config that tries
to carry one is rejected, and :func:`redact_secrets` scrubs any mapping before it is printed or saved.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

import yaml

from framework.secrets import is_secret_name, redact_secrets

REPO_ROOT = Path(__file__).resolve().parents[1]
DS_CONFIG_DIR = REPO_ROOT / "ds_configs"
MODEL_PRESETS = ("tiny", "small", "base")
REPORT_TARGETS = ("wandb", "tensorboard", "none")
DEMO_PRESET: dict[str, dict[str, Any]] = {
    # Fills only what the user did not set, and only when no corpus is given (``data.dir`` unset). Sized so a
    # 2-core CPU shows a clearly falling training and validation loss within the 3-minute demo budget.
    "training": {"max_steps": 300, "log_every": 10, "eval_every": 50},
    # Running the demo again continues (or, when finished, just re-evaluates and re-exports) the same run.
    "checkpoint": {"save_every": 100, "resume": "auto"},
}



RESOLVED = "resolved"  # the saved run config's record section (RunConfig.resolved), skipped by the loader


class ConfigError(ValueError):
    """A run configuration that cannot work; the message says where the problem is and what to change."""


@dataclass
class DataConfig:
    """Where the corpus comes from and how it becomes examples.

    Attributes:
        dir: output folder of ``launch/preprocess.py`` (``train.txt``, ``valid.txt``, ``keywords.txt``).
            ``None`` runs on the embedded demo corpus, preprocessed into ``OUTPUT/data`` on first use.
        train_file: training sentences, relative to ``dir``.
        valid_file: validation sentences, relative to ``dir``; evaluation is skipped when it is missing.
        lexicons: keyword lexicons (entity dictionaries); ``None`` means ``dir/keywords.txt`` where it exists.
        cache_dir: where segmented caches live; ``None`` means ``dir/segmented``.
        seq_len: example length in tokens, ``[CLS]`` and ``[SEP]`` included.
        segment_workers: processes that segment the corpus on first use (``None``: all cores).
        loader_workers: data-loader worker processes per rank (0 masks in the training process).
        max_eval_examples: cap on validation sentences per evaluation, so evaluation stays cheap.
        packing: several sentences per training row of ``seq_len`` tokens, each attending only to itself
            (:mod:`framework.batching.packing`). ``None`` (the default): on when DeepSpeed runs on CUDA (the
            ``2080ti.json`` and ``multi-gpu.json`` runs), off on a CPU (``cpu.json``: demo, tests, CI). A run
            saves the resolved value. Validation batches stay padded either way.
        length_bucketing: without packing, sort the sentences of each optimiser step by length before cutting
            them into micro-batches, so that each pads to similar lengths (needs gradient accumulation > 1).
    """

    dir: str | None = None
    train_file: str = "train.txt"
    valid_file: str = "valid.txt"
    lexicons: list[str] | None = None
    cache_dir: str | None = None
    seq_len: int = 128
    segment_workers: int | None = None
    loader_workers: int = 0
    max_eval_examples: int = 2000
    packing: bool | None = None
    length_bucketing: bool = False


@dataclass
class ModelConfig:
    """The model to train.

    Give either ``name_or_path`` (any BERT checkpoint ``from_pretrained`` loads: a hub name such as
    ``hfl/chinese-roberta-wwm-ext`` or a local folder) or ``config`` (``tiny``, ``small``, ``base`` or a BERT
    ``config.json``) for a model from scratch, with ``tokenizer``. From scratch without a tokenizer, a
    WordPiece vocabulary of ``vocab_size`` tokens is built from the training corpus into ``OUTPUT/tokenizer``.

    Attributes:
        name_or_path: pretrained checkpoint to continue from.
        config: architecture for a model from scratch.
        tokenizer: tokenizer folder or hub name; defaults to ``name_or_path`` for a pretrained model.
        vocab_size: size bound of a vocabulary built from the corpus.
        resize_embeddings: let a pretrained model's embedding table grow to a larger tokenizer that appends
            tokens to the model's vocabulary (the new rows start untrained). Off: a tokenizer with more tokens
            than the table is an error. A tokenizer of another vocabulary is an error either way.
    """

    name_or_path: str | None = None
    config: str | None = None
    tokenizer: str | None = None
    vocab_size: int = 8000
    resize_embeddings: bool = False


@dataclass
class MaskingConfig:
    """The masking strategy (see ``docs/masking.md``): a registered name or ``package.module:Class``."""

    name: str = "entity_wwm"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    """Length of the run, optimisation and cadence.

    The optimisation fields default to ``None``: the DeepSpeed config decides. A value set here (or on the
    command line) fills the DeepSpeed config's ``"auto"`` entries and overrides explicit ones, and the override
    is logged. Where both are unset, :mod:`framework.training.deepspeed_config` uses its documented default.

    Attributes:
        deepspeed_config: DeepSpeed JSON; ``None`` picks ``ds_configs/2080ti.json`` on a GPU and
            ``ds_configs/cpu.json`` otherwise.
        max_steps: optimiser steps to run (wins over ``epochs`` when both are given).
        epochs: passes over the training data when ``max_steps`` is not given (default 1).
        seed: seeds data order, masking, initialisation and dropout.
        lr, weight_decay, warmup_steps, micro_batch_size, gradient_accumulation_steps, gradient_clipping:
            overrides of the DeepSpeed config.
        log_every: optimiser steps between training log records.
        eval_every: optimiser steps between evaluations (0: only at the end).
        compile: ``torch.compile`` the model through DeepSpeed's ``engine.compile()`` (same weights, checkpoints
            and export; the first steps include compilation).
        max_bad_steps: optimiser steps in a row with a NaN or infinite loss after which the run stops (their
            updates are skipped; the last checkpoint with finite weights is kept).
    """

    deepspeed_config: str | None = None
    max_steps: int | None = None
    epochs: int | None = None
    seed: int = 42
    lr: float | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    micro_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    gradient_clipping: float | None = None
    log_every: int = 10
    eval_every: int = 200
    compile: bool = False
    max_bad_steps: int = 10


@dataclass
class CheckpointConfig:
    """Output folder, checkpoints and resumption.

    Attributes:
        output_dir: everything the run writes: ``checkpoints/``, ``model/`` (the export), ``metrics.jsonl``,
            ``loss.png``, ``run_config.yaml``.
        save_every: optimiser steps between checkpoints (0: only at the end).
        keep_last: complete checkpoints to keep; older ones are deleted.
        resume: ``auto`` (the latest complete checkpoint in ``output_dir``, or a fresh start when there is
            none), a checkpoint folder, or ``None`` for a fresh start.
        export: write a transformers folder to ``output_dir/model`` at the end.
    """

    output_dir: str = "runs/demo"
    save_every: int = 500
    keep_last: int = 3
    resume: str | None = None
    export: bool = True


@dataclass
class ReportConfig:
    """Where metrics go besides ``metrics.jsonl`` (always written on rank 0).

    Attributes:
        report_to: ``wandb`` (offline when there is no key or network), ``tensorboard`` or ``none``.
        project, run_name, tags, wandb_entity: W&B run identity.
        masked_examples: masked sentences shown in W&B's example table at the start of the run.
    """

    report_to: str = "none"
    project: str = "academic-bert"
    run_name: str | None = None
    tags: list[str] = field(default_factory=list)
    wandb_entity: str | None = None
    masked_examples: int = 16


@dataclass
class RunConfig:
    """The whole run: one instance is built, validated, printed once and saved beside every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # What the run resolved (DeepSpeed JSON used and its content, vocabulary size, model revision, package
    # versions, framework commit), filled by the trainer and saved as a ``resolved:`` section. A record, not a
    # setting: ``--config`` skips it (the run resolves afresh), so a saved run_config.yaml loads as it is.
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def is_demo(self) -> bool:
        """True when no corpus was given: the run uses the embedded demo corpus."""
        return self.data.dir is None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable form with any secret-looking entry redacted (no ``resolved`` while empty)."""
        mapping = dataclasses.asdict(self)
        if not mapping.get(RESOLVED):
            mapping.pop(RESOLVED, None)
        return redact_secrets(mapping)

    def to_yaml(self) -> str:
        """The configuration as YAML, in the layout ``--config`` reads back."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, folder: str | Path) -> None:
        """Write ``run_config.json`` and ``run_config.yaml`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run_config.json").write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        (folder / "run_config.yaml").write_text(self.to_yaml(), encoding="utf-8")

    @classmethod
    def from_dict(cls, mapping: dict[str, Any], source: str = "<dict>", lines: dict[str, int] | None = None) -> "RunConfig":
        """Build from a nested mapping (a parsed ``run.yaml``); unknown sections or keys are errors."""
        cfg = cls()
        _apply_mapping(cfg, mapping, source, lines or {})
        return cfg

    def apply_demo_preset(self, explicit: set[str]) -> None:
        """For a demo run, set the :data:`DEMO_PRESET` values whose dotted keys are not in ``explicit``."""
        if not self.is_demo:
            return
        for section, values in DEMO_PRESET.items():
            for key, value in values.items():
                if f"{section}.{key}" in explicit:
                    continue
                if section == "training" and key == "max_steps" and "training.epochs" in explicit:
                    continue  # --epochs asked for whole passes; a preset step count would cut them short
                setattr(getattr(self, section), key, value)

    def validate(self) -> None:
        """Raise :class:`ConfigError` for the first setting that cannot work, naming the fix."""
        _validate(self)


# ----------------------------------------------------------------------------------------------------------
# YAML


def _key_lines(node: yaml.Node, prefix: str = "") -> dict[str, int]:
    """Dotted key -> 1-based line number, for error messages that point into the file."""
    out: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            out[dotted] = key_node.start_mark.line + 1
            if dotted.count(".") < 1:  # sections only; masking.args values are free-form
                out.update(_key_lines(value_node, dotted + "."))
    return out


def read_yaml_config(path: str | Path) -> RunConfig:
    """Read ``run.yaml`` into a :class:`RunConfig` (not yet validated)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder; give a run.yaml file (e.g. --config {path / 'run_config.yaml'})")
    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, dict):
        raise ConfigError(f"{path}:1: a run config is a mapping of sections (data, model, masking, ...), got {type(mapping).__name__}")
    return RunConfig.from_dict(mapping, str(path), _key_lines(node) if node is not None else {})


def _field_types(section: Any) -> dict[str, Any]:
    return {f.name: f for f in fields(section)}


def _apply_mapping(cfg: RunConfig, mapping: dict[str, Any], source: str, lines: dict[str, int]) -> None:
    sections = _field_types(cfg)
    sections.pop(RESOLVED)
    for name, values in mapping.items():
        where = f"{source}:{lines[name]}" if name in lines else source
        if name == RESOLVED:
            continue  # a saved run's record of what it resolved; this run resolves its own
        if name not in sections:
            raise ConfigError(f"{where}: unknown section {name!r}; the sections are {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: section {name!r} must be a mapping of keys to values")
        section = getattr(cfg, name)
        known = _field_types(section)
        for key, value in values.items():
            dotted = f"{name}.{key}"
            where = f"{source}:{lines[dotted]}" if dotted in lines else source
            if is_secret_name(str(key)):
                raise ConfigError(f"{where}: {dotted} looks like a secret; never put API keys in a run config "
                                  f"(set WANDB_API_KEY in the environment or run `wandb login`)")
            if key not in known:
                raise ConfigError(f"{where}: unknown key {dotted!r}; section {name!r} accepts {', '.join(known)}")
            setattr(section, key, _coerce(value, known[key], dotted, where))


def _coerce(value: Any, f: dataclasses.Field, dotted: str, where: str) -> Any:
    """Check a YAML/CLI value against the field's annotation (only the simple types a run config uses)."""
    hint = str(f.type)
    if value is None:
        if "None" in hint:
            return None
        raise ConfigError(f"{where}: {dotted} cannot be empty; give a value ({hint})")
    if hint.startswith("bool"):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {dotted} must be true or false, got {value!r}")
    if hint.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: {dotted} must be an integer, got {value!r}")
    if hint.startswith("float"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: {dotted} must be a number, got {value!r}")
    if hint.startswith("str"):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: {dotted} must be a string, got {value!r}")
    if hint.startswith("list"):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{where}: {dotted} must be a list of strings, got {value!r}")
    if hint.startswith("dict"):
        if isinstance(value, dict):
            return value
        raise ConfigError(f"{where}: {dotted} must be a mapping, got {value!r}")
    return value


# ----------------------------------------------------------------------------------------------------------
# Command line

# flag -> (dotted field, argparse type, help). Flags default to SUPPRESS so that only given ones override.
_FLAGS: dict[str, tuple[str, Any, str]] = {
    "--data": ("data.dir", str, "preprocessing output folder (train.txt, valid.txt, keywords.txt); default: demo corpus"),
    "--lexicon": ("data.lexicons", str, "comma-separated keyword lexicons (default DATA/keywords.txt)"),
    "--cache-dir": ("data.cache_dir", str, "segmented-cache folder (default DATA/segmented)"),
    "--seq-len": ("data.seq_len", int, "example length in tokens including [CLS]/[SEP] (default 128)"),
    "--loader-workers": ("data.loader_workers", int, "data-loader worker processes per rank (default 0)"),
    "--max-eval-examples": ("data.max_eval_examples", int, "validation sentences per evaluation (default 2000)"),
    "--packing": ("data.packing", "bool", "pack several sentences per row, each attending only to itself; "
                  "--no-packing pads one a row (default: packing on CUDA, padding on CPU)"),
    "--length-bucketing": ("data.length_bucketing", "true", "without packing: sort each step's sentences by "
                           "length into its micro-batches (default off)"),
    "--model": ("model.name_or_path", str, "pretrained BERT to continue from: hub name or local folder"),
    "--model-config": ("model.config", str, "model from scratch: tiny, small, base or a BERT config.json"),
    "--tokenizer": ("model.tokenizer", str, "tokenizer folder or hub name (default: --model, or built from the corpus)"),
    "--vocab-size": ("model.vocab_size", int, "size of a vocabulary built from the corpus (default 8000)"),
    "--resize-embeddings": ("model.resize_embeddings", "true", "grow a pretrained --model's embedding table to a "
                            "larger --tokenizer that appends tokens to its vocabulary (default: an error)"),
    "--masking": ("masking.name", str, "masking strategy name or package.module:Class (default entity_wwm)"),
    "--masking-args": ("masking.args", "mapping", "strategy options as JSON/YAML, e.g. '{\"mask_prob\": 0.2}'"),
    "--deepspeed_config": ("training.deepspeed_config", str, "DeepSpeed JSON (default: ds_configs/2080ti.json on GPU, cpu.json on CPU)"),
    "--max-steps": ("training.max_steps", int, "optimiser steps to run"),
    "--epochs": ("training.epochs", int, "passes over the data when --max-steps is not given (default 1)"),
    "--seed": ("training.seed", int, "random seed (default 42)"),
    "--lr": ("training.lr", float, "peak learning rate (overrides the DeepSpeed config)"),
    "--weight-decay": ("training.weight_decay", float, "weight decay (overrides the DeepSpeed config)"),
    "--warmup-steps": ("training.warmup_steps", int, "warm-up steps (overrides the DeepSpeed config)"),
    "--micro-batch-size": ("training.micro_batch_size", int, "examples per rank per forward pass"),
    "--grad-accum": ("training.gradient_accumulation_steps", int, "micro-batches per optimiser step"),
    "--grad-clip": ("training.gradient_clipping", float, "gradient-norm clipping threshold"),
    "--log-every": ("training.log_every", int, "steps between training log records (default 10)"),
    "--eval-every": ("training.eval_every", int, "steps between evaluations, 0 for only at the end (default 200)"),
    "--max-bad-steps": ("training.max_bad_steps", int, "steps in a row with a NaN/inf loss before the run stops "
                        "(default 10)"),
    "--compile": ("training.compile", "true", "torch.compile the model via DeepSpeed's engine.compile() (default off)"),
    "--output-dir": ("checkpoint.output_dir", str, "output folder (default runs/demo)"),
    "--save-every": ("checkpoint.save_every", int, "steps between checkpoints, 0 for only at the end (default 500)"),
    "--keep-last": ("checkpoint.keep_last", int, "complete checkpoints to keep (default 3)"),
    "--resume": ("checkpoint.resume", str, "auto (latest complete checkpoint in --output-dir) or a checkpoint folder"),
    "--no-export": ("checkpoint.export", "false", "do not export a transformers folder at the end"),
    "--report-to": ("report.report_to", str, "wandb, tensorboard or none (default none)"),
    "--project": ("report.project", str, "W&B project (default academic-bert)"),
    "--run-name": ("report.run_name", str, "W&B run name"),
    "--tags": ("report.tags", str, "comma-separated W&B tags"),
    "--wandb-entity": ("report.wandb_entity", str, "W&B entity (team or user)"),
}
# Further spellings of a flag: DeepSpeed's own examples write --deepspeed_config, the rest of the table uses dashes.
_ALIASES: dict[str, tuple[str, ...]] = {"--deepspeed_config": ("--deepspeed-config",)}


def _masking_help(text: str) -> str:
    """``--masking``'s help with the strategies this installation has (built-ins and entry-point plugins)."""
    from framework.masking.registry import available_strategies  # numpy, no torch: --help stays fast

    return f"{text}; available: {', '.join(available_strategies())}"


def build_parser() -> argparse.ArgumentParser:
    """The ``launch/pretrain.py`` argument parser (also accepts the flags the ``deepspeed`` launcher adds)."""
    parser = argparse.ArgumentParser(
        prog="launch/pretrain.py",
        description="Continued pretraining of a Chinese BERT with DeepSpeed. With no arguments: a tiny demo run "
                    "on the embedded corpus. Each flag overrides the run.yaml key shown in brackets.",
    )
    parser.add_argument("--config", help="run.yaml with sections data/model/masking/training/checkpoint/report")
    for flag, (dotted, kind, help_text) in _FLAGS.items():
        names = (flag, *_ALIASES.get(flag, ()))
        if dotted == "masking.name":
            help_text = _masking_help(help_text)
        if kind in ("true", "false"):
            parser.add_argument(*names, dest=dotted, action=f"store_{kind}", default=argparse.SUPPRESS,
                                help=f"{help_text} [{dotted}]")
        elif kind == "bool":  # --flag / --no-flag
            parser.add_argument(*names, dest=dotted, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{help_text} [{dotted}]")
        else:
            metavar = "JSON" if kind == "mapping" else flag.lstrip("-").split("-")[-1].upper()
            parser.add_argument(*names, dest=dotted, type=str if kind == "mapping" else kind, metavar=metavar,
                                default=argparse.SUPPRESS, help=f"{help_text} [{dotted}]")
    # Console only, not part of the run (launch/pretrain.py reads it before DeepSpeed starts; framework/console.py).
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="also show DeepSpeed's start-up lines (accelerator, op build, scheduler warning)")
    # Added by the deepspeed launcher (or by habit from DeepSpeed examples); the rank comes from the environment.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--deepspeed", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _parse_mapping(text: str) -> dict[str, Any]:
    """``--masking-args`` text as a mapping, with the masking registry's parser (JSON or YAML)."""
    from framework.masking.base import MaskingConfigError
    from framework.masking.registry import parse_masking_args

    try:
        return parse_masking_args(text)
    except MaskingConfigError as exc:
        raise ConfigError(str(exc)) from exc


def load_run_config(argv: Sequence[str] | None = None) -> RunConfig:
    """Parse the command line (and ``--config``), apply overrides and validate.

    Raises:
        ConfigError: for an unreadable file, an unknown key, a wrong type or a setting that cannot work.
    """
    args = vars(build_parser().parse_args(argv))
    explicit: set[str] = set()
    cfg = RunConfig()
    if args.get("config"):
        cfg = read_yaml_config(args["config"])
        mapping = yaml.safe_load(Path(args["config"]).read_text(encoding="utf-8")) or {}
        explicit = {f"{sec}.{key}" for sec, values in mapping.items() for key in (values or {})}
    args.pop("config", None)
    args.pop("local_rank", None)
    args.pop("deepspeed", None)
    args.pop("verbose", None)
    for dotted, value in args.items():
        flag = next(f for f, (d, _, _) in _FLAGS.items() if d == dotted)
        section_name, key = dotted.split(".")
        section = getattr(cfg, section_name)
        if _FLAGS[flag][1] == "mapping":
            value = _parse_mapping(value)
        elif dotted in ("data.lexicons", "report.tags"):
            value = [v.strip() for v in value.split(",") if v.strip()]
        setattr(section, key, _coerce(value, _field_types(section)[key], dotted, flag))
        explicit.add(dotted)
    cfg.apply_demo_preset(explicit)
    cfg.validate()
    return cfg


# ----------------------------------------------------------------------------------------------------------
# Validation


def _positive(value: int | float | None, name: str, flag: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "positive"
        raise ConfigError(f"{name}={value} must be {bound}: set {flag} (or {name} in run.yaml)")


def _validate(cfg: RunConfig) -> None:
    d, m, t, c, r = cfg.data, cfg.model, cfg.training, cfg.checkpoint, cfg.report
    if d.dir is not None:
        root = Path(d.dir)
        if root.is_file():
            raise ConfigError(f"data.dir={d.dir} is a file; --data takes the folder holding it: --data {root.parent}")
        if not root.is_dir():
            raise ConfigError(f"data.dir={d.dir}: no such folder; give --data the output folder of launch/preprocess.py")
        if not (root / d.train_file).is_file():
            raise ConfigError(f"data.dir={d.dir} has no {d.train_file}: run launch/preprocess.py --output {d.dir} first")
    for lex in d.lexicons or []:
        if Path(lex).is_dir():
            raise ConfigError(f"data.lexicons: {lex} is a folder; --lexicon takes files: --lexicon {Path(lex) / 'keywords.txt'}")
        if not Path(lex).is_file():
            raise ConfigError(f"data.lexicons: {lex} does not exist; pass a keywords.txt written by launch/preprocess.py")
    if not 8 <= d.seq_len <= 512:
        raise ConfigError(f"data.seq_len={d.seq_len} must be between 8 and 512 (BERT's position table): set --seq-len")
    _positive(d.segment_workers, "data.segment_workers", "data.segment_workers")
    _positive(d.loader_workers, "data.loader_workers", "--loader-workers", allow_zero=True)
    _positive(d.max_eval_examples, "data.max_eval_examples", "--max-eval-examples")
    if d.packing and d.length_bucketing:
        raise ConfigError("data.packing and data.length_bucketing exclude each other (packed rows have no padding "
                          "to bucket): drop --length-bucketing, or give --no-packing")

    if m.name_or_path and m.config:
        raise ConfigError("give either --model (continue a pretrained checkpoint) or --model-config (from scratch), not both")
    if m.config and m.config not in MODEL_PRESETS:
        if Path(m.config).is_dir():
            raise ConfigError(f"model.config={m.config} is a folder; --model-config takes a file: "
                              f"--model-config {Path(m.config) / 'config.json'} (or --model {m.config} to continue it)")
        if not Path(m.config).is_file():
            raise ConfigError(f"model.config={m.config!r}: use one of {', '.join(MODEL_PRESETS)} or the path of a BERT config.json")
        _check_bert_config_file(Path(m.config))
    for flag, dotted, value in (("--model", "model.name_or_path", m.name_or_path),
                                ("--tokenizer", "model.tokenizer", m.tokenizer)):
        if value and Path(value).is_file():
            raise ConfigError(f"{dotted}={value} is a file; {flag} takes the folder holding it: "
                              f"{flag} {Path(value).parent}")
    if m.name_or_path and _looks_local(m.name_or_path) and not Path(m.name_or_path).is_dir():
        raise ConfigError(f"model.name_or_path={m.name_or_path}: no such folder; give a saved model folder or a hub name")
    if m.tokenizer and _looks_local(m.tokenizer) and not Path(m.tokenizer).is_dir():
        raise ConfigError(f"model.tokenizer={m.tokenizer}: no such folder; give a tokenizer folder (vocab.txt) or a hub name")
    _positive(m.vocab_size, "model.vocab_size", "--vocab-size")
    if m.resize_embeddings and not m.name_or_path:
        raise ConfigError("--resize-embeddings (model.resize_embeddings) applies to a pretrained --model; a model "
                          "from scratch is sized for its tokenizer already: drop the flag")

    if not cfg.masking.name:
        raise ConfigError("masking.name is empty: give --masking entity_wwm (or another registered strategy)")

    if t.deepspeed_config is not None and Path(t.deepspeed_config).is_dir():
        raise ConfigError(f"--deepspeed_config {t.deepspeed_config} is a folder; give a JSON file in it, e.g. "
                          f"--deepspeed_config {DS_CONFIG_DIR / 'cpu.json'}")
    if t.deepspeed_config is not None and not Path(t.deepspeed_config).is_file():
        available = ", ".join(sorted(p.name for p in DS_CONFIG_DIR.glob("*.json")))
        raise ConfigError(f"--deepspeed_config {t.deepspeed_config}: no such file (the repository ships {available} in {DS_CONFIG_DIR})")
    _positive(t.max_steps, "training.max_steps", "--max-steps")
    _positive(t.epochs, "training.epochs", "--epochs")
    if t.seed < 0:
        raise ConfigError(f"training.seed={t.seed} must be zero or more: set --seed")
    _positive(t.lr, "training.lr", "--lr")
    _positive(t.weight_decay, "training.weight_decay", "--weight-decay", allow_zero=True)
    _positive(t.warmup_steps, "training.warmup_steps", "--warmup-steps", allow_zero=True)
    _positive(t.micro_batch_size, "training.micro_batch_size", "--micro-batch-size")
    _positive(t.gradient_accumulation_steps, "training.gradient_accumulation_steps", "--grad-accum")
    _positive(t.gradient_clipping, "training.gradient_clipping", "--grad-clip", allow_zero=True)
    _positive(t.log_every, "training.log_every", "--log-every")
    _positive(t.eval_every, "training.eval_every", "--eval-every", allow_zero=True)
    _positive(t.max_bad_steps, "training.max_bad_steps", "--max-bad-steps")

    if not c.output_dir:
        raise ConfigError("checkpoint.output_dir is empty: set --output-dir")
    _positive(c.save_every, "checkpoint.save_every", "--save-every", allow_zero=True)
    _positive(c.keep_last, "checkpoint.keep_last", "--keep-last")
    if c.resume not in (None, "auto") and Path(c.resume).is_file():
        raise ConfigError(f"--resume {c.resume} is a file; give the checkpoint folder holding it: --resume "
                          f"{Path(c.resume).parent} (or --resume auto)")
    if c.resume not in (None, "auto") and not Path(c.resume).is_dir():
        raise ConfigError(f"--resume {c.resume}: no such checkpoint folder; use --resume auto to pick the latest "
                          f"complete checkpoint in {c.output_dir}/checkpoints")

    if r.report_to not in REPORT_TARGETS:
        raise ConfigError(f"report.report_to={r.report_to!r}: use one of {', '.join(REPORT_TARGETS)} (--report-to)")
    _positive(r.masked_examples, "report.masked_examples", "report.masked_examples", allow_zero=True)


def _check_bert_config_file(path: Path) -> None:
    """A ``--model-config FILE`` must be a JSON object describing a BERT (checked before any heavy work)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        line = getattr(exc, "lineno", 1)
        raise ConfigError(f"{path}:{line}: not valid JSON; --model-config needs a BERT config.json") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}:1: a BERT config.json is a JSON object")
    if values.get("model_type", "bert") != "bert":
        raise ConfigError(f"{path}: model_type={values['model_type']!r}; this framework trains BERT-architecture models")


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (``org/name``): absolute, relative with ./ or ../, or with 2+ slashes."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") >= 2 or Path(name).exists()
