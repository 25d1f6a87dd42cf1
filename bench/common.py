"""Helpers shared by the throughput benchmarks (graph_building.py, training_throughput.py).

Not a benchmark itself. Machine description, the command line and the JSON report, built on the
helpers of ``loop_overhead.py``.
"""

from __future__ import annotations

import json
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

import torch_geometric

sys.path.insert(0, str(Path(__file__).parent))
from loop_overhead import load_table, machine_info  # noqa: E402,F401  (re-exported)
from timing import Timing, timed  # noqa: E402,F401  (re-exported)

RESULTS_DIR = Path(__file__).parent / "results"


def command_line() -> str:
    """The exact command that produced the report."""
    return shlex.join(["python", *sys.argv])


def machine() -> dict:
    """``loop_overhead.machine_info`` plus the graph libraries' versions."""
    return {**machine_info(), "torch_geometric": torch_geometric.__version__, "pymatgen": version("pymatgen")}




def save_report(name: str, report: dict, out: Path | None = None) -> Path:
    """Write ``report`` to ``bench/results/<name>.json`` (or ``out``) and return the path."""
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
