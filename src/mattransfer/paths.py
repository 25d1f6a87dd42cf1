"""Where mattransfer keeps caches (graphs, demo data, Bravais labels, dataset metadata), and their upkeep."""

from __future__ import annotations

import os
import time
from pathlib import Path


def cache_dir() -> Path:
    """``$MATTRANSFER_CACHE`` if set, else ``~/.cache/mattransfer``."""
    root = os.environ.get("MATTRANSFER_CACHE") or Path.home() / ".cache" / "mattransfer"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def touch(path: Path) -> None:
    """Mark a cache file as used now (its access time; the modification time stays the build time),
    so that `clear_cache(older_than=...)` keeps it."""
    try:
        os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
    except OSError:  # a read-only cache still serves
        pass


def _kind(path: Path, root: Path) -> str:
    """A cache file's kind: its top-level folder (graphs, symmetry), or the file name's stem (demo, metadata)."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else parts[0].split("-")[0].split(".")[0]


def cache_usage() -> dict[str, tuple[int, int]]:
    """(files, bytes) per kind of cached file."""
    root = cache_dir()
    usage: dict[str, tuple[int, int]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        files, size = usage.get(_kind(path, root), (0, 0))
        usage[_kind(path, root)] = (files + 1, size + path.stat().st_size)
    return usage


def clear_cache(older_than_days: float | None = None) -> tuple[int, int]:
    """Delete cached files (those last used more than ``older_than_days`` ago, if given); (files, bytes) removed."""
    root = cache_dir()
    cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
    files = size = 0
    for path in [p for p in root.rglob("*") if p.is_file()]:
        stat = path.stat()
        if cutoff is None or max(stat.st_atime, stat.st_mtime) < cutoff:
            path.unlink(missing_ok=True)
            files, size = files + 1, size + stat.st_size
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):  # deepest first
        if not any(folder.iterdir()):
            folder.rmdir()
    return files, size
