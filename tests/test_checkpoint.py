"""Checkpoints on a real DeepSpeed engine: written whole or not at all, never rewritten once complete, verified
against their manifest before a resume or an export trusts them, with a fallback to the newest intact one."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from framework.config import RunConfig
from framework.training.checkpoint import (MANIFEST, MARKER, MODEL_STATES, STAGING_PREFIX, CheckpointError,
                                           CheckpointManager, TrainState, verify_checkpoint)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine():  # noqa: ANN201 - a DeepSpeed engine
    from test_hot_path import build_tiny_engine

    return build_tiny_engine(steps=10, accumulation=1)[0]


def saved(engine, root: Path, steps: list[int], keep_last: int = 5) -> CheckpointManager:  # noqa: ANN001
    manager = CheckpointManager(root, keep_last=keep_last, rank=0)
    for step in steps:
        manager.save(engine, TrainState(step=step), RunConfig())
    return manager


def test_a_save_is_complete_with_a_manifest_and_leaves_no_staging(engine, tmp_path: Path) -> None:  # noqa: ANN001
    manager = saved(engine, tmp_path, [2])
    folder = tmp_path / "step-00000002"
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert MODEL_STATES in files and "rng_state_rank0.pt" in files and "run_config.json" in files
    assert all(len(entry["sha256"]) == 64 and entry["size"] == (folder / name).stat().st_size
               for name, entry in files.items())
    assert (folder / MARKER).is_file() and verify_checkpoint(folder) is None
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*")) and (tmp_path / "latest").read_text() == folder.name
    assert manager.resolve_resume("auto") == folder


def test_a_complete_checkpoint_is_never_written_again(engine, tmp_path: Path) -> None:  # noqa: ANN001
    manager = saved(engine, tmp_path, [2])
    folder = tmp_path / "step-00000002"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()}
    manager.save(engine, TrainState(step=2), RunConfig())  # a finished run resumed with nothing to do
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in folder.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("damage", ["empty", "truncated", "flipped", "missing", "manifest"])
def test_resume_auto_falls_back_to_the_newest_intact_checkpoint(engine, tmp_path: Path, damage: str,  # noqa: ANN001
                                                               caplog: pytest.LogCaptureFixture) -> None:
    manager = saved(engine, tmp_path, [2, 4])
    newest = tmp_path / "step-00000004"
    states = newest / MODEL_STATES
    data = states.read_bytes()
    if damage == "empty":
        states.write_bytes(b"")  # the 0-byte file an out-of-disk save left in the issue
    elif damage == "truncated":
        states.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":  # same size, one byte changed: only the SHA-256 sees it
        states.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "missing":
        (newest / "rng_state_rank0.pt").unlink()
    else:
        (newest / MANIFEST).write_text("{not json")
    reason = verify_checkpoint(newest)
    assert reason is not None and str(newest) in reason
    with caplog.at_level(logging.WARNING):
        assert manager.resolve_resume("auto") == tmp_path / "step-00000002"
    assert "step-00000004" in caplog.text and "skipped" in caplog.text
    with pytest.raises(CheckpointError, match="not an intact checkpoint") as info:
        manager.resolve_resume(str(newest))
    assert str(newest) in str(info.value) and "\n" not in str(info.value)


def test_no_intact_checkpoint_is_an_error_not_a_fresh_start(engine, tmp_path: Path) -> None:  # noqa: ANN001
    manager = saved(engine, tmp_path, [2])
    (tmp_path / "step-00000002" / MODEL_STATES).write_bytes(b"")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        manager.resolve_resume("auto")


def test_a_save_killed_midway_is_never_read_and_is_cleared_later(engine, tmp_path: Path) -> None:  # noqa: ANN001
    manager = saved(engine, tmp_path, [2])
    debris = tmp_path / f"{STAGING_PREFIX}step-00000004"  # what a kill during the step-4 save leaves
    debris.mkdir()
    (debris / MODEL_STATES).write_bytes(b"partial")
    assert manager.resolve_resume("auto") == tmp_path / "step-00000002"
    manager.save(engine, TrainState(step=6), RunConfig())
    assert not debris.exists() and manager.resolve_resume("auto") == tmp_path / "step-00000006"


def test_a_damaged_checkpoint_of_the_same_step_is_moved_aside_and_saved_afresh(engine, tmp_path: Path) -> None:  # noqa: ANN001
    manager = saved(engine, tmp_path, [2])
    folder = tmp_path / "step-00000002"
    (folder / MODEL_STATES).write_bytes(b"")
    manager.save(engine, TrainState(step=2), RunConfig())  # re-trained up to step 2 after falling back further
    assert verify_checkpoint(folder) is None
    aside = list(tmp_path.glob("step-00000002.damaged-*"))
    assert len(aside) == 1 and (aside[0] / MODEL_STATES).stat().st_size == 0  # nothing is deleted
    assert manager.complete_checkpoints() == [folder]


def test_pruning_keeps_the_newest_and_removes_older_ones(engine, tmp_path: Path) -> None:  # noqa: ANN001
    saved(engine, tmp_path, [2, 4, 6], keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["step-00000004", "step-00000006"]


def test_export_refuses_a_damaged_checkpoint(engine, tmp_path: Path) -> None:  # noqa: ANN001
    from framework.training.export import ExportError, export_checkpoint

    saved(engine, tmp_path, [2])
    folder = tmp_path / "step-00000002"
    data = (folder / MODEL_STATES).read_bytes()
    (folder / MODEL_STATES).write_bytes(data[:-10])
    with pytest.raises(ExportError, match="damaged checkpoint") as info:
        export_checkpoint(folder, tmp_path / "model")
    assert MODEL_STATES in str(info.value) and not (tmp_path / "model").exists()


def test_checkpoints_from_before_manifests_still_resume(engine, tmp_path: Path) -> None:  # noqa: ANN001
    manager = saved(engine, tmp_path, [2])
    folder = tmp_path / "step-00000002"
    os.remove(folder / MANIFEST)
    assert verify_checkpoint(folder) is None and manager.resolve_resume("auto") == folder
    (folder / MODEL_STATES).write_bytes(b"")
    assert "empty" in verify_checkpoint(folder)
