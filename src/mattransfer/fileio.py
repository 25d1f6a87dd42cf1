"""Atomic file writes (and file checksums): a reader, a concurrent writer or a kill -9 never sees half a file.

Every write-then-rename in the package goes through `atomic_path`. Its temporary name is unique per
process and call, so two processes writing the same file (two workers filling one cache entry) never
write into each other's temporary file; the last complete file wins.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


def temporary_name(path: Path, suffix: str = "") -> Path:
    """A hidden name beside ``path`` that no other process or call uses (pid and a random token)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp{suffix}")


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename, on error it is removed.

    ``suffix`` ends the temporary name, for writers that pick a format from it (``.gz``).
    """
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
