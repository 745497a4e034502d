"""The process group: starting it for a launcher-run or plain-``python`` run, and the few collectives the
training code needs (a barrier, rank 0 going first or deciding for all, summing a handful of numbers across ranks).

Every helper is a no-op in a world of one, so single-process code paths need no special cases.

Ranks here are always *global* ranks (``torch.distributed.get_rank()``, the launcher's ``RANK``). On several nodes
every node has a local rank 0 (``LOCAL_RANK``, DeepSpeed's ``engine.local_rank``), so a decision "local rank 0
writes this file" would have one writer per node in a shared output folder: no file the run shares is written on a
local-rank decision (docs/training.md, "Several nodes").
"""

from __future__ import annotations

import os
import pickle
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for a world of one's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed() -> tuple[int, int]:
    """Start torch.distributed (gloo on CPU, nccl on GPU) and return ``(rank, world_size)``.

    Under ``deepspeed`` or ``torchrun`` the launcher sets the rank variables; a plain ``python`` run becomes a
    world of one on a free local port.
    """
    import deepspeed

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    # The one decision the local rank makes: which accelerator of this node the process uses (DeepSpeed's engine
    # makes the same choice later). Set now, because the object collectives before the engine exists
    # (rank0_decides, check_shared_folder) run on the current CUDA device under NCCL, and left at cuda:0 every
    # process of a node would share one GPU, which NCCL refuses.
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().is_available() and "LOCAL_RANK" in os.environ:
        get_accelerator().set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        from framework.training.startup import (StartupWatchdog, check_build_lock, init_rebuilding_op,
                                                prepare_cpu_comm_op, rendezvous_wait_description,
                                                unlink_cpu_comm_segment)

        build_dir = prepare_cpu_comm_op()

        def waiting_for() -> str:
            if build_dir is not None:
                check_build_lock(build_dir)  # a lock left by a builder killed while we waited goes now
            return rendezvous_wait_description(build_dir)

        from framework.console import drop_printed_noise

        with StartupWatchdog(waiting_for), drop_printed_noise():  # "..._comm_op built successfully", every start
            init_rebuilding_op(lambda: deepspeed.init_distributed(verbose=False), build_dir)
        if build_dir is not None:
            barrier()  # every rank has mapped every rank's shared segment: the names can go
            unlink_cpu_comm_segment(dist.get_rank())
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a world of one or before the group exists)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown_distributed() -> None:
    """Leave the process group together, once a run has ended on every rank.

    A rank that simply exits while a peer still holds its gloo (or NCCL) connection can abort that peer at
    interpreter exit ("terminate called without an active exception", status -6), turning a finished run into a
    failed one; torch asks for ``destroy_process_group`` before exit for the same reason. Call it on success only:
    after an error on one rank the barrier would wait for ranks that are gone.
    """
    if dist.is_available() and dist.is_initialized():
        barrier()
        dist.destroy_process_group()


def world_size() -> int:
    """Ranks in the process group (1 before it exists)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def broadcast_from_rank0(value: Any) -> Any:
    """Global rank 0's ``value`` (any picklable object) on every rank; the value itself in a world of one."""
    if world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return value


def all_gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` in a world of one."""
    if world_size() == 1:
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def rank0_decides(rank: int, action: Callable[[], Any]) -> Any:
    """Run ``action`` on global rank 0 alone and return its (picklable) result on every rank.

    For what writes shared files (a corpus, a vocabulary, a cache) and for decisions that must be the same on every
    rank (which file, whether it exists): the other ranks never run ``action``, so they cannot write the same file
    at the same time, nor decide otherwise because their view of a shared filesystem lags. An exception on rank 0
    is raised on every rank (the same object, so callers map it to the same exit status), instead of leaving the
    others waiting in a collective until the process group's timeout.
    """
    if rank == 0:
        try:
            value = action()
        except Exception as exc:
            if world_size() > 1:
                try:
                    pickle.dumps(exc)
                    shipped: BaseException = exc
                except Exception:  # noqa: BLE001 - one that does not pickle still stops the other ranks
                    shipped = RuntimeError(f"{type(exc).__name__}: {exc}")
                broadcast_from_rank0((False, shipped))
            raise  # with rank 0's own traceback
        return broadcast_from_rank0((True, value))[1]
    ok, value = broadcast_from_rank0(None)
    if not ok:
        raise value from RuntimeError(f"raised on rank 0 (rank {rank} waited for its result)")
    return value


def wait_for_path(path: Path, timeout_s: float) -> bool:
    """Whether ``path`` exists, looking again for up to ``timeout_s`` seconds.

    Network filesystems (NFS attribute caching, object-store mounts) can show another node's new file a few
    seconds late; a rank that looks once could take a shared file for a missing one.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if path.exists():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


SHARED_WAIT_S = 10.0
"""How long a rank waits for a file another rank wrote to appear on the shared filesystem."""


def check_shared_folder(folder: Path, rank: int, what: str, timeout_s: float = SHARED_WAIT_S) -> None:
    """Raise :class:`~framework.config.ConfigError` on every rank unless every rank sees a file that global rank 0
    writes into ``folder``: the checkpoints, metrics and export of a run assume one folder shared by all nodes.

    A node-local ``--output-dir`` would otherwise fail much later and worse: each node's shards land on its own
    disk, rank 0's manifest lists only its own, and no checkpoint resumes. Rank 0 alone writes and removes the
    probe (a uniquely named file); a world of one checks nothing.
    """
    if world_size() == 1:
        return
    probe = None
    if rank == 0:
        handle, probe = tempfile.mkstemp(prefix=".shared-check-", dir=folder)
        os.close(handle)
    name = broadcast_from_rank0(probe and Path(probe).name)
    seen = wait_for_path(folder / name, timeout_s)
    views = all_gather_objects((rank, socket.gethostname(), seen))
    if rank == 0:
        os.unlink(probe)
    blind = [f"{r} (host {host})" for r, host, ok in views if not ok]
    if blind:
        from framework.config import ConfigError

        raise ConfigError(
            f"{what} {folder} is not shared between the nodes: rank(s) {', '.join(blind)} did not see, within "
            f"{timeout_s:g} s, a file that rank 0 (host {views[0][1]}) wrote there. Every node must see the same "
            "folder (a shared filesystem: NFS, Lustre, GPFS...); see docs/training.md, \"Several nodes\"")


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """``values`` summed over all ranks (float64, so counts of tokens stay exact)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over all ranks (the value itself in a world of one)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        tensor = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())
    return float(value)
