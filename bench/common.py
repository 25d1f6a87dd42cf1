"""Helpers shared by the throughput benchmarks (graph_building.py, training_throughput.py).

Not a benchmark itself: the bench tables, the machine description, the command line and the JSON report.
Needs no package beyond mattransfer's own (Lightning only for ``loop_overhead.py``).
"""

from __future__ import annotations

import json
import platform
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

import torch
import torch_geometric

from mattransfer.data.registry import DataSources
from mattransfer.data.table import PropertyTable
from mattransfer.provenance import machine as provenance_machine

sys.path.insert(0, str(Path(__file__).parent))
from timing import Timing, timed  # noqa: E402,F401  (re-exported)

RESULTS_DIR = Path(__file__).parent / "results"
DATA_DIR = Path("/work/shared/data")
BENCH_DATASETS = {"phonons": "phonons", "demo": "demo_bulk"}


def load_table(data: str) -> PropertyTable:
    return DataSources(data_dir=DATA_DIR).load(BENCH_DATASETS[data])


def machine_info() -> dict:
    """`provenance.machine` plus the CPU's model name, the platform and Python."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.exists() else []
    return {**provenance_machine(), "platform": platform.platform(), "cpu_model": names[0] if names else "",
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def command_line() -> str:
    """The exact command that produced the report."""
    return shlex.join(["python", *sys.argv])


def machine() -> dict:
    """``machine_info`` plus the graph libraries' versions."""
    return {**machine_info(), "torch_geometric": torch_geometric.__version__, "pymatgen": version("pymatgen")}


def save_report(name: str, report: dict, out: Path | None = None) -> Path:
    """Write ``report`` to ``bench/results/<name>.json`` (or ``out``) and return the path."""
    path = out or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    return path
