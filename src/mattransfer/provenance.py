"""Which code produced a run (the package version and, in a git checkout, the commit), and on what machine."""

from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

import torch


def package_version() -> str:
    from mattransfer import __version__

    return __version__


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout the package runs from (``-dirty`` with uncommitted changes); None
    for an installed wheel or without git."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no", "."],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def provenance() -> dict[str, str | None]:
    return {"mattransfer_version": package_version(), "git_commit": git_commit()}


def machine() -> dict[str, str | int | None]:
    """What a training's floating-point rounding depends on besides the code: torch's version and the CPU's
    vector instructions it compiles for (another machine can give a long training another result)."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
