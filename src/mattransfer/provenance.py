"""Which code produced a run: the package version and, in a git checkout, the commit."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path


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
