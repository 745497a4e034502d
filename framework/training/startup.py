"""What a process can wait for before its first step, made visible: DeepSpeed's CPU op build and the rendezvous.

On CPU, ``deepspeed.init_distributed`` loads DeepSpeed's shared-memory communication op
(``deepspeed_shm_comm``), which torch compiles just in time into ``$TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions/py<ver>_cpu/``) the first time an environment uses it, about a minute. Torch guards
that build with a ``lock`` file in the op's build folder and every other process waits, polling, until the
file goes. A process killed during the build leaves the file behind, and then every later start on that
machine waits forever with no message (seen: 12 minutes at 0% CPU).

:func:`prepare_cpu_comm_op` runs before ``init_distributed``: it says in one line when the op is about to be
compiled, and removes a lock that is stale (older than :data:`STALE_AFTER_S`, nothing written in the build
folder for as long, and no process working in that folder: torch runs the compiler with the build folder as
its working directory) with a one-line warning; a lock that looks alive is reported and waited for.
:class:`StartupWatchdog` then logs every minute what the start is still waiting for.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

CPU_COMM_OP = "deepspeed_shm_comm"
STALE_AFTER_S = 120.0
"""A build lock this old, in a build folder untouched for as long and with no compiler at work, is stale."""


def extension_build_dir(name: str) -> Path:
    """The folder torch builds extension ``name`` in (``torch.utils.cpp_extension``'s rule; nothing is created)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root is None:
        import torch
        from torch.utils.cpp_extension import get_default_build_root

        if torch.version.hip is not None:
            accelerator = f"rocm{torch.version.hip.replace('.', '')}"
        elif torch.version.cuda is not None:
            accelerator = f"cu{torch.version.cuda.replace('.', '')}"
        else:
            accelerator = "cpu"
        version = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
        root = os.path.join(get_default_build_root(), f"{version}_{accelerator}")
    return Path(root) / name


def _processes_working_in(folder: Path) -> list[int]:
    """PIDs whose working directory is ``folder`` (Linux ``/proc``; empty where that cannot be read)."""
    found = []
    target = os.path.realpath(folder)
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        try:
            if os.path.realpath(os.readlink(entry / "cwd")) == target:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _descends_from_us(pid: int, depth: int = 8) -> bool:
    """Whether ``pid`` is a child (or grandchild...) of this process: our own compiler, not another start's."""
    me = os.getpid()
    for _ in range(depth):
        try:  # "pid (comm) state ppid ...": the command name may hold spaces and parentheses
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
        if pid == me:
            return True
        if pid <= 1:
            return False
    return False


def _newest_write(folder: Path) -> float:
    times = [p.stat().st_mtime for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    return max(times, default=0.0)


def check_build_lock(build_dir: Path, stale_after_s: float = STALE_AFTER_S, now: float | None = None) -> str:
    """Look at ``build_dir/lock``: ``"none"``, ``"cleared"`` (a stale lock removed) or ``"held"`` (being built).

    A lock is stale when it is older than ``stale_after_s``, nothing in the folder was written for as long,
    and no process has the folder as its working directory.
    """
    lock = build_dir / "lock"
    try:
        lock_time = lock.stat().st_mtime
    except FileNotFoundError:
        return "none"
    now = time.time() if now is None else now
    age, quiet = now - lock_time, now - _newest_write(build_dir)
    builders = _processes_working_in(build_dir)
    if age > stale_after_s and quiet > stale_after_s and not builders:
        try:
            lock.unlink()
        except FileNotFoundError:  # its owner finished meanwhile
            return "none"
        logger.warning("removed a stale build lock %s (%.0f s old, no compiler at work: a process was killed while "
                       "compiling DeepSpeed's CPU communication op); compiling it again", lock, age)
        return "cleared"
    if any(_descends_from_us(pid) for pid in builders):
        # This very start is compiling (the watchdog asks while it waits): no other process to wait for.
        logger.info("still compiling DeepSpeed's CPU communication op in %s (%.0f s so far; once per "
                    "TORCH_EXTENSIONS_DIR)", build_dir, age)
        return "held"
    logger.info("waiting for another process compiling in %s (lock %.0f s old%s); if none is running, delete %s",
                build_dir, age, f", compiler PIDs {builders}" if builders else "", lock)
    return "held"


def _cpu_accelerator() -> bool:
    try:
        from deepspeed.accelerator import get_accelerator

        return get_accelerator().device_name() == "cpu"
    except Exception:  # noqa: BLE001 - no DeepSpeed accelerator means no CPU op either
        return False


def prepare_cpu_comm_op() -> Path | None:
    """Before ``deepspeed.init_distributed`` on CPU: announce a first compile, clear a stale lock (see module doc).

    Returns:
        The op's build folder on a CPU accelerator, else ``None`` (GPUs use NCCL: no op to build).
    """
    if not _cpu_accelerator():
        return None
    build_dir = extension_build_dir(CPU_COMM_OP)
    check_build_lock(build_dir)
    if not (build_dir / f"{CPU_COMM_OP}.so").is_file():
        logger.info("compiling DeepSpeed's CPU communication op (%s) into %s, once per environment (set "
                    "TORCH_EXTENSIONS_DIR to choose the folder); about a minute", CPU_COMM_OP, build_dir)
    return build_dir


SHM_SEGMENT = "deepspeed_allreduce_buffer"
"""Prefix of the shared-memory segment DeepSpeed's CPU op creates per rank when all ranks share one machine."""


def unlink_cpu_comm_segment(rank: int, shm_dir: Path = Path("/dev/shm")) -> Path | None:
    """Remove the name of this rank's DeepSpeed shared-memory segment; returns it if there was one.

    DeepSpeed's CPU communication op creates ``deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``
    (about 69 MB, in RAM-backed ``/dev/shm``) and never unlinks it, so every run left one per rank until reboot:
    298 of them (20 GB) had piled up on this project's machine and starved it into swapping. Call it once every
    rank has mapped every other's segment (after a barrier that follows ``init_distributed``): the mappings live
    on, only the name goes.
    """
    name = (f"{SHM_SEGMENT}_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}"
            f"_{rank}")
    path = shm_dir / name
    try:
        path.unlink()
    except FileNotFoundError:  # not all ranks on one machine (no segment), or not this op
        return None
    return path


def init_rebuilding_op(init: Callable[[], None], build_dir: Path | None) -> None:
    """Run ``init`` (``deepspeed.init_distributed``); if it fails to import a CPU op that was never built, build
    it by running ``init`` once more.

    torch's extension loader waits while the build lock exists, then imports the library the lock's owner was
    building. When that owner had been killed and :func:`check_build_lock` removed its stale lock, there is no
    library and the import fails (seen when a study worker was killed mid-compile and restarted). DeepSpeed
    builds the op before it creates the process group, so a second call is safe: it takes the lock and compiles.
    """
    try:
        init()
    except ImportError:
        if build_dir is None or (build_dir / f"{CPU_COMM_OP}.so").is_file():
            raise
        logger.warning("DeepSpeed's CPU communication op was never built in %s (its builder was killed and its "
                       "stale lock removed); compiling it now", build_dir)
        init()


class StartupWatchdog:
    """Logs every ``every_s`` seconds, until the block ends, what the start is still waiting for.

    Args:
        waiting_for: called at each report; returns what is being waited for, in words.
        every_s: seconds between reports.
    """

    def __init__(self, waiting_for: Callable[[], str], every_s: float = 60.0) -> None:
        self.waiting_for, self.every_s = waiting_for, every_s
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="startup-watchdog", daemon=True)
        self._started = 0.0

    def _watch(self) -> None:
        while not self._done.wait(self.every_s):
            try:
                what = self.waiting_for()
            except Exception as exc:  # noqa: BLE001 - a report must never break the start
                what = f"(cannot tell: {exc})"
            logger.warning("still starting after %.0f s: waiting for %s", time.monotonic() - self._started, what)

    def __enter__(self) -> "StartupWatchdog":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=1.0)


def rendezvous_wait_description(build_dir: Path | None) -> str:
    """What ``init_distributed`` is waiting for, as far as can be seen from outside."""
    if build_dir is not None and (build_dir / "lock").is_file():
        if any(_descends_from_us(pid) for pid in _processes_working_in(build_dir)):
            return f"this process's compile of DeepSpeed's CPU communication op in {build_dir} (about a minute)"
        return f"the build lock {build_dir / 'lock'} (another process compiling DeepSpeed's CPU op, or a stale lock)"
    world = os.environ.get("WORLD_SIZE", "1")
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return (f"all {world} ranks to join the rendezvous at {address} (is every rank started, with the same "
            f"MASTER_ADDR/MASTER_PORT?)")
