"""Checkpoints that a run can resume from exactly, and only when they are complete.

Layout under ``OUTPUT/checkpoints``::

    step-00000200/
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed's files (ZeRO shards included)
        rng_state_rank{R}.pt                           Python, NumPy, torch (and CUDA) RNG states of rank R
        run_config.json, run_config.yaml               the run's configuration
        hf_config/                                     model config.json and tokenizer, for launch/export.py
        MANIFEST.json                                  every file above with its size and SHA-256
        COMPLETE                                       written last, by rank 0, after every rank has finished

DeepSpeed stores our ``client_state`` (the :class:`TrainState`: step, epoch, position in the epoch) with the
model states. RNG states are per rank (dropout differs between ranks), so every rank writes its own file.

A complete checkpoint is never written into again. A save goes into ``.saving-step-N/``; once every rank has
finished, rank 0 writes the manifest and the marker there and renames the folder to ``step-N`` (a rename is
atomic: a reader sees the whole checkpoint or none of it). A crash or a full disk during a save leaves only
the staging folder, which nothing reads and the next save removes. Saving a step whose complete checkpoint
exists already (a finished run resumed with nothing to do) writes nothing.

"Rank 0" is the *global* rank 0, and every decision about the folder (is this step saved already, are all files
there, prune) is its alone, sent to the others: on several nodes sharing ``OUTPUT`` (docs/training.md, "Several
nodes") each file of a checkpoint has exactly one writer, and a node that sees the shared folder a moment late
cannot take another branch. Before writing the manifest rank 0 waits until it sees every file the other ranks say
they wrote.

Resuming verifies before it trusts: ``--resume auto`` takes the newest checkpoint whose files match its
manifest (sizes and SHA-256), saying in one line which it took and which it skipped and why; ``--resume
PATH`` to a damaged checkpoint is a one-line error naming the file. Checkpoints written before manifests
existed are checked for their marker and a non-empty model-states file only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
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
from framework.training.distributed import SHARED_WAIT_S, all_gather_objects, barrier, rank0_decides, wait_for_path
from framework.training.distributed import broadcast_from_rank0 as _broadcast_from_rank0

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
MANIFEST = "MANIFEST.json"
SCHEDULE_KEY = "lr_schedule"  # client state: the learning-rate schedule as run (framework.training.schedule)
STAGING_PREFIX = ".saving-"
MODEL_STATES = "mp_rank_00_model_states.pt"
_TAG = re.compile(r"^step-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted (damaged, incomplete) was asked for by name."""


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


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (``sha256sum`` prints the same)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> dict[str, Any]:
    """Write ``MANIFEST.json``: every file under ``folder`` (but the manifest and marker) with size and SHA-256."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in (MANIFEST, MARKER)):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = {"files": files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def verify_checkpoint(folder: Path, hashes: bool = True) -> str | None:
    """``None`` when ``folder`` is a complete, intact checkpoint; else why not, naming the file.

    Args:
        folder: a ``step-N`` folder.
        hashes: also compare SHA-256 digests (sizes alone catch truncation and zero-byte files).
    """
    if not folder.is_dir():
        return f"{folder}: no such folder"
    if not is_complete(folder):
        return f"{folder / MARKER} is missing (the save was interrupted)"
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():  # written before manifests existed: what can still be checked
        states = folder / MODEL_STATES
        if not states.is_file() or states.stat().st_size == 0:
            return f"{states} is missing or empty"
        return None
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{manifest_path} is unreadable ({exc})"
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{path} has {size} bytes, its manifest says {entry['size']} (truncated or overwritten)"
    if hashes:
        for name, entry in files.items():
            if file_sha256(folder / name) != entry["sha256"]:
                return f"{folder / name} does not match its SHA-256 in {MANIFEST} (corrupted)"
    return None




def _files_under(folder: Path) -> list[str]:
    """The files under ``folder`` as this process sees them, relative POSIX paths."""
    return [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]


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
        """The checkpoint ``--resume`` names: ``auto`` (the newest that verifies, or ``None``), a folder, or ``None``.

        Rank 0 verifies (hashing every file once) and tells the other ranks, so all take the same checkpoint.

        Raises:
            CheckpointError: ``--resume PATH`` is damaged or incomplete, or ``auto`` found checkpoints but none
                verifies (starting afresh would silently throw the run away).
        """
        if resume is None:
            return None
        if resume != "auto":
            folder = Path(resume)
            reason = _broadcast_from_rank0(verify_checkpoint(folder) if self.rank == 0 else None)
            if reason is not None:
                raise CheckpointError(f"--resume {folder}: not an intact checkpoint: {reason}. Use --resume auto to "
                                      f"take the newest intact one in {self.root}")
            return folder
        chosen, skipped = None, []
        if self.rank == 0:
            for folder in reversed(self.complete_checkpoints()):
                reason = verify_checkpoint(folder)
                if reason is None:
                    chosen = folder
                    break
                skipped.append(f"{folder.name} ({reason})")
        chosen, skipped = _broadcast_from_rank0((chosen, skipped))
        if chosen is None and skipped:
            raise CheckpointError(f"--resume auto: no intact checkpoint in {self.root}; skipped " + "; ".join(skipped)
                                  + ". Resume from an earlier copy or start afresh in another --output-dir")
        if self.rank == 0:
            if chosen is None:
                logger.info("--resume auto: no complete checkpoint in %s; starting from scratch", self.root)
            elif skipped:
                logger.warning("--resume auto: resuming from %s, the newest intact checkpoint; skipped %s", chosen.name,
                               "; ".join(skipped))
            else:
                logger.info("--resume auto: resuming from %s (verified against its manifest)", chosen.name)
        return chosen

    def save(self, engine: Any, state: TrainState, config: RunConfig) -> Path:
        """Write a checkpoint of ``engine`` after ``state.step`` steps; every rank must call it.

        The files go to a staging folder that is renamed to ``step-N`` once complete (see the module docstring).
        A step that already has a complete checkpoint is not written again.
        """
        tag = checkpoint_tag(state.step)
        folder = self.root / tag
        # Rank 0 looks and tells the others: on a shared filesystem another node may see the folder late, and
        # ranks that took different branches here would wait in different collectives.
        found = None  # no complete checkpoint of this step; "" an intact one; else why it is damaged
        if self.rank == 0 and is_complete(folder):
            found = verify_checkpoint(folder) or ""
        found = _broadcast_from_rank0(found)
        if found is not None:
            if found == "":
                if self.rank == 0:
                    logger.info("checkpoint %s exists and is intact; not writing it again", folder)
                return folder
            reason = found
            if self.rank == 0:  # kept for inspection under a name nothing resumes from, never written into
                aside = folder.with_name(f"{tag}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
                os.replace(folder, aside)
                logger.warning("checkpoint %s is damaged (%s); moved it to %s and saving this step afresh", folder,
                               reason, aside)
            barrier()
        staging = self.root / f"{STAGING_PREFIX}{tag}"
        started = time.perf_counter()
        if self.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)  # debris of a save that was killed
            staging.mkdir(parents=True)
        barrier()
        # save_latest=False: DeepSpeed's "latest" would name the staging folder; rank 0 writes it after the rename.
        client_state: dict[str, Any] = {"train_state": asdict(state)}
        from framework.training.export import MASTER_NAMES_KEY, optimizer_param_names

        names = optimizer_param_names(engine)  # ZeRO-0 bf16/fp16: names of the unnamed fp32 masters, for export
        if names is not None:
            client_state[MASTER_NAMES_KEY] = names
        from framework.training.schedule import capture_schedule

        # DeepSpeed keeps only the scheduler's position; a resume with another length needs the whole schedule.
        schedule = capture_schedule(engine)
        if schedule is not None:
            client_state[SCHEDULE_KEY] = schedule
        engine.save_checkpoint(str(self.root), tag=staging.name, client_state=client_state, save_latest=False)
        torch.save(capture_rng_state(), staging / f"rng_state_rank{self.rank}.pt")
        # Every rank names the files it sees (its own at least): on a network filesystem rank 0 may see another
        # node's new file a moment late, and a manifest that missed one would not protect it.
        written = sorted({name for names in all_gather_objects(_files_under(staging)) for name in names})

        def seal() -> None:  # rank 0 alone; its exception (disk full, a shard missing) stops every rank
            missing = [name for name in written if not wait_for_path(staging / name, SHARED_WAIT_S)]
            if missing:
                raise CheckpointError(f"{staging}: rank 0 does not see {', '.join(missing[:4])} that other ranks "
                                      f"wrote {SHARED_WAIT_S:g} s ago; is --output-dir on a filesystem every node "
                                      "shares? The last complete checkpoint is untouched")
            config.save(staging)
            if self.tokenizer is not None:
                from framework.training.export import write_hf_config

                write_hf_config(getattr(engine, "module", engine), self.tokenizer, staging)
            write_manifest(staging)
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            marker = {"step": state.step, "world_size": world, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            (staging / MARKER).write_text(json.dumps(marker) + "\n", encoding="utf-8")
            if folder.exists():  # an interrupted save of this step from before staging folders: never complete
                shutil.rmtree(folder)
            os.replace(staging, folder)
            self._prune()
            logger.info("saved checkpoint %s in %.1f s", folder, time.perf_counter() - started)

        # Also the barrier after the save: nobody races ahead into a prune or a second save.
        rank0_decides(self.rank, seal)
        return folder

    def load(self, engine: Any, folder: Path, config: RunConfig | None = None) -> TrainState:
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
        self._continue(engine, folder, client_state.get(SCHEDULE_KEY), state, config)
        return state

    def _continue(self, engine: Any, folder: Path, schedule: dict[str, Any] | None, state: TrainState,
                  config: RunConfig | None) -> None:
        """Say what differs from the checkpoint's run config and keep its schedule's shape (every rank applies it,
        rank 0 logs it; :mod:`framework.training.schedule`)."""
        from framework.training.schedule import continue_schedule, run_config_changes

        notes = []
        saved_config = folder / "run_config.json"
        if config is not None and saved_config.is_file():
            try:
                notes += run_config_changes(json.loads(saved_config.read_text(encoding="utf-8")), config.to_dict())
            except (OSError, ValueError) as exc:
                notes.append(f"could not compare with {saved_config} ({exc})")
        notes += continue_schedule(engine, schedule, state.step)
        if self.rank == 0:
            for note in notes:
                logger.info("resume: %s", note)

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
            debris = folder.name.startswith(STAGING_PREFIX)
            if (debris or _TAG.match(folder.name)) and folder not in keep and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                logger.info("removed old checkpoint %s", folder)
        latest_file = self.root / "latest"
        if complete:
            # DeepSpeed's own tools (zero_to_fp32.py, load_checkpoint without a tag) read this file.
            latest_file.write_text(complete[-1].name, encoding="utf-8")
