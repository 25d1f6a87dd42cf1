"""Where mattransfer keeps caches (graphs, demo data, fixed test splits)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MATTRANSFER_CACHE`` if set, else ``~/.cache/mattransfer``."""
    root = os.environ.get("MATTRANSFER_CACHE") or Path.home() / ".cache" / "mattransfer"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
