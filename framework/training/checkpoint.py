"""Checkpoints that a run can resume from exactly, and only when they are complete.

Layout under ``OUTPUT/checkpoints``::

    step-00000200/
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed's files (ZeRO shards included)
        rng_state_rank{R}.pt                           Python, NumPy, torch (and CUDA) RNG states of rank R
        run_config.json, run_config.yaml               the run's configuration
        hf_config/                                     model config.json and tokenizer, for launch/export.py
        COMPLETE                                       written last, by rank 0, after every rank has finished

DeepSpeed stores our ``client_state`` (the :class:`TrainState`: step, epoch, position in the epoch) with the
model states. RNG states are per rank (dropout differs between ranks), so every rank writes its own file.

A crash halfway through a save leaves a folder without ``COMPLETE``; ``--resume auto`` ignores it and picks
the newest folder that has one, and the next prune removes the debris.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from framework.config import RunConfig
from framework.training.distributed import barrier

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
_TAG = re.compile(r"^step-(\d+)$")


@dataclass
class TrainState:
    """Where the run is: enough, with the RNG states, to continue exactly.

    Attributes:
        step: optimiser steps done.
        epoch: the current epoch.
        epoch_position: examples of this epoch already consumed by each rank (a multiple of the micro-batch).
        tokens_seen: non-padding tokens this rank has fed to the model (the model card reports it times the world
            size). Checkpoints written before it was counted load with 0: the count then starts at the resume.
    """

    step: int = 0
    epoch: int = 0
    epoch_position: int = 0
    tokens_seen: int = 0


def checkpoint_tag(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimiser steps."""
    return f"step-{step:08d}"


def capture_rng_state() -> dict[str, Any]:
    """The Python, NumPy, torch and (where present) CUDA generator states of this process.

    Returned as tensors and plain numbers (:func:`~framework.training.safe_load.encode_rng_state`), so the
    ``rng_state_rank{R}.pt`` it is saved to loads with ``torch.load(weights_only=True)``: no pickled object of
    a checkpoint is ever executed (docs/security.md).
    """
    from framework.training.safe_load import encode_rng_state

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return encode_rng_state(state)


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` saved."""
    from framework.training.safe_load import decode_rng_state

    state = decode_rng_state(state)
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def is_complete(folder: Path) -> bool:
    """True when every rank finished writing ``folder`` (rank 0 wrote the marker)."""
    return (folder / MARKER).is_file()


class CheckpointManager:
    """Saves, finds, loads and prunes the run's checkpoints.

    Args:
        root: ``OUTPUT/checkpoints``.
        keep_last: complete checkpoints to keep.
        rank: this process's global rank; rank 0 writes the marker, the config and prunes.
        tokenizer: saved with the model config in each checkpoint's ``hf_config/`` (so that
            ``launch/export.py`` needs nothing but the checkpoint folder); ``None`` skips it.
    """

    def __init__(self, root: str | Path, keep_last: int, rank: int, tokenizer: Any = None) -> None:
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank
        self.tokenizer = tokenizer

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _TAG.match(p.name)) and is_complete(p)]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or ``None``."""
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    def resolve_resume(self, resume: str | None) -> Path | None:
        """The checkpoint ``--resume`` names: ``auto`` (latest complete, or ``None``), a folder, or ``None``."""
        if resume is None:
            return None
        if resume == "auto":
            found = self.latest()
            if found is None:
                logger.info("--resume auto: no complete checkpoint in %s; starting from scratch", self.root)
            return found
        folder = Path(resume)
        if not is_complete(folder):
            raise FileNotFoundError(
                f"--resume {folder}: not a complete checkpoint (no {MARKER} marker; it may be a save that was "
                f"interrupted). Use --resume auto to pick the latest complete one in {self.root}"
            )
        return folder

    def save(self, engine: Any, state: TrainState, config: RunConfig) -> Path:
        """Write a checkpoint of ``engine`` after ``state.step`` steps; every rank must call it."""
        tag = checkpoint_tag(state.step)
        folder = self.root / tag
        started = time.perf_counter()
        engine.save_checkpoint(str(self.root), tag=tag, client_state={"train_state": asdict(state)})
        torch.save(capture_rng_state(), folder / f"rng_state_rank{self.rank}.pt")
        barrier()  # every rank's shards and RNG file are on disk before the marker says so
        if self.rank == 0:
            config.save(folder)
            if self.tokenizer is not None:
                from framework.training.export import write_hf_config

                write_hf_config(getattr(engine, "module", engine), self.tokenizer, folder)
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            marker = {"step": state.step, "world_size": world, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (folder / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
            self._prune()
            logger.info("saved checkpoint %s in %.1f s", folder, time.perf_counter() - started)
        barrier()  # nobody races ahead into a prune or a second save
        return folder

    def load(self, engine: Any, folder: Path) -> TrainState:
        """Load ``folder`` into ``engine`` (weights, optimizer, scheduler, loss scale) and return its state.

        RNG states are returned to the caller through :meth:`restore_rng`, to be applied right before the first
        resumed step (building loaders and metrics in between must not shift them).

        Every file is read with ``torch.load(weights_only=True)`` and DeepSpeed's allow-list
        (:func:`~framework.training.safe_load.install_safe_checkpoint_engine`); a file that pickles anything else
        raises :class:`~framework.training.safe_load.UnsafeFileError` before any of it runs.
        """
        from framework.training.safe_load import install_safe_checkpoint_engine

        install_safe_checkpoint_engine(engine)
        path, client_state = engine.load_checkpoint(str(folder.parent), tag=folder.name,
                                                    load_optimizer_states=True, load_lr_scheduler_states=True)
        if path is None or client_state is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {folder}; see its log messages above")
        state = TrainState(**client_state["train_state"])
        logger.info("resumed from %s: step %d, epoch %d, position %d", folder, state.step, state.epoch,
                    state.epoch_position)
        return state

    def restore_rng(self, folder: Path) -> None:
        """Restore this rank's RNG states saved in ``folder`` (warns when the world size changed).

        The file is read weights-only; one of the old pickle format is refused with a message saying how to
        convert it (:func:`~framework.training.safe_load.load_rng_file`).
        """
        path = folder / f"rng_state_rank{self.rank}.pt"
        if not path.is_file():
            logger.warning("%s has no RNG state for rank %d (different world size?); dropout will differ from an "
                           "uninterrupted run", folder, self.rank)
            return
        from framework.training.safe_load import load_rng_file

        restore_rng_state(load_rng_file(path))

    def _prune(self) -> None:
        """Keep the newest ``keep_last`` complete checkpoints; remove older ones and interrupted saves."""
        complete = self.complete_checkpoints()
        keep = set(complete[-self.keep_last :])
        for folder in self.root.iterdir():
            if _TAG.match(folder.name) and folder not in keep and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                logger.info("removed old checkpoint %s", folder)
        latest_file = self.root / "latest"
        if complete:
            # DeepSpeed's own tools (zero_to_fp32.py, load_checkpoint without a tag) read this file.
            latest_file.write_text(complete[-1].name, encoding="utf-8")
