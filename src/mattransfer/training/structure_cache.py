"""What a frozen encoder computes for a structure, kept on disk per structure and keyed by its content.

A frozen encoder (`heads`) or its frozen first blocks (`freeze`) give a structure the same output in every
run: another seed, sample size or target with the same structures needs only the structures not seen
before. One file per encoder (and per number of frozen blocks) holds, for each structure it has seen, its
rows of each named part (one latent vector; or the atoms', bonds' and angles' state, as many rows as the
structure has of each), concatenated in the order the structures were added. The file is read mapped,
so only the rows a run reads come into memory (CHGNet's state is about 1 MB a structure), and rewritten
atomically when a run adds structures.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from mattransfer.fileio import atomic_path
from mattransfer.graphs.store import concat_ranges
from mattransfer.paths import touch

log = logging.getLogger(__name__)

Parts = dict[str, Tensor]
# positions -> (rows of each part, concatenated in the positions' order; rows per position of each part)
Compute = Callable[[list[int]], tuple[Parts, Parts]]


def cached_rows(path: Path, keys: list[str], wanted: list[int], compute: Compute) -> tuple[Parts, Parts]:
    """The rows of each part, and the row count of each structure, for the structures at ``wanted``
    (positions into ``keys``, the content hashes of `graphs.inputs.row_keys`), in ``wanted``'s order.
    ``compute`` is called once with the positions of the structures ``path`` lacks, which it then holds."""
    stored = _read(path)
    position = {key: k for k, key in enumerate(stored["keys"])}
    missing = sorted({keys[k]: k for k in wanted if keys[k] not in position}.values())  # a structure once
    if missing:
        rows, counts = compute(missing)
        if stored["keys"]:
            rows = {part: torch.cat([stored["rows"][part], new]) for part, new in rows.items()}
            counts = {part: torch.cat([stored["counts"][part], new]) for part, new in counts.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"keys": stored["keys"] + [keys[k] for k in missing], "counts": counts, "rows": rows}, tmp)
        del rows  # read back mapped, not held twice
        stored = _read(path)
        position = {key: k for k, key in enumerate(stored["keys"])}
    log.info("%s: %d structures read, %d of them computed now", path, len(wanted), len(missing))
    order = torch.tensor([position[keys[k]] for k in wanted], dtype=torch.long)
    rows, counts = {}, {}
    for part, stored_counts in stored["counts"].items():
        starts = torch.cumsum(stored_counts, 0) - stored_counts
        counts[part] = stored_counts[order]
        rows[part] = stored["rows"][part][concat_ranges(starts[order], counts[part])]
    return rows, counts


def _read(path: Path) -> dict:
    if not path.exists():
        return {"keys": [], "counts": {}, "rows": {}}
    touch(path)
    stored = torch.load(path, weights_only=True, mmap=True)
    if "rows" not in stored:  # a latent cache written before this layout: computed again and replaced
        return {"keys": [], "counts": {}, "rows": {}}
    return stored
