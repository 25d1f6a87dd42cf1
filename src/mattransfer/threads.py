"""How many torch threads a process uses: chosen from the cores it may run on and how busy they are.

Measured on the 2-core development machine (bench/threads.py, bench/README.md): a second thread
speeds an epoch up only when a core is idle; when other processes keep the cores busy, threads
wait on each other and an epoch takes many times longer than with one. So the default is the
number of cores not already busy (cores available to this process minus the 1-minute load
average, rounded), at least 1; `--threads` / ``threads:`` override it.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("mattransfer")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset restrict)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads(cores: int | None = None, load: float | None = None) -> int:
    """The cores not busy with other work: ``round(cores - load)``, between 1 and ``cores``."""
    cores = available_cores() if cores is None else cores
    load = load_average() if load is None else load
    return max(1, min(cores, round(cores - load)))


def set_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to ``requested``, or to `default_threads` when None; return the count."""
    import torch

    n = requested if requested is not None else default_threads()
    torch.set_num_threads(n)
    if requested is None:
        log.debug("torch threads: %d (%d cores, load %.1f)", n, available_cores(), load_average())
    return n


def load_average() -> float:
    """The 1-minute load average; 0 where the system has none (Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
