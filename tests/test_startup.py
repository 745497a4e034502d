"""Start-up never hangs silently: a stale torch-extension build lock is cleared, a live one is reported, a first
compile of DeepSpeed's CPU op is announced, and a long wait is logged with what it waits for."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.training.startup import (CPU_COMM_OP, STALE_AFTER_S, StartupWatchdog, check_build_lock,
                                        extension_build_dir, init_rebuilding_op, prepare_cpu_comm_op,
                                        rendezvous_wait_description)

ROOT = Path(__file__).resolve().parents[1]


def stale_lock(folder: Path, age_s: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "build.ninja").write_text("rule cxx\n")
    lock = folder / "lock"
    lock.write_text("")
    old = time.time() - age_s
    for path in folder.iterdir():
        os.utime(path, (old, old))
    return lock


def test_a_stale_lock_is_removed_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lock = stale_lock(tmp_path / CPU_COMM_OP, STALE_AFTER_S + 60)
    with caplog.at_level(logging.WARNING):
        assert check_build_lock(lock.parent) == "cleared"
    assert not lock.exists() and "stale build lock" in caplog.text and str(lock) in caplog.text


def test_a_young_lock_or_one_with_a_compiler_at_work_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    young = stale_lock(tmp_path / "young" / CPU_COMM_OP, 5)
    with caplog.at_level(logging.INFO):
        assert check_build_lock(young.parent) == "held"
    assert young.exists() and "delete" in caplog.text
    busy = stale_lock(tmp_path / "busy" / CPU_COMM_OP, STALE_AFTER_S + 60)
    compiler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=busy.parent)
    try:
        assert check_build_lock(busy.parent) == "held" and busy.exists()  # a live process works in the folder
    finally:
        compiler.kill()
        compiler.wait()
    recent = stale_lock(tmp_path / "recent" / CPU_COMM_OP, STALE_AFTER_S + 60)
    (recent.parent / "shm.o").write_bytes(b"\0")  # the build folder was written just now
    assert check_build_lock(recent.parent) == "held"
    assert check_build_lock(tmp_path / "none") == "none"


def test_the_build_folder_follows_torch_extensions_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert extension_build_dir(CPU_COMM_OP) == tmp_path / CPU_COMM_OP
    lock = stale_lock(tmp_path / CPU_COMM_OP, STALE_AFTER_S + 60)
    with caplog.at_level(logging.INFO):
        assert prepare_cpu_comm_op() == lock.parent  # this machine runs DeepSpeed on its CPU accelerator
    assert not lock.exists() and "compiling DeepSpeed's CPU communication op" in caplog.text
    assert not (tmp_path / CPU_COMM_OP / f"{CPU_COMM_OP}.so").exists()


def test_the_watchdog_says_what_it_waits_for(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with caplog.at_level(logging.WARNING):
        with StartupWatchdog(lambda: rendezvous_wait_description(None), every_s=0.05):
            time.sleep(0.3)
    assert "still starting after" in caplog.text and "all 2 ranks" in caplog.text and "10.0.0.1:29500" in caplog.text
    caplog.clear()
    with StartupWatchdog(lambda: "nothing", every_s=10):
        pass  # a quick start logs nothing
    assert "still starting" not in caplog.text


@pytest.mark.slow
def test_a_start_with_a_stale_lock_does_not_hang(tmp_path: Path) -> None:
    """A fresh process with a stale lock in its own extensions folder: init_distributed clears it, compiles the
    op (about a minute on 2 cores) and returns, where it used to wait forever."""
    lock = stale_lock(tmp_path / CPU_COMM_OP, STALE_AFTER_S + 60)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["TORCH_EXTENSIONS_DIR"] = str(tmp_path)
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from framework.training.distributed import init_distributed\nprint('world', init_distributed())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "world (0, 1)" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "stale build lock" in proc.stderr and not lock.exists()
    assert (tmp_path / CPU_COMM_OP / f"{CPU_COMM_OP}.so").is_file()


def test_our_own_compile_is_not_reported_as_another_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The watchdog asks while this very start compiles: its compiler is our child, not another start."""
    from framework.training.startup import rendezvous_wait_description

    busy = stale_lock(tmp_path / "ours" / CPU_COMM_OP, 30)
    compiler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], cwd=busy.parent)
    try:
        time.sleep(0.2)
        with caplog.at_level(logging.INFO):
            assert check_build_lock(busy.parent) == "held" and busy.exists()
        assert "still compiling" in caplog.text and "another process" not in caplog.text
        assert rendezvous_wait_description(busy.parent).startswith("this process's compile")
    finally:
        compiler.kill()
        compiler.wait()


def test_an_op_left_unbuilt_by_a_killed_builder_is_built_by_a_second_init(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """After a stale lock is removed, torch's loader (which waited on it) imports a library nobody built: the
    ImportError leads to one more init, which builds it; a real ImportError (the library is there) is raised."""
    build_dir = tmp_path / CPU_COMM_OP
    build_dir.mkdir()
    calls: list[int] = []

    def init() -> None:
        calls.append(1)
        if len(calls) == 1:  # the waiter, after the stale lock went: imports what nobody built
            raise ImportError(f"{build_dir}/{CPU_COMM_OP}.so: cannot open shared object file")
        (build_dir / f"{CPU_COMM_OP}.so").write_bytes(b"")  # the second call takes the lock and compiles

    with caplog.at_level(logging.WARNING):
        init_rebuilding_op(init, build_dir)
    assert len(calls) == 2 and "never built" in caplog.text

    def broken() -> None:
        raise ImportError("undefined symbol")  # the library exists and is bad: no retry hides that

    with pytest.raises(ImportError, match="undefined symbol"):
        init_rebuilding_op(broken, build_dir)
    with pytest.raises(ImportError):
        init_rebuilding_op(broken, None)  # GPU: no CPU op, nothing to rebuild


def test_a_start_leaves_no_shared_memory_segment_behind(tmp_path: Path) -> None:
    """DeepSpeed's CPU op creates a ~69 MB /dev/shm segment per rank and never unlinks it; after our start the
    name is gone (while the process still runs) and a collective still works over the mapping."""
    if not Path("/dev/shm").is_dir():
        pytest.skip("no /dev/shm on this system")
    port = str(__import__("framework.training.distributed", fromlist=["free_port"]).free_port())
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(MASTER_PORT=port, MASTER_ADDR="127.0.0.1", LOCAL_SIZE="1")  # as the deepspeed launcher sets it
    code = ("import os, torch, torch.distributed as dist\n"
            "from framework.training.distributed import init_distributed\n"
            "init_distributed()\n"
            "left = [n for n in os.listdir('/dev/shm') if n.startswith('deepspeed_allreduce_buffer') and "
            f"n.endswith('_{port}_0')]\n"
            "t = torch.ones(4); dist.all_reduce(t)\n"
            "print('left', left, 'sum', float(t.sum()))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "left [] sum 4.0" in proc.stdout
    assert not [n for n in os.listdir("/dev/shm") if n.endswith(f"_{port}_0")]
