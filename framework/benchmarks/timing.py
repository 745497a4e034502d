"""Timing shared by the benchmarks: medians of alternating runs, and what the machine was doing meanwhile.

On a shared machine the load changes while a benchmark runs. Timing candidate A for a while and then B would
charge a load change to one of them; :func:`alternating_medians` runs every candidate once per round, in a
rotating order, and reports each candidate's median over the rounds, so a slow spell costs both alike and one
outlier round moves nothing.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Timing:
    """One candidate's timings over the rounds.

    Attributes:
        seconds: wall-clock seconds of each round, in round order.
        items: items one run processes (examples, steps...), for rates.
    """

    seconds: tuple[float, ...]
    items: int

    @property
    def median(self) -> float:
        """Median seconds of one run."""
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Items per second at the median run."""
        return self.items / self.median if self.median > 0 else float("inf")

    @property
    def spread(self) -> float:
        """``(slowest - fastest) / median``: how noisy the rounds were (0 for one round)."""
        return (max(self.seconds) - min(self.seconds)) / self.median if self.median > 0 else 0.0


def alternating_medians(candidates: Mapping[str, Callable[[], Any]], items: Mapping[str, int] | int, rounds: int,
                        warmup: int = 1) -> dict[str, Timing]:
    """Time every candidate once per round, rotating the order each round.

    Args:
        candidates: ``{name: run}``; ``run()`` does one complete, self-contained pass.
        items: items one pass processes, per candidate or the same for all.
        rounds: timed rounds (at least 1).
        warmup: untimed rounds first (imports, caches, allocator).

    Returns:
        ``{name: Timing}`` in the order of ``candidates``.
    """
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(1, rounds)):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            candidates[name]()
            seconds[name].append(time.perf_counter() - started)
    count = (lambda n: items[n]) if isinstance(items, Mapping) else (lambda n: items)
    return {name: Timing(tuple(seconds[name]), int(count(name))) for name in names}


def machine() -> dict[str, Any]:
    """Where and when a benchmark ran: date, cores available, load average, CPU model, Python."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": cores,
        "load_average": load,
        "cpu": _cpu_model(),
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(info: Mapping[str, Any]) -> str:
    """One human line for :func:`machine`'s result."""
    load = info.get("load_average")
    load_text = ", ".join(f"{x:.2f}" for x in load) if load else "unknown"
    return f"{info['date']}; {info['cores']} cores ({info['cpu']}); load average {load_text}; Python {info['python']}"
