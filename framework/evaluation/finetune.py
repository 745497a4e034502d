"""Fine-tuning a pretrained model on a CSL task through the pretraining's DeepSpeed machinery.

:func:`finetune` runs one :class:`FinetuneConfig` (every rank runs it; rank 0 alone logs, writes and reports):

1. validate the options and read every task file (:func:`prepare_finetune`): a typo, a missing file or a label
   outside the task's list fails here, before torch, the model or DeepSpeed is touched;
2. per run (one, or FewCLUE's five splits): ``BertForSequenceClassification.from_pretrained(--model)`` with a
   fresh classifier head, the engine of :func:`framework.training.engine.build_engine` (the same "auto"
   filling and hardware fallbacks as pretraining; ``ds_configs/finetune.json`` by default), and data loaders
   on :class:`~framework.training.data.ResumableDistributedSampler`, sharded by rank;
3. after every epoch, accuracy and macro-F1 on dev (confusion matrices summed across ranks). Model selection
   and early stopping (``patience``) look at dev only; the best epoch's weights are kept (an in-memory copy)
   and restored, and only then is test evaluated, once.

With ``fewclue_splits`` the FewCLUE protocol runs: for k = 0..4 train on ``train_k.json``, select on
``dev_k.json``; the result has every split's figures and their mean and standard deviation. The published
FewCLUE numbers of the task (:data:`framework.evaluation.tasks.TASKS`) are part of the result, for context.

Result layout (the same keys in both protocols, so a study reads ``result["dev"]["accuracy"]`` either way)::

    task, model, protocol ("single" | "fewclue"), seed, select_metric, labels, num_labels, config, deepspeed,
    dev:  {accuracy, macro_f1, loss, examples}   # the selected epoch's; FewCLUE: means over the splits
    test: {...} | null                          # with the selected weights
    majority: {[label,] dev_accuracy, dev_macro_f1[, test_accuracy, test_macro_f1]}  # the prior's floor
    runs: [{name, train_file, dev_file, test_file, train_examples, dev_examples, test_examples, best_epoch,
            stopped_early, steps, seconds, epochs: [{epoch, train_loss, dev, seconds}], dev, test, majority}]
    fewclue only: splits_dir, dev_std, test_std (sample standard deviations over k), per_split
    reference: {published name: accuracy %}     # FewCLUE test figures; ours are dev figures
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from framework.config import DS_CONFIG_DIR, ConfigError
from framework.evaluation.classification import classification_metrics
from framework.evaluation.tasks import TASKS, TaskData, TaskError, load_task, task_spec

logger = logging.getLogger("framework.evaluation.finetune")

DEFAULT_DEEPSPEED_CONFIG = DS_CONFIG_DIR / "finetune.json"
DEFAULT_LR = 5e-5
"""Peak learning rate when neither ``--lr`` nor the DeepSpeed file sets one (BERT's fine-tuning range 2e-5..5e-5)."""
FEWCLUE_SPLITS = tuple(range(5))
SELECT_METRICS = ("accuracy", "macro_f1")
REPORT_TARGETS = ("wandb", "none")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class FinetuneConfig:
    """One fine-tuning command, validated by :meth:`validate` before any heavy work.

    Attributes:
        model: the pretrained folder (``OUTPUT/model`` of a pretraining run: config, weights, tokenizer).
        task: one of :data:`framework.evaluation.tasks.TASKS`.
        train, dev, test: task files (``test`` optional). Not used with ``fewclue_splits``, except ``test``.
        fewclue_splits: a FewCLUE task folder with ``train_k.json``/``dev_k.json``, k = 0..4 (the protocol).
        seed: seeds the head's initialisation, dropout, data order and keyword forging.
        epochs: passes over the training data (fewer with early stopping).
        lr: peak learning rate; ``None``: the DeepSpeed file's, or :data:`DEFAULT_LR` where that is ``"auto"``.
        micro_batch_size: examples per rank per forward pass (``None``: the DeepSpeed file's).
        max_seq_len: tokens per example, ``[CLS]``/``[SEP]`` included (longer inputs are truncated).
        patience: stop after this many epochs without a better dev score (``None``: run every epoch).
        select_metric: the dev metric that selects the epoch, ``accuracy`` or ``macro_f1``.
        deepspeed_config: DeepSpeed JSON (``None``: ``ds_configs/finetune.json``).
        output_dir: where ``finetune_result.json`` goes (``None``: nowhere).
        record: add the result to the model folder's model card (``finetune/TASK``).
        report_to: ``wandb`` (the pretraining run's project, offline without a key) or ``none``.
        progress: a tqdm bar per epoch on stderr (rank 0).
    """

    model: str
    task: str
    train: str | None = None
    dev: str | None = None
    test: str | None = None
    fewclue_splits: str | None = None
    seed: int = 42
    epochs: int = 5
    lr: float | None = None
    micro_batch_size: int | None = None
    max_seq_len: int = 256
    patience: int | None = None
    select_metric: str = "accuracy"
    deepspeed_config: str | None = None
    output_dir: str | None = None
    record: bool = False
    report_to: str = "none"
    progress: bool = True

    @property
    def deepspeed_path(self) -> Path:
        """The DeepSpeed JSON this run uses."""
        return Path(self.deepspeed_config) if self.deepspeed_config else DEFAULT_DEEPSPEED_CONFIG

    def validate(self) -> None:
        """Raise :class:`~framework.config.ConfigError` (or :class:`TaskError`) for the first option that cannot work."""
        task_spec(self.task)
        model = Path(self.model)
        if not model.is_dir():
            raise ConfigError(f"--model {self.model}: no such folder; give a pretrained model folder "
                              f"(OUTPUT/model of launch/pretrain.py, or what launch/export.py wrote)")
        if not (model / "config.json").is_file():
            raise ConfigError(f"--model {self.model}: no config.json; give an exported transformers model folder")
        if not any((model / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
            raise ConfigError(f"--model {self.model}: no tokenizer (tokenizer.json or vocab.txt); export the model "
                              f"with its tokenizer (launch/export.py --tokenizer DIR)")
        if self.fewclue_splits is not None:
            if self.train is not None or self.dev is not None:
                raise ConfigError("give either --fewclue-splits DIR or --train/--dev, not both")
            folder = Path(self.fewclue_splits)
            if not folder.is_dir():
                raise ConfigError(f"--fewclue-splits {folder}: no such folder; give a FewCLUE task folder "
                                  f"(fewclue/csldcp or fewclue/csl)")
            for k in FEWCLUE_SPLITS:
                for kind in ("train", "dev"):
                    if not (folder / f"{kind}_{k}.json").is_file():
                        raise ConfigError(f"--fewclue-splits {folder}: no {kind}_{k}.json; FewCLUE folders hold "
                                          f"train_0..4.json and dev_0..4.json")
        else:
            if self.train is None or self.dev is None:
                raise ConfigError("give --train FILE and --dev FILE (or --fewclue-splits DIR)")
            for flag, value in (("--train", self.train), ("--dev", self.dev)):
                if not Path(value).is_file():
                    raise ConfigError(f"{flag} {value}: no such file")
        if self.test is not None and not Path(self.test).is_file():
            raise ConfigError(f"--test {self.test}: no such file")
        if self.seed < 0:
            raise ConfigError(f"--seed {self.seed} must be zero or more")
        if self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs} must be at least 1")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"--lr {self.lr} must be positive")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"--micro-batch-size {self.micro_batch_size} must be at least 1")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"--patience {self.patience} must be at least 1 (leave it out to run every epoch)")
        if self.select_metric not in SELECT_METRICS:
            raise ConfigError(f"select_metric={self.select_metric!r}: use one of {', '.join(SELECT_METRICS)}")
        if self.report_to not in REPORT_TARGETS:
            raise ConfigError(f"--report-to {self.report_to}: use one of {', '.join(REPORT_TARGETS)}")
        positions = _read_json_object(model / "config.json", "--model").get("max_position_embeddings", 512)
        if not 8 <= self.max_seq_len <= int(positions):
            raise ConfigError(f"--max-seq-len {self.max_seq_len} must be between 8 and the model's "
                              f"{positions} position embeddings")
        from framework.training.deepspeed_config import load_deepspeed_json  # imports torch: only once valid so far

        ds = load_deepspeed_json(self.deepspeed_path)
        if int(ds.get("zero_optimization", {}).get("stage", 0)) == 3:
            raise ConfigError(f"{self.deepspeed_path}: ZeRO-3 partitions the weights, and fine-tuning keeps a full "
                              f"copy of the best epoch's; use stage 0-2")

    def run_files(self) -> list[tuple[str, dict[str, str | None]]]:
        """``(name, {train, dev, test})`` per run: one, or the five FewCLUE splits."""
        if self.fewclue_splits is None:
            return [("single", {"train": self.train, "dev": self.dev, "test": self.test})]
        folder = Path(self.fewclue_splits)
        return [(f"split {k}", {"train": str(folder / f"train_{k}.json"), "dev": str(folder / f"dev_{k}.json"),
                                "test": self.test}) for k in FEWCLUE_SPLITS]


def _read_json_object(path: Path, flag: str) -> dict[str, Any]:
    """A JSON object file (the model's config.json); missing or malformed is a :class:`ConfigError`."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"{flag} {path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{path}:1: expected a JSON object")
    return value


# --------------------------------------------------------------------------------------------- preparation


@dataclass
class PreparedTask:
    """Every file of a command, read: per run its ``train``/``dev``/``test`` :class:`TaskData` (one label list)."""

    labels: list[str]
    runs: list[tuple[str, dict[str, TaskData]]]


def prepare_finetune(cfg: FinetuneConfig) -> PreparedTask:
    """Validate ``cfg`` and read all its task files (cheap: no torch, no model); raises on any bad input."""
    cfg.validate()
    runs = cfg.run_files()
    files: dict[str, str | None] = {}
    for i, (_, split) in enumerate(runs):
        for kind, path in split.items():
            if path is not None:
                files[kind if kind == "test" else f"{kind}_{i}"] = path
    data = load_task(cfg.task, files, seed=cfg.seed)
    prepared = []
    for i, (name, split) in enumerate(runs):
        parts = {kind: data[kind if kind == "test" else f"{kind}_{i}"] for kind, path in split.items() if path}
        prepared.append((name, parts))
    labels = next(iter(data.values())).labels
    if len(labels) < 2:
        raise TaskError(f"{cfg.train or cfg.fewclue_splits}: only the label {labels!r} occurs; a classifier needs "
                        f"at least two")
    return PreparedTask(labels, prepared)


def majority_baseline(parts: dict[str, TaskData]) -> dict[str, Any]:
    """The constant predictor of the most frequent training label (ties: the first in label order).

    Returns ``{label, dev_accuracy, dev_macro_f1[, test_accuracy, test_macro_f1]}``: the floor a fine-tuned
    model has to clear (a model that learned nothing but the prior scores exactly this).
    """
    from framework.evaluation.classification import confusion_matrix

    train = parts["train"]
    counts = train.label_counts()
    label = max(train.labels, key=lambda name: (counts[name], -train.labels.index(name)))
    index = train.labels.index(label)
    out: dict[str, Any] = {"label": label}
    for kind in ("dev", "test"):
        if kind in parts:
            ids = parts[kind].label_ids()
            metrics = classification_metrics(confusion_matrix(ids, [index] * len(ids), len(train.labels)))
            out[f"{kind}_accuracy"], out[f"{kind}_macro_f1"] = metrics["accuracy"], metrics["macro_f1"]
    return out


# --------------------------------------------------------------------------------------------- data


class _Features:
    """Tokenized examples of one file: ``input_ids``, ``token_type_ids`` (lists) and the label id."""

    def __init__(self, data: TaskData, tokenizer: Any, max_seq_len: int) -> None:
        texts_a = [ex.text_a for ex in data.examples]
        texts_b = [ex.text_b or "" for ex in data.examples]
        pair = any(ex.text_b for ex in data.examples)
        encoded = tokenizer(texts_a, texts_b if pair else None, truncation=True, max_length=max_seq_len)
        self.input_ids = encoded["input_ids"]
        self.token_type_ids = encoded.get("token_type_ids") or [[0] * len(ids) for ids in self.input_ids]
        self.labels = data.label_ids()
        self.truncated = sum(len(ids) >= max_seq_len for ids in self.input_ids)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], list[int], int]:
        return self.input_ids[i], self.token_type_ids[i], self.labels[i]


class _Collate:
    """Pads a micro-batch to its longest example, rounded up to a multiple of 8 (picklable, for loader workers)."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = int(pad_token_id)

    def __call__(self, items: Sequence[tuple[list[int], list[int], int]]) -> dict[str, Any]:
        import torch

        length = max(len(ids) for ids, _, _ in items)
        length += -length % 8  # fewer distinct shapes (kernel caches) and tensor-core friendly widths
        input_ids = torch.full((len(items), length), self.pad, dtype=torch.long)
        token_types = torch.zeros((len(items), length), dtype=torch.long)
        mask = torch.zeros((len(items), length), dtype=torch.long)
        for row, (ids, types, _) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            token_types[row, : len(types)] = torch.tensor(types)
            mask[row, : len(ids)] = 1
        labels = torch.tensor([label for _, _, label in items], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": token_types, "labels": labels}


class _Evaluator:
    """Loss, accuracy and macro-F1 of the engine's model on one file, sharded across ranks.

    Each rank takes every ``world_size``-th example in file order; the sampler pads the tail by wrapping
    around so all ranks run alike, and the padding is left out of the counts, so the summed confusion
    matrix counts every example exactly once.
    """

    def __init__(self, engine: Any, features: _Features, num_labels: int, collate: _Collate, world_size: int,
                 rank: int, micro: int) -> None:
        from framework.training.data import ResumableDistributedSampler, build_loader

        self.engine, self.num_labels, self.size = engine, num_labels, len(features)
        self.world_size, self.rank = world_size, rank
        sampler = ResumableDistributedSampler(len(features), world_size, rank, shuffle=False, drop_last=False)
        self.loader = build_loader(features, sampler, collate, micro, 0, 0, drop_last=False)

    def __call__(self) -> dict[str, float]:
        """One pass; ``{accuracy, macro_f1, loss, examples}``."""
        import torch
        import torch.nn.functional as F

        from framework.training.distributed import all_reduce_sum

        engine = self.engine
        confusion = np.zeros((self.num_labels, self.num_labels), dtype=np.int64)
        loss_sum, seen = 0.0, 0
        engine.eval()
        try:
            with torch.no_grad():
                for batch in self.loader:
                    n = int(batch["labels"].shape[0])
                    # Position j of this rank is example rank + j * world_size of the padded order.
                    positions = self.rank + (seen + np.arange(n)) * self.world_size
                    keep = torch.from_numpy(positions < self.size)
                    seen += n
                    inputs = {k: batch[k].to(engine.device) for k in MODEL_INPUTS}
                    logits = engine(**inputs).logits.float().cpu()[keep]
                    labels = batch["labels"][keep]
                    if labels.numel() == 0:
                        continue
                    loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
                    np.add.at(confusion, (labels.numpy(), logits.argmax(-1).numpy()), 1)
        finally:
            engine.train()
        reduced = all_reduce_sum([loss_sum, *confusion.ravel().tolist()], engine.device)
        confusion = np.asarray(reduced[1:], dtype=np.float64).round().astype(np.int64).reshape(confusion.shape)
        metrics = classification_metrics(confusion)
        metrics["loss"] = reduced[0] / max(metrics["examples"], 1)
        return metrics


# --------------------------------------------------------------------------------------------- one run


def load_classifier(model_dir: str | Path, labels: Sequence[str]) -> Any:
    """``BertForSequenceClassification`` from a pretrained (MLM) folder, with a fresh ``len(labels)``-way head."""
    import pickle

    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from framework.training.safe_load import describe_unpickling_error

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the "newly initialized: classifier, pooler" report is expected here
    hf_logging.disable_progress_bar()
    try:
        model = BertForSequenceClassification.from_pretrained(
            str(model_dir), num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)}, weights_only=True)  # a pickled .bin runs nothing
    except pickle.UnpicklingError as exc:
        raise FileNotFoundError(f"cannot load a BERT model from {model_dir}: "
                                f"{describe_unpickling_error(model_dir, exc)}") from None
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot load a BERT model from {model_dir}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model


def _learning_rate(cfg: FinetuneConfig) -> float | None:
    """``--lr``; else :data:`DEFAULT_LR` where the file leaves the rate to ``"auto"``; else ``None`` (the file's)."""
    if cfg.lr is not None:
        return cfg.lr
    from framework.training.deepspeed_config import load_deepspeed_json

    ds = load_deepspeed_json(cfg.deepspeed_path)
    file_lr = ds.get("optimizer", {}).get("params", {}).get("lr", "auto")
    return DEFAULT_LR if file_lr in (None, "auto") else None


def _state_copy(module: Any) -> dict[str, Any]:
    """A detached CPU copy of the weights (``.cpu()`` alone would alias them on a CPU run)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _run_one(cfg: FinetuneConfig, name: str, parts: dict[str, TaskData], labels: list[str], tokenizer: Any,
             rank: int, world_size: int) -> tuple[dict[str, Any], Any]:
    """Fine-tune once: train on ``parts['train']``, select on ``parts['dev']``, test the selected weights."""
    import gc

    from tqdm import tqdm

    from framework.config import TrainingConfig
    from framework.training.data import ResumableDistributedSampler, batches_per_epoch, build_loader
    from framework.training.distributed import all_reduce_sum
    from framework.training.engine import build_engine, seed_everything

    is_main = rank == 0
    started = time.perf_counter()
    seed_everything(cfg.seed)  # the head's initialisation and dropout, identical for every run of a seed
    model = load_classifier(cfg.model, labels)
    features = {kind: _Features(data, tokenizer, cfg.max_seq_len) for kind, data in parts.items()}
    if is_main:
        for kind, feats in features.items():
            if feats.truncated:
                logger.info("%s %s: %d of %d examples reach --max-seq-len %d (longer ones are truncated)", name,
                            kind, feats.truncated, len(feats), cfg.max_seq_len)
    training = TrainingConfig(deepspeed_config=str(cfg.deepspeed_path), epochs=cfg.epochs, seed=cfg.seed,
                              lr=_learning_rate(cfg), micro_batch_size=cfg.micro_batch_size)
    engine, ds = build_engine(model, training, world_size, len(features["train"]), is_main and name in ("single", "split 0"))
    micro = ds.micro_batch_size
    sampler = ResumableDistributedSampler(len(features["train"]), world_size, rank, seed=cfg.seed)
    if batches_per_epoch(sampler, micro) == 0:
        raise ConfigError(f"{parts['train'].path}: {len(features['train'])} examples give rank {rank} no full "
                          f"micro-batch of {micro}; lower --micro-batch-size")
    collate = _Collate(tokenizer.pad_token_id)
    loader = build_loader(features["train"], sampler, collate, micro, 0, cfg.seed)
    evaluators = {kind: _Evaluator(engine, features[kind], len(labels), collate, world_size, rank, micro)
                  for kind in ("dev", "test") if kind in features}

    epochs: list[dict[str, Any]] = []
    best_score, best_epoch, best_state, bad_epochs, stopped_early = -math.inf, 0, None, 0, False
    for epoch in range(1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        sampler.set_epoch(epoch - 1)
        bar = tqdm(total=len(loader), desc=f"{cfg.task} {name} epoch {epoch}/{cfg.epochs}", unit="batch",
                   disable=not (is_main and cfg.progress), dynamic_ncols=True, mininterval=1.0, file=sys.stderr,
                   leave=False)
        loss_sum, batches = 0.0, 0
        for batch in loader:
            loss = engine(**{k: batch[k].to(engine.device) for k in (*MODEL_INPUTS, "labels")}).loss
            engine.backward(loss)
            engine.step()
            loss_sum += float(loss.detach().float())
            batches += 1
            bar.update(1)
        bar.close()
        total_loss, total_batches = all_reduce_sum([loss_sum, batches], engine.device)
        dev = evaluators["dev"]()
        score = dev[cfg.select_metric]
        # Ties keep the earlier epoch (less training for the same dev score); a nan score never selects.
        improved = score > best_score or best_state is None
        if improved:
            best_score, best_epoch, bad_epochs = score, epoch, 0
            best_state = _state_copy(engine.module)
        else:
            bad_epochs += 1
        record = {"epoch": epoch, "train_loss": total_loss / max(total_batches, 1), "dev": dev,
                  "seconds": time.perf_counter() - epoch_start}
        epochs.append(record)
        if is_main:
            logger.info("%s %s epoch %d/%d: train loss %.4f; dev accuracy %.4f, macro-F1 %.4f, loss %.4f%s",
                        cfg.task, name, epoch, cfg.epochs, record["train_loss"], dev["accuracy"], dev["macro_f1"],
                        dev["loss"], " (best so far)" if improved else f" (best: epoch {best_epoch})")
        if cfg.patience is not None and bad_epochs >= cfg.patience and epoch < cfg.epochs:
            stopped_early = True
            if is_main:
                logger.info("%s %s: no better dev %s for %d epoch(s); stopping early at epoch %d", cfg.task, name,
                            cfg.select_metric, bad_epochs, epoch)
            break

    engine.module.load_state_dict(best_state)  # test sees the weights dev selected, never the last epoch's
    test = evaluators["test"]() if "test" in evaluators else None
    result = {
        "name": name,
        "train_file": str(parts["train"].path),
        "dev_file": str(parts["dev"].path),
        "test_file": str(parts["test"].path) if "test" in parts else None,
        "train_examples": len(features["train"]),
        "dev_examples": len(features["dev"]),
        "test_examples": len(features["test"]) if "test" in features else None,
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "steps": int(engine.global_steps),
        "seconds": time.perf_counter() - started,
        "epochs": epochs,
        "dev": epochs[best_epoch - 1]["dev"],
        "test": test,
        "majority": majority_baseline(parts),
    }
    geometry = {"source": str(ds.source), "precision": ds.precision, "zero_stage": ds.zero_stage,
                "micro_batch_size": micro, "gradient_accumulation_steps": ds.gradient_accumulation_steps,
                "train_batch_size": int(ds.config["train_batch_size"]), "total_steps": ds.total_steps,
                "lr": ds.config.get("optimizer", {}).get("params", {}).get("lr"), "world_size": world_size}
    if is_main and test is not None:
        logger.info("%s %s test (epoch %d weights): accuracy %.4f, macro-F1 %.4f", cfg.task, name, best_epoch,
                    test["accuracy"], test["macro_f1"])
    del engine, model, best_state, evaluators, loader
    gc.collect()  # the next split builds a fresh model and engine
    return result, geometry


# --------------------------------------------------------------------------------------------- the command


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); nan entries make both nan."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(runs: Sequence[dict[str, Any]], kind: str) -> tuple[dict[str, float], dict[str, float]] | None:
    """Means and standard deviations of ``kind`` (``dev``/``test``) metrics over ``runs`` (None without them)."""
    if any(run.get(kind) is None for run in runs):
        return None
    means, stds = {}, {}
    for metric in ("accuracy", "macro_f1", "loss"):
        means[metric], stds[metric] = _mean_std([run[kind][metric] for run in runs])
    means["examples"] = runs[0][kind]["examples"]
    return means, stds


def finetune(cfg: FinetuneConfig, prepared: PreparedTask | None = None) -> dict[str, Any]:
    """Fine-tune as ``cfg`` says (see the module docstring); returns the result on every rank.

    Args:
        cfg: the command.
        prepared: its task files, when :func:`prepare_finetune` has read them already (the command line does,
            to fail fast); read here otherwise.

    Raises:
        ConfigError, TaskError: a bad option or task file (before any model or engine work).
        FileNotFoundError: the model folder cannot be loaded.
    """
    prepared = prepared if prepared is not None else prepare_finetune(cfg)
    from framework.training.distributed import init_distributed
    from framework.training.model import load_tokenizer

    rank, world_size = init_distributed()
    is_main = rank == 0
    tokenizer = load_tokenizer(cfg.model)
    labels = prepared.labels
    runs, geometry = [], {}
    for name, parts in prepared.runs:
        run, geometry = _run_one(cfg, name, parts, labels, tokenizer, rank, world_size)
        runs.append(run)

    spec = TASKS[cfg.task]
    result: dict[str, Any] = {
        "task": cfg.task,
        "model": str(cfg.model),
        "protocol": "fewclue" if cfg.fewclue_splits else "single",
        "seed": cfg.seed,
        "select_metric": cfg.select_metric,
        "num_labels": len(labels),
        "labels": labels,
        "config": dataclasses.asdict(cfg),
        "deepspeed": geometry,
    }
    if cfg.fewclue_splits is None:
        result.update(dev=runs[0]["dev"], test=runs[0]["test"], majority=runs[0]["majority"])
    else:
        dev_mean, dev_std = summarize(runs, "dev")
        test_summary = summarize(runs, "test")
        result.update(splits_dir=str(cfg.fewclue_splits), dev=dev_mean, dev_std=dev_std,
                      test=test_summary[0] if test_summary else None,
                      test_std=test_summary[1] if test_summary else None,
                      per_split=[_split_row(k, run) for k, run in enumerate(runs)],
                      majority={key: float(np.mean([run["majority"][key] for run in runs]))
                                for key in runs[0]["majority"] if key != "label"})
    result["runs"] = runs
    result["reference"] = dict(spec.reference)

    if is_main:
        if cfg.output_dir:
            out = Path(cfg.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            from framework.jsonsafe import json_safe

            (out / "finetune_result.json").write_text(
                json.dumps(json_safe(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            logger.info("result written to %s", out / "finetune_result.json")
        if cfg.record:
            _record(cfg, result)
        if cfg.report_to == "wandb":
            from framework.evaluation.output import report_to_wandb

            report_to_wandb(cfg.model, f"finetune/{cfg.task}", compact_result(result))
    return result


def _split_row(k: int, run: dict[str, Any]) -> dict[str, Any]:
    test = run.get("test") or {}
    return {"k": k, "best_epoch": run["best_epoch"], "dev_accuracy": run["dev"]["accuracy"],
            "dev_macro_f1": run["dev"]["macro_f1"], "test_accuracy": test.get("accuracy"),
            "test_macro_f1": test.get("macro_f1")}


def compact_result(result: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a result (no per-epoch log, label list or config): for model cards and W&B."""
    keys = ("task", "protocol", "seed", "select_metric", "num_labels", "dev", "dev_std", "test", "test_std",
            "majority", "per_split", "reference")
    out = {k: copy.deepcopy(result[k]) for k in keys if k in result and result[k] is not None}
    if result["protocol"] == "single":
        run = result["runs"][0]
        out.update(best_epoch=run["best_epoch"], train_file=run["train_file"], dev_file=run["dev_file"],
                   test_file=run["test_file"])
    out["epochs"] = result["config"]["epochs"]
    return out


def _record(cfg: FinetuneConfig, result: dict[str, Any]) -> None:
    """Add the result to the model card; a missing model-card module or a failure is a warning, never fatal."""
    try:
        from framework.training.model_card import record_results
    except ImportError:
        logger.warning("--record: framework.training.model_card is not available in this checkout; the result was "
                       "not recorded (it is printed below)")
        return
    try:
        card = record_results(cfg.model, f"finetune/{cfg.task}", compact_result(result))
    except Exception as err:  # noqa: BLE001 - a finished fine-tuning must not fail on its bookkeeping
        logger.warning("--record failed (%s: %s); the result below is unaffected", type(err).__name__, err)
        return
    logger.info("recorded finetune/%s in the model card %s", cfg.task, card)


def result_tables(result: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The tables a person reads: per run (or split) the selected epoch's figures, the summary, the reference."""
    tables: list[tuple[str, list[dict[str, Any]]]] = []
    rows = []
    for run in result["runs"]:
        test = run.get("test") or {}
        rows.append({"run": run["name"], "train": run["train_examples"], "best epoch": run["best_epoch"],
                     "dev accuracy": run["dev"]["accuracy"], "dev macro-F1": run["dev"]["macro_f1"],
                     "test accuracy": test.get("accuracy", math.nan), "test macro-F1": test.get("macro_f1", math.nan),
                     "seconds": run["seconds"]})
    if result["protocol"] == "fewclue":
        for label, key in (("mean", ""), ("std", "_std")):
            dev, test = result.get(f"dev{key}") or {}, result.get(f"test{key}") or {}
            rows.append({"run": label, "dev accuracy": dev.get("accuracy", math.nan),
                         "dev macro-F1": dev.get("macro_f1", math.nan), "test accuracy": test.get("accuracy", math.nan),
                         "test macro-F1": test.get("macro_f1", math.nan)})
    majority = result.get("majority") or {}
    rows.append({"run": "majority class" + (" (mean)" if result["protocol"] == "fewclue" else ""),
                 "dev accuracy": majority.get("dev_accuracy", math.nan),
                 "dev macro-F1": majority.get("dev_macro_f1", math.nan),
                 "test accuracy": majority.get("test_accuracy", math.nan),
                 "test macro-F1": majority.get("test_macro_f1", math.nan)})
    protocol = "FewCLUE protocol, k = 0..4" if result["protocol"] == "fewclue" else "selected on dev"
    tables.append((f"fine-tuning {result['task']} ({result['num_labels']} labels, {protocol}, seed {result['seed']}; "
                   f"model {result['model']})", rows))
    if result.get("reference"):
        spec = TASKS[result["task"]]
        ours = result.get("test") if result.get("test") else result["dev"]
        reference = [{"model": name, "accuracy %": value} for name, value in result["reference"].items()]
        reference.append({"model": f"this model ({'test' if result.get('test') else 'dev'})",
                          "accuracy %": 100 * ours["accuracy"]})
        tables.append((f"published FewCLUE {spec.fewclue} test accuracy (mean over 5 splits, base models) for "
                       f"context; FewCLUE's public test set is not in this data, so a dev figure here is not "
                       f"the final one", reference))
    return tables


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """The tables and, with ``as_json``, the result as one JSON line last (:func:`framework.evaluation.output.emit`)."""
    from framework.evaluation.output import emit

    emit(result, result_tables(result), as_json)
