"""Where the data pipeline fans work out to processes: an ordered map with a bounded look-ahead.

``Pool.imap`` would feed the whole input into its task queue ahead of the workers and keep every finished
result the consumer has not taken yet, so a corpus of hundreds of MB (or a result as large as a chunk's n-gram
table) could pile up in memory. :func:`ordered_map` keeps at most ``ahead`` tasks per worker in flight and
yields results in input order, so the consumer's output never depends on the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections import deque
from typing import Any, Callable, Generator, Iterable, Iterator, TypeVar

__all__ = ["available_cores", "chunked", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and schedulers narrow), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Group ``items`` into lists of ``size`` (the last one shorter): the units of parallel work."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, *, ahead: int = 2,
                initializer: Callable[..., Any] | None = None, initargs: tuple = ()) -> Generator[R, None, None]:
    """``map(fn, items)`` over ``workers`` processes, in input order, with at most ``ahead * workers`` pending.

    With one worker everything runs in this process (``initializer`` too): no pool to start for a small input,
    and a traceback points at the real line. Closing the generator stops the pool at once.
    """
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    with mp.get_context().Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= ahead * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
