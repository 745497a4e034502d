"""What the console shows: one log format for every command, log lines that print above the progress bar, and
DeepSpeed's start-up chatter kept out unless ``--verbose`` asks for it.

Every launch script logs ``HH:MM:SS LEVEL logger: message`` (other ranks: ``[rank N] LEVEL logger: message``)
through :func:`configure_logging`. DeepSpeed prints the same few lines on every run, none of which asks
anything of the user: ``Setting accelerator to CPU ...`` (its logger, at the first accelerator query),
``DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully`` (a ``print`` in
``deepspeed.comm.torch``, on every start, built or not) and ``Attempting to get learning rate from scheduler
before it has started`` (its logger, when the engine is built); its op builders' test compiles log each gcc
command line (``compilers.C.base``). :func:`quiet_deepspeed` drops exactly these; every other DeepSpeed
warning still shows.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys
from typing import Any, Callable, Iterator, TextIO, TypeVar

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATEFMT = "%H:%M:%S"
"""Time of day only: a run's logs are read beside its progress bar, and metrics.jsonl keeps full timestamps."""

DEEPSPEED_NOISE = (
    "Setting accelerator to CPU",
    "Attempting to get learning rate from scheduler before it has started",
    "_comm_op built successfully",
)
"""Substrings of the DeepSpeed lines that every run prints and that ask nothing of the user."""

_state = {"verbose": False}
F = TypeVar("F", bound=Callable[..., Any])


def log_format(rank: int = 0) -> str:
    """The record format: with the time on rank 0, with the rank in front elsewhere."""
    return LOG_FORMAT if rank == 0 else f"[rank {rank}] %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO, rank: int = 0, stream: TextIO | None = None) -> None:
    """The root logger in the shared format (replacing any earlier set-up)."""
    logging.basicConfig(level=level, format=log_format(rank), datefmt=LOG_DATEFMT,
                        stream=stream if stream is not None else sys.stdout, force=True)


class _NoiseFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging's name
        if _state["verbose"]:
            return True
        message = record.getMessage()
        return not any(noise in message for noise in DEEPSPEED_NOISE)


_FILTER = _NoiseFilter()


def quiet_deepspeed(verbose: bool = False) -> None:
    """Drop :data:`DEEPSPEED_NOISE` from DeepSpeed's logger (``verbose``: keep everything).

    Safe before DeepSpeed is imported: its logger is ``logging.getLogger("DeepSpeed")``, the same object it
    configures later, so the filter added here stays.
    """
    _state["verbose"] = verbose
    ds_logger = logging.getLogger("DeepSpeed")
    if _FILTER not in ds_logger.filters:
        ds_logger.addFilter(_FILTER)
    # DeepSpeed's op builders test-compile a C file at import (libaio detection) through setuptools' compiler,
    # which logs each gcc command line at INFO.
    logging.getLogger("compilers").setLevel(logging.INFO if verbose else logging.WARNING)


def is_verbose() -> bool:
    """Whether ``--verbose`` asked for DeepSpeed's start-up lines."""
    return _state["verbose"]


class _DropLines(io.TextIOBase):
    """A text stream that passes whole lines on to ``target``, except those containing one of ``patterns``."""

    def __init__(self, target: TextIO, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.target, self.patterns, self.pending = target, patterns, ""

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:  # a subprocess handed sys.stdout writes to the real stream, unfiltered
        return self.target.fileno()

    def isatty(self) -> bool:
        return self.target.isatty()

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            if not any(p in line for p in self.patterns):
                self.target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        if self.pending and not any(p in self.pending for p in self.patterns):
            self.target.write(self.pending)
        self.pending = ""
        self.target.flush()


@contextlib.contextmanager
def drop_printed_noise() -> Iterator[None]:
    """Within the block, ``print`` output lines holding :data:`DEEPSPEED_NOISE` are dropped (unless verbose)."""
    if _state["verbose"]:
        yield
        return
    filtered = _DropLines(sys.stdout, DEEPSPEED_NOISE)
    with contextlib.redirect_stdout(filtered):
        try:
            yield
        finally:
            filtered.flush()


def logs_above_progress_bars(function: F) -> F:
    """Run ``function`` with console log records written through ``tqdm.write``: a record then prints above the
    progress bar instead of through the middle of it."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
