"""The process group: starting it for a launcher-run or plain-``python`` run, and the few collectives the
training code needs (a barrier, rank 0 going first, summing a handful of numbers across ranks).

Every helper is a no-op in a world of one, so single-process code paths need no special cases.
"""

from __future__ import annotations

import os
import socket
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
    if not dist.is_initialized():
        from framework.training.startup import (StartupWatchdog, check_build_lock, prepare_cpu_comm_op,
                                                rendezvous_wait_description)

        build_dir = prepare_cpu_comm_op()

        def waiting_for() -> str:
            if build_dir is not None:
                check_build_lock(build_dir)  # a lock left by a builder killed while we waited goes now
            return rendezvous_wait_description(build_dir)

        with StartupWatchdog(waiting_for):
            deepspeed.init_distributed(verbose=False)
    return dist.get_rank(), dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a world of one or before the group exists)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def on_rank0_first(rank: int, action: Callable[[], Any]) -> Any:
    """Run ``action`` on rank 0, then on the others (which then find its cached result)."""
    result = action() if rank == 0 else None
    barrier()
    if rank != 0:
        result = action()
    return result


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
