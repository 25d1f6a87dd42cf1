"""Wall and CPU time of a block of code, for the benchmarks (no dependency beyond the standard library)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass
class Timing:
    """Wall and process-CPU seconds of one timed block."""

    wall_s: float = 0.0
    cpu_s: float = 0.0


@contextmanager
def timed() -> Iterator[Timing]:
    """``with timed() as t: ...`` fills ``t`` when the block ends."""
    result = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    yield result
    result.wall_s, result.cpu_s = time.perf_counter() - wall, time.process_time() - cpu
