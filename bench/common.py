"""Helpers shared by the throughput benchmarks (graph_building.py, training_throughput.py).

Not a benchmark itself. Machine description, the command line and the JSON report, built on the
helpers of ``loop_overhead.py``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Iterator

import torch_geometric

sys.path.insert(0, str(Path(__file__).parent))
from loop_overhead import load_table, machine_info  # noqa: E402,F401  (re-exported)

RESULTS_DIR = Path(__file__).parent / "results"


def command_line() -> str:
    """The exact command that produced the report."""
    return shlex.join(["python", *sys.argv])


def machine() -> dict:
    """``loop_overhead.machine_info`` plus the graph libraries' versions."""
    return {**machine_info(), "torch_geometric": torch_geometric.__version__, "pymatgen": version("pymatgen")}


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


def save_report(name: str, report: dict, out: Path | None = None) -> Path:
    """Write ``report`` to ``bench/results/<name>.json`` (or ``out``) and return the path."""
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
