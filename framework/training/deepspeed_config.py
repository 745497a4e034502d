"""Turning a DeepSpeed JSON file into the config an engine can run with here.

Three jobs, in order:

1. **Fill ``"auto"``** entries (batch geometry, learning rate, weight decay, schedule length, clipping) from the
   run config, or from the defaults below where the run config leaves them unset. A value given in the run
   config (or on the command line) also overrides an explicit one in the file, and that is logged; the one
   exception is an explicit ``train_batch_size``, which micro-batch x accumulation x ranks must match (an error
   naming both figures otherwise, see :func:`batch_geometry`).
2. **Fit the hardware**: DeepSpeed refuses fp16 without CUDA and ``FusedLamb`` is a CUDA kernel that must be
   prebuilt or compiled with ``nvcc``. On a machine without CUDA, fp16 becomes bf16; wherever FusedLamb cannot
   load (no CUDA, or CUDA without a prebuilt op or a compiler), LAMB becomes :class:`framework.training.lamb.Lamb`
   (the same update rule in plain PyTorch), handed to DeepSpeed as a client optimizer. Each switch is said in
   one log line.
3. **Derive** the schedule length from the data: with ``--epochs``, the number of optimiser steps follows from
   the corpus size, the world size and the batch geometry.

The result is a :class:`ResolvedDeepSpeedConfig`; the trainer logs its changes once (rank 0), passes
``.config`` to ``deepspeed.initialize`` and, when set, the optimizer built by ``.build_client_optimizer``.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from framework.config import DS_CONFIG_DIR, ConfigError, TrainingConfig

logger = logging.getLogger(__name__)

AUTO = "auto"
DEFAULTS: dict[str, Any] = {
    "micro_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "gradient_clipping": 1.0,
    "lr": 1e-4,
    "weight_decay": 0.01,
    "betas": [0.9, 0.999],
    "eps": 1e-6,
    "warmup_fraction": 0.1,  # of the run's optimiser steps, when warm-up steps are "auto"
}
LAMB_TYPES = {"lamb", "fusedlamb"}
# FusedLamb's option names -> framework Lamb's.
_LAMB_OPTION_NAMES = {
    "lr": "lr", "betas": "betas", "eps": "eps", "weight_decay": "weight_decay", "max_coeff": "max_trust_ratio",
    "min_coeff": "min_trust_ratio", "bias_correction": "bias_correction", "eps_inside_sqrt": "eps_inside_sqrt",
}


def accelerator_is_cuda() -> bool:
    """Whether DeepSpeed runs on CUDA here (its accelerator, which ``DS_ACCELERATOR`` can override)."""
    try:
        from deepspeed.accelerator import get_accelerator
    except ImportError:  # pragma: no cover - deepspeed is a hard dependency
        return torch.cuda.is_available()
    return get_accelerator().device_name() == "cuda"


def fused_lamb_available() -> bool:
    """Whether DeepSpeed's FusedLamb can run here: CUDA, and the op prebuilt or compilable just in time.

    DeepSpeed builds FusedLamb on first use with ``nvcc``; a pip-installed torch on a workstation often has no
    CUDA toolkit beside it, and ``deepspeed.initialize`` would then fail after the model is already loaded.
    """
    try:
        from deepspeed.accelerator import get_accelerator
        from deepspeed.git_version_info import installed_ops

        builder = get_accelerator().create_op_builder("FusedLambBuilder")
        if builder is None or not builder.is_compatible(verbose=False):
            return False
        if installed_ops.get(builder.NAME):
            return True
        from torch.utils.cpp_extension import CUDA_HOME
    except Exception:  # noqa: BLE001 - any failure to probe means "cannot count on it"
        return False
    return CUDA_HOME is not None


def default_deepspeed_config_path(cuda: bool) -> Path:
    """The config a run uses without ``--deepspeed_config``: the 2080 Ti recipe on a GPU, CPU otherwise."""
    return DS_CONFIG_DIR / ("2080ti.json" if cuda else "cpu.json")


@dataclass
class ResolvedDeepSpeedConfig:
    """A DeepSpeed config ready for ``deepspeed.initialize`` on this machine.

    Attributes:
        source: the JSON file it came from.
        config: the resolved dict (no ``"auto"`` left).
        total_steps: optimiser steps of the run.
        client_optimizer: options of the framework's :class:`~framework.training.lamb.Lamb`, when it replaces
            the file's optimizer; ``None`` when DeepSpeed builds the optimizer itself.
        switches: what was changed to fit the hardware, one sentence each.
        overrides: run-config values that replaced explicit values of the file, one sentence each.
    """

    source: Path
    config: dict[str, Any]
    total_steps: int
    client_optimizer: dict[str, Any] | None = None
    switches: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    def log_changes(self) -> None:
        """Log each hardware switch (a warning) and each override (info), one line apiece; call on rank 0."""
        for note in self.switches:
            logger.warning("hardware fallback: %s", note)
        for note in self.overrides:
            logger.info("DeepSpeed config: %s", note)

    @property
    def micro_batch_size(self) -> int:
        """Examples per rank per forward pass."""
        return int(self.config["train_micro_batch_size_per_gpu"])

    @property
    def gradient_accumulation_steps(self) -> int:
        """Micro-batches per optimiser step."""
        return int(self.config["gradient_accumulation_steps"])

    @property
    def precision(self) -> str:
        """``fp16``, ``bf16`` or ``fp32``."""
        if self.config.get("fp16", {}).get("enabled"):
            return "fp16"
        if self.config.get("bf16", {}).get("enabled"):
            return "bf16"
        return "fp32"

    @property
    def zero_stage(self) -> int:
        """The ZeRO stage (0 when the file has no ``zero_optimization`` section)."""
        return int(self.config.get("zero_optimization", {}).get("stage", 0))

    def build_client_optimizer(self, param_groups: Iterable[dict[str, Any]]) -> torch.optim.Optimizer | None:
        """The framework's LAMB over ``param_groups`` when it replaces the file's optimizer, else ``None``."""
        if self.client_optimizer is None:
            return None
        from framework.training.lamb import Lamb

        return Lamb(param_groups, **self.client_optimizer)


def load_deepspeed_json(path: str | Path) -> dict[str, Any]:
    """Read a DeepSpeed JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        available = ", ".join(sorted(p.name for p in DS_CONFIG_DIR.glob("*.json")))
        raise ConfigError(f"--deepspeed_config {path}: no such file (ds_configs/ has {available})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{path}:1: a DeepSpeed config is a JSON object")
    return value


def check_checkpoint_storage(cfg: dict[str, Any], source: str | Path) -> None:
    """Refuse DeepSpeed's ``"checkpoint": {"use_node_local_storage": true}``.

    With it DeepSpeed picks its checkpoint writers by *local* rank (``engine.local_rank``), so the local rank 0 of
    every node writes ``mp_rank_00_model_states.pt``: into the one shared checkpoint folder this framework saves to,
    that is one file written by several processes at once. The framework's checkpoints (a staging folder renamed
    by global rank 0 once its manifest lists every rank's files) need all of them in one shared folder anyway.
    """
    section = cfg.get("checkpoint")
    if isinstance(section, dict) and section.get("use_node_local_storage"):
        raise ConfigError(
            f"{source}: \"checkpoint\": {{\"use_node_local_storage\": true}} is not supported: every node's local "
            "rank 0 would write the model states into the run's shared checkpoint folder at once. Remove it; the "
            "checkpoints need an --output-dir that every node shares (docs/training.md, \"Several nodes\")")


def _pick(run_value: Any, file_value: Any, default: Any, name: str, notes: list[str]) -> Any:
    """Run config beats the file; the file beats the default; ``"auto"`` or absent means "not given"."""
    if run_value is not None:
        if file_value not in (None, AUTO) and file_value != run_value:
            notes.append(f"{name}={run_value} (run config) overrides {file_value} (DeepSpeed config)")
        return run_value
    if file_value not in (None, AUTO):
        return file_value
    return default


def batch_geometry(cfg: dict[str, Any], training: TrainingConfig, world_size: int, source: str | Path,
                   overrides: list[str] | None = None) -> tuple[int, int]:
    """``(micro-batch, accumulation)`` for a DeepSpeed JSON ``cfg`` and the run's overrides on ``world_size`` ranks.

    An explicit ``train_batch_size`` (a global batch that should not change with the number of GPUs) derives
    the accumulation when that is left to ``"auto"``. When micro-batch and accumulation are both set as well,
    they must multiply with the ranks to it: a file saying 1024 while the run would step on 512 is an error
    naming both figures, never silently replaced (``"auto"`` leaves it to the product). Cheap: the trainer's
    preflight calls it before any model or data work.
    """
    notes = overrides if overrides is not None else []
    micro = int(_pick(training.micro_batch_size, cfg.get("train_micro_batch_size_per_gpu"),
                      DEFAULTS["micro_batch_size"], "train_micro_batch_size_per_gpu", notes))
    file_global = cfg.get("train_batch_size")
    file_accum = cfg.get("gradient_accumulation_steps")
    if file_global not in (None, AUTO) and (isinstance(file_global, bool) or not isinstance(file_global, int)
                                            or file_global < 1):
        raise ConfigError(f"{source}: train_batch_size={file_global!r} must be a positive integer or \"auto\"")
    if training.gradient_accumulation_steps is None and file_accum in (None, AUTO) and file_global not in (None, AUTO):
        if file_global % (micro * world_size):
            raise ConfigError(
                f"{source}: train_batch_size={file_global} is not a multiple of micro-batch {micro} x {world_size} "
                f"ranks; change train_batch_size or set --grad-accum"
            )
        return micro, file_global // (micro * world_size)
    accum = int(_pick(training.gradient_accumulation_steps, file_accum, DEFAULTS["gradient_accumulation_steps"],
                      "gradient_accumulation_steps", notes))
    product = micro * accum * world_size
    if file_global not in (None, AUTO) and file_global != product:
        raise ConfigError(
            f"{source}: train_batch_size={file_global} contradicts micro-batch {micro} x accumulation {accum} x "
            f"{world_size} rank(s) = {product}; set train_batch_size to {product} or \"auto\" in the file, or give "
            f"--micro-batch-size/--grad-accum that multiply to {file_global} on {world_size} rank(s)"
        )
    return micro, accum


def resolve_deepspeed_config(
    path: str | Path | None,
    training: TrainingConfig,
    world_size: int,
    num_train_examples: int,
    cuda: bool | None = None,
    fused_lamb: bool | None = None,
) -> ResolvedDeepSpeedConfig:
    """Load, fill and fit a DeepSpeed config (see the module docstring).

    Args:
        path: the JSON file; ``None`` picks :func:`default_deepspeed_config_path`.
        training: the run's training section.
        world_size: data-parallel ranks.
        num_train_examples: training examples, to turn ``--epochs`` into optimiser steps.
        cuda: whether DeepSpeed runs on CUDA (default: :func:`accelerator_is_cuda`).
        fused_lamb: whether FusedLamb can run (default: :func:`fused_lamb_available` on CUDA, False otherwise).
    """
    cuda = accelerator_is_cuda() if cuda is None else cuda
    if fused_lamb is None:
        fused_lamb = cuda and fused_lamb_available()
    source = Path(path) if path is not None else default_deepspeed_config_path(cuda)
    cfg = copy.deepcopy(load_deepspeed_json(source))
    check_checkpoint_storage(cfg, source)
    overrides: list[str] = []

    micro, accum = batch_geometry(cfg, training, world_size, source, overrides)
    cfg["train_micro_batch_size_per_gpu"] = micro
    cfg["gradient_accumulation_steps"] = accum
    cfg["train_batch_size"] = micro * accum * world_size
    cfg["gradient_clipping"] = float(_pick(training.gradient_clipping, cfg.get("gradient_clipping"),
                                           DEFAULTS["gradient_clipping"], "gradient_clipping", overrides))

    # Length of the run in optimiser steps.
    if training.max_steps is not None:
        total_steps = training.max_steps
    else:
        per_epoch = num_train_examples // (micro * world_size) // accum
        if per_epoch == 0:
            raise ConfigError(
                f"{num_train_examples} training examples do not fill one optimiser step of {micro * accum * world_size} "
                f"examples; use more data, a smaller --micro-batch-size / --grad-accum, or --max-steps"
            )
        total_steps = per_epoch * (training.epochs or 1)

    # Optimizer options.
    optimizer = cfg.get("optimizer")
    lr = float(training.lr if training.lr is not None else DEFAULTS["lr"])
    if optimizer is not None:
        params = optimizer.setdefault("params", {})
        lr = float(_pick(training.lr, params.get("lr"), DEFAULTS["lr"], "lr", overrides))
        params["lr"] = lr
        params["weight_decay"] = float(_pick(training.weight_decay, params.get("weight_decay"),
                                             DEFAULTS["weight_decay"], "weight_decay", overrides))
        if params.get("betas", AUTO) == AUTO:
            params["betas"] = list(DEFAULTS["betas"])
        if params.get("eps", AUTO) == AUTO:
            params["eps"] = DEFAULTS["eps"]

    # Learning-rate schedule.
    scheduler = cfg.get("scheduler")
    if scheduler is not None:
        sp = scheduler.setdefault("params", {})
        if "warmup_max_lr" in sp or scheduler.get("type") in ("WarmupLR", "WarmupDecayLR"):
            if sp.get("warmup_max_lr", AUTO) == AUTO:
                sp["warmup_max_lr"] = lr
            if sp.get("warmup_min_lr", AUTO) == AUTO:
                sp["warmup_min_lr"] = 0.0
            default_warmup = max(1, int(total_steps * DEFAULTS["warmup_fraction"]))
            sp["warmup_num_steps"] = int(_pick(training.warmup_steps, sp.get("warmup_num_steps"), default_warmup,
                                               "warmup_num_steps", overrides))
        if scheduler.get("type") == "WarmupDecayLR":
            if sp.get("total_num_steps", AUTO) == AUTO:
                sp["total_num_steps"] = total_steps
            if sp["warmup_num_steps"] >= sp["total_num_steps"]:
                raise ConfigError(
                    f"{source}: warm-up of {sp['warmup_num_steps']} steps does not fit a run of {sp['total_num_steps']} "
                    f"steps; lower --warmup-steps or run longer (--max-steps)"
                )

    for section in ("fp16", "bf16"):
        if cfg.get(section, {}).get("enabled") == AUTO:
            cfg[section]["enabled"] = cuda if section == "fp16" else (not cuda)
    _reject_leftover_auto(cfg, source)

    resolved = ResolvedDeepSpeedConfig(source=source, config=cfg, total_steps=int(total_steps), overrides=overrides)
    _fit_hardware(resolved, cuda, fused_lamb)
    return resolved


def _fit_hardware(resolved: ResolvedDeepSpeedConfig, cuda: bool, fused_lamb: bool) -> None:
    """Replace what DeepSpeed cannot run here (fp16 without CUDA, FusedLamb that cannot load), a log line each."""
    cfg = resolved.config
    if not cuda and cfg.get("fp16", {}).get("enabled"):
        cfg["fp16"] = {"enabled": False}
        cfg["bf16"] = {"enabled": True}
        resolved.switches.append("fp16 needs CUDA; training in bf16 instead (same memory, no loss scaling needed)")
    optimizer = cfg.get("optimizer")
    if optimizer is not None and str(optimizer.get("type", "")).lower() in LAMB_TYPES and not fused_lamb:
        params = optimizer.get("params", {})
        unknown = sorted(set(params) - set(_LAMB_OPTION_NAMES) - {"max_grad_norm"})
        if unknown:
            raise ConfigError(f"{resolved.source}: optimizer.params {unknown} are not LAMB options; "
                              f"accepted: {', '.join(sorted(_LAMB_OPTION_NAMES))}")
        # max_grad_norm is FusedLamb's own clipping, off by default; DeepSpeed's gradient_clipping does the job.
        resolved.client_optimizer = {_LAMB_OPTION_NAMES[k]: v for k, v in params.items() if k in _LAMB_OPTION_NAMES}
        if "betas" in resolved.client_optimizer:
            resolved.client_optimizer["betas"] = tuple(resolved.client_optimizer["betas"])
        del cfg["optimizer"]
        why = "FusedLamb needs CUDA" if not cuda else "FusedLamb is not prebuilt and no CUDA compiler (nvcc) was found"
        note = f"{why}; using framework.training.lamb.Lamb (same update rule) as a client optimizer"
        if resolved.zero_stage > 0:
            # DeepSpeed only whitelists its own optimizers under ZeRO; ours is a plain torch.optim.Optimizer.
            cfg["zero_allow_untested_optimizer"] = True
            note += f" under ZeRO-{resolved.zero_stage}"
        resolved.switches.append(note)


def _reject_leftover_auto(value: Any, source: Path, where: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _reject_leftover_auto(v, source, f"{where}.{k}" if where else k)
    elif value == AUTO:
        raise ConfigError(f"{source}: {where} is \"auto\" but nothing fills it; give a value in the file")


def optimizer_param_groups(model: torch.nn.Module, weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Two parameter groups: with weight decay, and without it for biases and LayerNorm weights (as BERT)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(param)
    groups: list[dict[str, Any]] = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    if weight_decay is not None:
        groups[0]["weight_decay"] = weight_decay
    return [g for g in groups if g["params"]]
