"""The pretraining run: from a validated :class:`~framework.config.RunConfig` to checkpoints and an exported model.

:func:`run_pretraining` does, in order (every rank runs it; rank 0 alone prints, logs, exports and plots):

1. start torch.distributed (setting the single-process environment when no launcher did);
2. preflight: the masking strategy and its options, the DeepSpeed JSON and its batch geometry, a writable output
   folder, a pretrained model's fit with its tokenizer; errors here cost no model or data work;
3. data: the demo corpus is preprocessed into ``OUTPUT/data`` when no ``--data`` is given, a vocabulary is
   built for a model from scratch without ``--tokenizer``, and train/valid are segmented (cached);
4. model, then the engine (:func:`framework.training.engine.build_engine`, shared with fine-tuning);
5. resume from a checkpoint when asked, restoring the data position and RNG states last;
6. the loop: micro-batches through the engine (DeepSpeed accumulates, clips, steps and schedules), a log
   record every ``log_every`` steps, evaluation every ``eval_every``, a checkpoint every ``save_every``;
7. the end: final evaluation and checkpoint, export to ``OUTPUT/model``, ``OUTPUT/loss.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from framework.batching.groups import batch_counts, resolve_layout
from framework.config import ConfigError, RunConfig
from framework.console import logs_above_progress_bars
from framework.data.example import IGNORE_INDEX
from framework.training.checkpoint import CheckpointManager, TrainState
from framework.training.distributed import (all_reduce_max, all_reduce_sum, barrier, check_shared_folder,
                                           init_distributed, rank0_decides)
from framework.training.data import ResumableDistributedSampler, batches_per_epoch, build_loader
from framework.training.engine import build_engine, seed_everything, setup_logging  # noqa: F401 - re-exported

logger = logging.getLogger("framework.training")

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")  # every batch (packed: a 4D mask)
# What packed batches add: position ids restarting at every sentence (a padded batch leaves BERT its default).
PACKED_INPUTS = ("position_ids",)


@dataclass
class RunResult:
    """What a finished run produced (returned on every rank; paths are meaningful on rank 0).

    Attributes:
        output_dir: the run's output folder.
        steps: optimiser steps done.
        train_losses: ``(step, loss)`` of every training log record of this process's run.
        valid_metrics: the last evaluation's metrics (empty when there is no validation set).
        checkpoint: the final checkpoint folder.
        exported_model: the transformers folder, when exported.
        loss_plot: ``loss.png``, when written.
    """

    output_dir: Path
    steps: int
    train_losses: list[tuple[int, float]] = field(default_factory=list)
    valid_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    exported_model: Path | None = None
    loss_plot: Path | None = None


class NonFiniteError(RuntimeError):
    """The run stopped because its loss or weights stopped being finite (the last finite checkpoint is intact)."""


# --------------------------------------------------------------------------------------------- preflight & data


def preflight(cfg: RunConfig) -> None:
    """Check what is cheap to check before any heavy work: the masking strategy and its options, the DS JSON and
    its batch geometry, that the output folder takes files, and a local pretrained model against its tokenizer."""
    from framework.data.example import VocabInfo
    from framework.masking.base import MaskingContext
    from framework.masking.registry import build_strategy
    from framework.training.deepspeed_config import batch_geometry, check_checkpoint_storage, load_deepspeed_json

    # A stand-in vocabulary: enough for a strategy to validate its options (the real one comes with the data).
    stand_in = VocabInfo(vocab_size=128, mask_token_id=4, pad_token_id=0, cls_token_id=2, sep_token_id=3,
                         special_ids=(0, 1, 2, 3, 4))
    build_strategy(cfg.masking.name, cfg.masking.args, MaskingContext(stand_in, None))
    if cfg.training.deepspeed_config is not None:
        ds_json = load_deepspeed_json(cfg.training.deepspeed_config)
        check_checkpoint_storage(ds_json, cfg.training.deepspeed_config)
        # The launcher's WORLD_SIZE is already in the environment; torch.distributed is not started yet.
        batch_geometry(ds_json, cfg.training, int(os.environ.get("WORLD_SIZE", "1") or 1), cfg.training.deepspeed_config)
    check_output_writable(Path(cfg.checkpoint.output_dir))
    _preflight_vocabulary(cfg)
    if cfg.checkpoint.resume is None:
        # A fresh run into a finished or interrupted one would overwrite its checkpoints and mix its metrics.
        previous = CheckpointManager(Path(cfg.checkpoint.output_dir) / "checkpoints", 1, 0).latest()
        if previous is not None:
            raise ConfigError(
                f"{cfg.checkpoint.output_dir} already holds a run (latest complete checkpoint {previous.name}); "
                "continue it with --resume auto, or start afresh with another --output-dir (or delete that folder)"
            )


def check_output_writable(folder: Path) -> None:
    """Raise :class:`ConfigError` unless files can be created in ``folder`` (or, when it does not exist yet, in
    the nearest existing folder above it, where it will be created), and in its ``checkpoints/`` if present.

    Found here rather than at the first checkpoint, after training steps, with an error about a checkpoint. The
    test creates and removes a file, because permission bits do not tell (root, read-only mounts, ACLs).
    """
    target = folder
    while not target.exists() and target.parent != target:
        target = target.parent
    if not target.is_dir():
        raise ConfigError(f"--output-dir {folder}: {target} is a file, not a folder; give another --output-dir")
    for place in (target, folder / "checkpoints"):
        if place != target and not place.is_dir():
            continue
        try:
            handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=place)
        except OSError as exc:
            if place == folder:
                what = f"--output-dir {folder} is not writable"
            elif place == target:
                what = f"--output-dir {folder} cannot be created: {target} is not writable"
            else:
                what = f"--output-dir {folder}: its checkpoint folder {place} is not writable"
            raise ConfigError(f"{what} ({exc.strerror or exc}); give an --output-dir you can write to, or fix the "
                              "permissions") from None
        os.close(handle)
        os.unlink(probe)


def _preflight_vocabulary(cfg: RunConfig) -> None:
    """A local pretrained model and a local ``--tokenizer`` of another vocabulary (or a larger one without
    ``--resize-embeddings``) fail here; hub names are checked when the model is built."""
    m = cfg.model
    if not (m.name_or_path and m.tokenizer) or Path(m.tokenizer) == Path(m.name_or_path):
        return
    model_dir, tokenizer_dir = Path(m.name_or_path), Path(m.tokenizer)
    if not (model_dir / "config.json").is_file() or not tokenizer_dir.is_dir():
        return
    from framework.training.model import check_vocabulary, load_tokenizer, model_vocabulary

    try:
        rows = int(json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["vocab_size"])
    except (ValueError, KeyError, TypeError):
        return  # build_model reports an unreadable checkpoint with its own message
    check_vocabulary(m.name_or_path, rows, model_vocabulary(m.name_or_path), load_tokenizer(tokenizer_dir), m.tokenizer,
                     m.resize_embeddings)


def prepare_corpus(cfg: RunConfig, output_dir: Path) -> Path:
    """The folder with ``train.txt``/``valid.txt``/``keywords.txt``: ``--data``, or the demo preprocessed once."""
    if cfg.data.dir is not None:
        return Path(cfg.data.dir)
    from framework.data.corpus import PreprocessConfig, demo_corpus_path, preprocess

    folder = output_dir / "data"
    if (folder / "stats.json").is_file() and (folder / "train.txt").is_file():
        return folder
    logger.info("no --data given: preprocessing the embedded demo corpus %s into %s", demo_corpus_path(), folder)
    preprocess(PreprocessConfig(inputs=(), output=folder, workers=1, valid_fraction=0.05, overwrite=True,
                                seed=cfg.training.seed, progress=False))
    return folder


def prepare_tokenizer(cfg: RunConfig, data_dir: Path, output_dir: Path) -> str:
    """The tokenizer path: ``--tokenizer``, the pretrained model's, or a vocabulary built from the corpus."""
    m = cfg.model
    if m.tokenizer:
        return m.tokenizer
    if m.name_or_path:
        return m.name_or_path
    folder = output_dir / "tokenizer"
    if not (folder / "vocab.txt").is_file():
        from framework.data.atomic import current_umask
        from framework.data.vocab import build_vocab_from_files

        logger.info("model from scratch without --tokenizer: building a %d-token vocabulary from %s into %s",
                    m.vocab_size, data_dir / cfg.data.train_file, folder)
        # Built beside and renamed into place: a run killed halfway leaves no vocab.txt without its config files.
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tokenizer.tmp-", dir=output_dir))
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp's 0700, widened as a plain mkdir would leave it
        try:
            build_vocab_from_files([data_dir / cfg.data.train_file], staging, vocab_size=m.vocab_size)
            shutil.rmtree(folder, ignore_errors=True)  # an incomplete folder of an older version, if any
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(folder)


def _lexicons(cfg: RunConfig, data_dir: Path) -> list[Path]:
    if cfg.data.lexicons is not None:
        return [Path(p) for p in cfg.data.lexicons]
    default = data_dir / "keywords.txt"
    return [default] if default.is_file() else []


def _segmented(cfg: RunConfig, corpus: Path, tokenizer_path: str, lexicons: list[Path]):  # noqa: ANN202
    from framework.data.segmented import build_segmented_dataset

    return build_segmented_dataset(corpus, tokenizer_path, lexicons, cache_dir=cfg.data.cache_dir,
                                   workers=cfg.data.segment_workers, max_seq_len=cfg.data.seq_len, progress=False)


def _shared_segmented(cfg: RunConfig, rank: int, corpus: Path, tokenizer_path: str,  # noqa: ANN202
                      lexicons: list[Path]):
    """The segmented dataset of ``corpus`` on every rank: global rank 0 builds (or reuses) the cache, the other
    ranks open the folder it names and write nothing.

    Where a rank cannot see that folder (a ``--cache-dir`` on a node-local disk), it builds a copy of its own
    (the build is atomic, so ranks sharing that disk cannot spoil each other's) and says so.
    """
    from framework.data.segmented import SegmentedDataset
    from framework.training.distributed import SHARED_WAIT_S, wait_for_path

    built: dict[str, Any] = {}  # rank 0 keeps the opened dataset; only its folder travels

    def build() -> str:
        built["dataset"] = _segmented(cfg, corpus, tokenizer_path, lexicons)
        return str(built["dataset"].folder)

    folder = Path(rank0_decides(rank, build))
    if rank == 0:
        return built["dataset"]
    if wait_for_path(folder / "meta.json", SHARED_WAIT_S):
        return SegmentedDataset(folder, max_seq_len=cfg.data.seq_len)
    logger.warning("rank %d does not see the segmented cache %s that rank 0 built (is --cache-dir on a node-local "
                   "disk?); building a copy of its own", rank, folder)
    return _segmented(cfg, corpus, tokenizer_path, lexicons)


@dataclass
class PreparedData:
    """The run's data, ready for masking: tokenizer and segmented train/valid sets (``valid_set`` may be None)."""

    data_dir: Path
    tokenizer_path: str
    tokenizer: Any
    train_set: Any
    valid_set: Any | None


def prepare_data(cfg: RunConfig, rank: int, output_dir: Path) -> PreparedData:
    """Corpus, tokenizer and segmented datasets: global rank 0 builds them, the other ranks open what it built.

    Global rank 0 alone writes (the demo corpus, a vocabulary, the segmented caches) and decides (which folders,
    whether there is a validation set); the other ranks receive its answers (:func:`rank0_decides`), so on several
    nodes sharing the data and output folders no file is written twice and every rank takes the same branch.

    Also records the resolved data folder and tokenizer in ``cfg``, so that the saved config reproduces the
    run (and ``launch/export.py`` finds the tokenizer).
    """
    from framework.training.model import load_tokenizer

    data_dir = Path(rank0_decides(rank, lambda: str(prepare_corpus(cfg, output_dir))))
    tokenizer_path = rank0_decides(rank, lambda: str(prepare_tokenizer(cfg, data_dir, output_dir)))
    cfg.data.dir, cfg.model.tokenizer = str(data_dir), str(tokenizer_path)
    if not cfg.model.name_or_path and not cfg.model.config:
        cfg.model.config = "tiny"
    lexicons = [Path(p) for p in rank0_decides(rank, lambda: [str(p) for p in _lexicons(cfg, data_dir)])]
    train_set = _shared_segmented(cfg, rank, data_dir / cfg.data.train_file, tokenizer_path, lexicons)
    valid_path = data_dir / cfg.data.valid_file
    valid_set = None
    if rank0_decides(rank, lambda: valid_path.is_file() and valid_path.stat().st_size > 0):
        valid_set = _shared_segmented(cfg, rank, valid_path, tokenizer_path, lexicons)
    elif rank == 0:
        logger.warning("no %s: evaluation is skipped", valid_path)
    return PreparedData(data_dir, tokenizer_path, load_tokenizer(tokenizer_path), train_set, valid_set)


class _Subset:
    """The first ``n`` examples of a dataset (validation is capped to keep evaluation cheap)."""

    def __init__(self, dataset: Any, n: int) -> None:
        self.dataset, self.n = dataset, min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]


# --------------------------------------------------------------------------------------------- measurements


def _memory_gb(device: torch.device) -> float:
    """Peak memory of this rank: CUDA allocator peak on a GPU, the process's peak RSS on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _loss_scale(engine: Any) -> float:
    """The fp16 dynamic loss scale; 1.0 when no scaling is in use (bf16, fp32)."""
    optimizer = getattr(engine, "optimizer", None)
    for attr in ("cur_scale", "loss_scale"):
        value = getattr(optimizer, attr, None)
        if isinstance(value, (int, float, torch.Tensor)):
            return float(value)
    return 1.0


def _grad_norm(engine: Any) -> float:
    value = engine.get_global_grad_norm()
    if value is None:
        return math.nan
    return float(value.item() if isinstance(value, torch.Tensor) else value)


def target_kind(shown: int, original: int, mask_token_id: int) -> str:
    """What masking did to a target token: ``masked`` ([MASK]), ``replaced`` (a random token) or ``kept``.

    BERT's 80/10/10 rule leaves one target in ten unchanged; without this mark such a row, whose ``masked``
    equals ``original``, looks as if nothing had been masked.
    """
    if shown == mask_token_id:
        return "masked"
    return "kept" if shown == original else "replaced"


def masked_example_rows(dataset: Any, collator: Any, tokenizer: Any, count: int,
                        split: str = "valid") -> list[dict[str, Any]]:
    """The first ``count`` sentences of ``dataset`` as ``collator`` masks them for epoch 0, readable.

    Given the validation set and the evaluator's collator, these are the masked inputs every evaluation scores
    (docs/training.md). Each row marks every target as masked, replaced or kept (:func:`target_kind`):
    ``targets`` lists the target tokens, ``target_kinds`` their kinds in the same order, and ``marked`` shows
    each as ``kind:token`` (``replaced:法→方`` names the random token shown instead).
    """
    count = min(count, len(dataset))
    if count == 0:
        return []
    examples = [dataset[i] for i in range(count)]
    mask_id = int(tokenizer.mask_token_id)
    rows = []
    for ex, masked in zip(examples, collator.mask(examples)):
        original = tokenizer.convert_ids_to_tokens([int(t) for t in ex.input_ids])
        shown = tokenizer.convert_ids_to_tokens([int(t) for t in masked.input_ids])
        targets, kinds, marked = [], [], []
        for i, label in enumerate(masked.labels):
            if label == IGNORE_INDEX:
                continue
            kind = target_kind(int(masked.input_ids[i]), int(ex.input_ids[i]), mask_id)
            token = tokenizer.convert_ids_to_tokens(int(label))
            targets.append(token)
            kinds.append(kind)
            marked.append(f"{kind}:{token}" + (f"→{shown[i]}" if kind == "replaced" else ""))
        entities = ["".join(original[s:e]) for s, e in ex.entity_spans]
        rows.append({
            "split": split,
            "index": int(ex.index),
            "original": " ".join(original[1:-1]),
            "masked": " ".join(shown[1:-1]),
            "targets": " ".join(targets),
            "target_kinds": " ".join(kinds),
            "marked": " ".join(marked),
            "entities": ", ".join(entities),
        })
    return rows


def _wandb_run_id(output_dir: Path, resumed: bool) -> str:
    """The W&B run id of this output folder: kept in ``OUTPUT/wandb_run_id`` so a resumed run continues it."""
    import uuid

    path = output_dir / "wandb_run_id"
    if resumed and path.is_file():
        return path.read_text(encoding="utf-8").strip()
    run_id = uuid.uuid4().hex[:12]
    path.write_text(run_id + "\n", encoding="utf-8")
    return run_id


# --------------------------------------------------------------------------------------------- the run


def run_pretraining(cfg: RunConfig) -> RunResult:
    """Run (or resume) pretraining as ``cfg`` describes; see the module docstring for the stages."""
    preflight(cfg)  # before any distributed, data or DeepSpeed work: a typo fails in a second
    rank, world_size = init_distributed()
    setup_logging(rank)
    output_dir = Path(cfg.checkpoint.output_dir)
    is_main = rank == 0
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        print("run configuration:\n" + cfg.to_yaml(), flush=True)
    barrier()
    # Several nodes write one run: their checkpoint shards must meet in one folder (a no-op in a world of one).
    check_shared_folder(output_dir, rank, "--output-dir")

    data = prepare_data(cfg, rank, output_dir)
    tokenizer, train_set, valid_set = data.tokenizer, data.train_set, data.valid_set

    from framework.batching.collator import MaskingCollator
    from framework.masking.base import MaskingContext
    from framework.masking.registry import build_strategy

    strategy = build_strategy(cfg.masking.name, cfg.masking.args,
                              MaskingContext(train_set.vocab_info, train_set.entity_table()))
    collator = MaskingCollator(strategy, train_set.vocab_info, seed=cfg.training.seed)
    train_masker = collator  # _train_batches may wrap it (packing, bucketing); the example table needs .mask()

    # Model and engine.
    from framework.training.model import build_model

    seed_everything(cfg.training.seed)
    model = build_model(cfg.model, tokenizer, cfg.training.seed)
    if model.config.max_position_embeddings < cfg.data.seq_len:
        raise ConfigError(f"--seq-len {cfg.data.seq_len} exceeds the model's {model.config.max_position_embeddings} "
                          f"position embeddings; lower --seq-len")
    if model.get_input_embeddings().num_embeddings < train_set.vocab_info.vocab_size:
        raise ValueError(f"the model has {model.get_input_embeddings().num_embeddings} embeddings but the data uses "
                         f"{train_set.vocab_info.vocab_size} token ids; give --tokenizer the model's own tokenizer")
    engine, ds = build_engine(model, cfg.training, world_size, len(train_set), is_main)
    micro = ds.micro_batch_size
    layout = resolve_layout(cfg.data.packing, cfg.data.length_bucketing, cuda=engine.device.type == "cuda")
    cfg.data.packing = layout == "packed"
    cfg.training.deepspeed_config = str(ds.source)  # saved as resolved, so --config OUTPUT/run_config.yaml reruns it
    if is_main:
        from framework.training.provenance import resolved_record

        cfg.resolved = resolved_record(ds, model, tokenizer, world_size, cfg.model.name_or_path or cfg.model.config,
                                       data.tokenizer_path)

    # Resume.
    checkpoints = CheckpointManager(output_dir / "checkpoints", cfg.checkpoint.keep_last, rank, tokenizer)
    resume_from = checkpoints.resolve_resume(cfg.checkpoint.resume)
    state = checkpoints.load(engine, resume_from, cfg) if resume_from is not None else TrainState()

    from framework.training.reporting import MetricsReporter

    if is_main:
        cfg.save(output_dir)
    run_id = None
    if is_main and cfg.report.report_to == "wandb":
        run_id = _wandb_run_id(output_dir, resumed=resume_from is not None)
    reporter = MetricsReporter(output_dir, cfg.report.report_to, cfg.report.project, cfg.report.run_name,
                               cfg.report.tags, {"run": cfg.to_dict(), "deepspeed": ds.config}, is_main,
                               wandb_entity=cfg.report.wandb_entity, run_id=run_id)

    sampler = ResumableDistributedSampler(len(train_set), world_size, rank, seed=cfg.training.seed)
    if batches_per_epoch(sampler, micro) == 0:
        raise ValueError(f"{len(train_set)} training examples give rank {rank} no full micro-batch of {micro}; "
                         f"lower --micro-batch-size or use more data")
    collator, loader = _train_batches(layout, cfg, train_set, sampler, collator, micro,
                                      ds.gradient_accumulation_steps, is_main)
    evaluator = None
    if valid_set is not None:
        evaluator = _Evaluator(engine, strategy.for_evaluation(), valid_set, cfg, world_size, rank, micro)
    if is_main and resume_from is None and cfg.report.masked_examples:
        # The validation sentences as every evaluation masks them (the training ones without a validation set).
        shown, masker, split = ((valid_set, evaluator.collator, "valid") if evaluator is not None
                                else (train_set, train_masker, "train"))
        reporter.log_masked_examples(masked_example_rows(shown, masker, tokenizer, cfg.report.masked_examples,
                                                         split), step=0)

    # RNG states last: everything above may draw random numbers, the resumed steps must not notice.
    if resume_from is not None:
        checkpoints.restore_rng(resume_from)

    loop = _Loop(cfg, engine, ds.total_steps, state, sampler, collator, loader, evaluator, checkpoints, reporter,
                 is_main)
    try:
        result = loop.run()
    finally:
        reporter.close()
    result.output_dir = output_dir
    if cfg.checkpoint.export:
        from framework.training.export import export_from_engine

        from framework.training.model_card import run_card_facts

        card = run_card_facts(cfg, deepspeed=ds, world_size=world_size, device=engine.device, state=loop.state,
                              valid_metrics=result.valid_metrics, data=data, strategy=strategy) if is_main else None
        # Every rank calls it: under ZeRO-3 gathering the weights is a collective; rank 0 alone writes.
        result.exported_model = export_from_engine(engine, tokenizer, output_dir / "model", card_facts=card)
        if is_main:
            logger.info("exported a transformers model to %s (BertForMaskedLM/BertTokenizer.from_pretrained "
                        "and pipeline('fill-mask') load it)", result.exported_model)
    if is_main:
        result.loss_plot = _plot(output_dir)
    barrier()
    return result


def _train_batches(layout: str, cfg: RunConfig, dataset: Any, sampler: ResumableDistributedSampler, collator: Any,
                   micro: int, accumulation: int, is_main: bool) -> tuple[Any, Any]:
    """``(collator, loader)`` of the training batches in ``layout`` (see :mod:`framework.batching.groups`).

    Packed and bucketed batches lay out the sentences of a whole optimiser step together, so their loader draws
    step-sized groups (``micro x accumulation`` sentences) and serves them one micro-batch at a time.
    """
    workers, seed = cfg.data.loader_workers, cfg.training.seed
    if layout == "padded":
        if is_main:
            logger.info("batches: padded, %d sentences a micro-batch, each row padded to the micro-batch's longest",
                        micro)
        return collator, build_loader(dataset, sampler, collator, micro, workers, seed)
    from framework.batching.groups import BucketingCollator, StepLoader
    from framework.batching.packing import PackingCollator

    group = micro * accumulation
    if sampler.per_rank // group == 0:
        raise ValueError(f"{len(dataset)} training examples give rank {sampler.rank} no full step of {group} "
                         f"sentences; lower --micro-batch-size / --grad-accum or use more data")
    if layout == "packed":
        grouped = PackingCollator(collator, cfg.data.seq_len, accumulation)
        what = (f"packed, the {group} sentences of a step into rows of {cfg.data.seq_len} tokens with a "
                f"block-diagonal attention mask")
    else:
        grouped = BucketingCollator(collator, accumulation)
        what = f"bucketed, the {group} sentences of a step sorted by length into micro-batches of {micro}"
    if is_main:
        logger.info("batches: %s (micro-batch %d x accumulation %d)", what, micro, accumulation)
    return grouped, StepLoader(build_loader(dataset, sampler, grouped, group, workers, seed), accumulation)


class _Evaluator:
    """Masked-LM metrics on (the first ``max_eval_examples`` of) the validation set, sharded across ranks.

    Validation masks are drawn for a fixed epoch with a seed of their own, so every evaluation of a run
    (and of a resumed run) sees the same masked inputs and the numbers are comparable. The strategy is
    the training one without input augmentation (:meth:`MaskingStrategy.for_evaluation`).
    """

    def __init__(self, engine: Any, strategy: Any, dataset: Any, cfg: RunConfig, world_size: int, rank: int,
                 micro: int) -> None:
        from framework.batching.collator import MaskingCollator
        from framework.training.metrics import MLMMetrics

        subset = _Subset(dataset, cfg.data.max_eval_examples)
        self.engine = engine
        self.collator = MaskingCollator(strategy, dataset.vocab_info, seed=cfg.training.seed + 1)
        sampler = ResumableDistributedSampler(len(subset), world_size, rank, shuffle=False,
                                              drop_last=len(subset) >= world_size)
        self.loader = build_loader(subset, sampler, self.collator, micro, 0, cfg.training.seed, drop_last=False)
        self.metrics = MLMMetrics()

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        """One pass over the validation subset; returns loss, perplexity, masked and entity accuracy."""
        self.metrics.reset()
        self.engine.eval()
        try:
            for batch in self.loader:
                inputs = {k: batch[k].to(self.engine.device) for k in (*MODEL_INPUTS, *PACKED_INPUTS)
                          if k in batch}
                # The model returns logits only at labelled positions ([N, V]), as update_batch expects.
                self.metrics.update_batch(self.engine(**inputs).logits, batch)
        finally:
            self.engine.train()
        self.metrics.reduce_across_ranks()
        return self.metrics.compute()


class _Loop:
    """The optimisation loop over epochs and micro-batches, with logging, evaluation and checkpoints.

    The per-micro-batch path never reads a device value on the host: the loss is summed into a 0-dim float64
    tensor on the device and read once per log record (:meth:`_log_train`), sample and token counts come from the
    batch's CPU tensors, and inputs are copied with ``non_blocking=True``. So on a GPU the host keeps queueing work
    while the device computes; what still synchronises inside the engine is listed in docs/benchmarks.md
    ("Hot path").
    """

    def __init__(self, cfg: RunConfig, engine: Any, total_steps: int, state: TrainState,
                 sampler: ResumableDistributedSampler, collator: Any, loader: Any, evaluator: _Evaluator | None,
                 checkpoints: CheckpointManager, reporter: Any, is_main: bool) -> None:
        self.cfg, self.engine, self.total_steps, self.state = cfg, engine, total_steps, state
        self.sampler, self.collator, self.loader, self.evaluator = sampler, collator, loader, evaluator
        self.checkpoints, self.reporter, self.is_main = checkpoints, reporter, is_main
        self.result = RunResult(output_dir=Path(cfg.checkpoint.output_dir), steps=state.step)
        self._reset_window()

    @staticmethod
    def _host_counts(batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        """``(samples, non-padding tokens)`` of a padded or packed micro-batch, read from its host-side tensors.

        ``Tensor.numpy()`` (in :func:`~framework.batching.groups.batch_counts`) refuses a device tensor, so this
        count can never wait on an accelerator: called on the batch as the loader made it (before ``.to(device)``),
        it is plain CPU arithmetic.
        """
        samples, tokens, _ = batch_counts(batch)
        return samples, tokens

    def _reset_window(self) -> None:
        """Start a new log window: empty sums, the clock restarted."""
        device = self.engine.device
        # float64, added to in micro-batch order: the same sum, bit for bit, as adding the float32 losses as Python
        # floats one at a time, which is what the loop did when it read every loss with .item().
        self.window_loss = torch.zeros((), dtype=torch.float64, device=device)
        # Non-finite losses, counted on the device: [micro-batches with one, longest run of bad optimiser steps].
        self.window_bad = torch.zeros(2, dtype=torch.float64, device=device)
        if not hasattr(self, "bad_run"):  # runs of bad steps continue across windows
            self.bad_run = torch.zeros((), dtype=torch.float64, device=device)
            self.step_bad = torch.zeros((), dtype=torch.bool, device=device)
        self.window = {"micro": 0, "tokens": 0, "samples": 0, "positions": 0, "steps": 0,
                       "skipped_before": int(getattr(self.engine, "skipped_steps", 0))}
        self.window_start = time.perf_counter()

    @logs_above_progress_bars
    def run(self) -> RunResult:
        """Train until ``total_steps``; returns what happened."""
        from tqdm import tqdm

        t = self.cfg.training
        engine, state = self.engine, self.state
        bar = tqdm(total=self.total_steps, initial=state.step, desc="pretraining", unit="step",
                   disable=not self.is_main, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        last_eval = last_save = -1
        if state.step == 0 and t.eval_every and self.evaluator is not None:
            self._evaluate()  # the starting point of the validation curve
        while state.step < self.total_steps:
            self.sampler.set_epoch(state.epoch, start=state.epoch_position)
            self.collator.set_epoch(state.epoch)
            for batch in self.loader:
                # Asynchronous from the pinned memory build_loader uses on CUDA; a plain copy otherwise. The batch
                # keeps the host tensors alive until the next iteration, after the copy has been queued.
                inputs = {k: batch[k].to(engine.device, non_blocking=True) for k in (*MODEL_INPUTS, *PACKED_INPUTS)
                          if k in batch}
                loss = engine(**inputs).loss
                engine.backward(loss)
                engine.step()
                samples, tokens = self._host_counts(batch)
                state.epoch_position += samples
                state.tokens_seen += tokens
                self._count_loss(loss.detach())  # on the device until a log step: no synchronisation here
                self.window["micro"] += 1
                self.window["tokens"] += tokens
                self.window["samples"] += samples
                self.window["positions"] += batch["input_ids"].numel()  # rows x width: a shape, no data read
                if engine.global_steps == state.step:
                    continue  # still accumulating
                state.step = int(engine.global_steps)
                self.window["steps"] += 1
                self._end_step()
                bar.update(1)
                if state.step % t.log_every == 0 or state.step == self.total_steps:
                    self._log_train(bar)
                if t.eval_every and state.step % t.eval_every == 0 and self.evaluator is not None:
                    self._evaluate()
                    last_eval = state.step
                if self.cfg.checkpoint.save_every and state.step % self.cfg.checkpoint.save_every == 0:
                    self._save()
                    last_save = state.step
                if state.step >= self.total_steps:
                    break
            else:
                state.epoch += 1
                state.epoch_position = 0
        bar.close()
        if self.evaluator is not None and last_eval != state.step:
            self._evaluate()
        if last_save != state.step:
            self._save()
        self.result.steps = state.step
        return self.result

    def _log_train(self, bar: Any) -> None:
        """Write the window's training record (mean loss over its micro-batches, rates, lr...) and start a new one.

        The one place of the training path that reads device values: the loss sum, once per window.
        """
        engine, w = self.engine, self.window
        loss_sum, bad_micro, bad_run = torch.cat([self.window_loss.reshape(1), self.window_bad]).tolist()
        loss_sum, micro, tokens, samples, positions, bad_micro = all_reduce_sum(
            [loss_sum, w["micro"], w["tokens"], w["samples"], w["positions"], bad_micro], engine.device)
        seconds = max(time.perf_counter() - self.window_start, 1e-9)
        record = {
            "loss": loss_sum / (micro - bad_micro) if micro > bad_micro else math.nan,
            "nonfinite_losses": int(bad_micro),
            "skipped_steps": int(getattr(engine, "skipped_steps", 0)) - w["skipped_before"],
            "lr": float(engine.get_lr()[0]),
            "grad_norm": _grad_norm(engine),
            "loss_scale": _loss_scale(engine),
            "tokens_per_s": tokens / seconds,
            "samples_per_s": samples / seconds,
            "real_token_fraction": tokens / max(positions, 1),  # real tokens / (rows x width), padded or packed
            "step_time_s": seconds / max(w["steps"], 1),
            "memory_gb": _memory_gb(engine.device),
            "epoch": self.state.epoch,
        }
        self.reporter.log(self.state.step, "train", record)
        self.result.train_losses.append((self.state.step, record["loss"]))
        bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                        real_token_fraction=f"{record['real_token_fraction']:.3f}", refresh=False)
        self._reset_window()
        longest = all_reduce_max(bad_run, engine.device)
        if longest >= self.cfg.training.max_bad_steps:
            raise NonFiniteError(
                f"the loss was NaN or infinite for {int(longest)} optimiser steps in a row (by step {self.state.step}; "
                f"--max-bad-steps {self.cfg.training.max_bad_steps}); their updates were skipped, so no checkpoint "
                f"holds non-finite weights. {self._last_checkpoint_sentence()} Lower --lr (or raise --warmup-steps), "
                "check the data for broken rows, then resume from it")
        if bad_micro and self.is_main:
            logger.warning("step %d: %d micro-batch(es) of this log window had a NaN or infinite loss; their "
                           "updates were skipped", self.state.step, int(bad_micro))

    def _count_loss(self, loss: torch.Tensor) -> None:
        """Add a micro-batch's loss to the window on the device; a NaN or infinite one is counted, not summed."""
        bad = ~torch.isfinite(loss)
        self.window_loss.add_(torch.where(bad, 0.0, loss.to(torch.float64)))
        self.window_bad[0].add_(bad.to(torch.float64))
        self.step_bad.logical_or_(bad)

    def _end_step(self) -> None:
        """Extend or end the run of bad optimiser steps (all on the device)."""
        self.bad_run = torch.where(self.step_bad, self.bad_run + 1, 0.0)
        torch.maximum(self.window_bad[1], self.bad_run, out=self.window_bad[1])
        self.step_bad.zero_()

    def _last_checkpoint_sentence(self) -> str:
        intact = self.checkpoints.latest() if hasattr(self.checkpoints, "latest") else None
        return (f"The last checkpoint, {intact}, is intact." if intact is not None
                else "No checkpoint was written before it.")

    def _evaluate(self) -> None:
        started = time.perf_counter()
        metrics = self.evaluator()
        metrics["eval_time_s"] = time.perf_counter() - started
        self.reporter.log(self.state.step, "valid", metrics)
        self.result.valid_metrics = metrics
        if self.is_main:
            logger.info("step %d valid: loss %.4f, perplexity %.2f, masked accuracy %.3f, entity accuracy %.3f",
                        self.state.step, metrics["loss"], metrics["perplexity"], metrics["masked_accuracy"],
                        metrics["entity_accuracy"])
        self.window_start += metrics["eval_time_s"]  # evaluation time is not training throughput

    def _save(self) -> None:
        started = time.perf_counter()
        from framework.training.engine import weights_are_finite

        # Every rank tests its own weights (ZeRO shards differ); one non-finite rank stops them all.
        if all_reduce_max(0.0 if weights_are_finite(self.engine.module) else 1.0, self.engine.device):
            raise NonFiniteError(
                f"the weights at step {self.state.step} are not finite, so they were not saved. "
                f"{self._last_checkpoint_sentence()} Lower --lr (or raise --warmup-steps) and resume from it")
        self.result.checkpoint = self.checkpoints.save(self.engine, self.state, self.cfg)
        self.window_start += time.perf_counter() - started


def _plot(output_dir: Path) -> Path | None:
    """Rank 0's ``loss.png`` from ``metrics.jsonl`` (a failure is logged, never raised: the run is done)."""
    from framework.training.plot import plot_losses

    try:
        plot = plot_losses(output_dir / "metrics.jsonl", output_dir / "loss.png")
    except Exception as exc:  # noqa: BLE001 - a plot must not fail a finished run
        logger.warning("could not plot the losses (%s: %s)", type(exc).__name__, exc)
        return None
    logger.info("loss plot: %s", plot)
    return plot
