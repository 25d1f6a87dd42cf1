"""What an encoder reads: a `Featurizer` turns structures (or compositions) into an `InputStore`, cached on disk.

Each encoder declares its featurizer (a radius graph for CGCNN, the package's own graph for a
pre-trained universal model, ...). Stores are cached under a content hash of the structures and the
featurizer's name and settings, so a second run, or another target on the same structures (eform and
bandgap), reuses them; only the rows a run uses are featurized.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from pymatgen.core import Composition, Structure
from torch import Tensor

from mattransfer.data.table import PropertyTable
from mattransfer.paths import cache_dir, touch


class InputBatch(Protocol):
    """A mini-batch of model input; ``batch`` maps each atom to its structure (pooling reads it)."""

    batch: Tensor
    num_graphs: int

    def to(self, device: torch.device | str) -> InputBatch: ...


class InputStore(Protocol):
    """Every structure's model input, held together; mini-batches are cut out by position."""

    ids: list[str]

    def __len__(self) -> int: ...

    def positions(self, ids: Sequence[str]) -> Tensor: ...

    def subset(self, index: Tensor) -> InputStore: ...

    def batch(self, index: Tensor) -> InputBatch: ...

    def elements(self) -> list[set[int]]: ...

    def save(self, path: Path) -> None: ...


@dataclass
class PrefixBatch:
    """A mini-batch with the state its encoder reached after its first ``start`` blocks, computed once
    for the whole store (`training.prefix`): the encoder runs only its later blocks on it."""

    inputs: InputBatch
    state: dict[str, Tensor]
    start: int

    @property
    def batch(self) -> Tensor:
        return self.inputs.batch

    @property
    def num_graphs(self) -> int:
        return self.inputs.num_graphs

    def to(self, device: torch.device | str) -> PrefixBatch:
        return PrefixBatch(self.inputs.to(device), {k: v.to(device) for k, v in self.state.items()}, self.start)


class Featurizer(Protocol):
    """Structures → an encoder's input. ``name`` is the cache folder; ``key()`` (format version and
    settings) seeds the content hash: change it when the output for the same structures changes."""

    name: str

    def key(self) -> str: ...

    def build(self, table: PropertyTable, progress: bool = True) -> InputStore: ...

    def load(self, path: Path) -> InputStore: ...


def positions_of(ids: Sequence[str], wanted: Sequence[str]) -> Tensor:
    """Row positions of ``wanted`` in ``ids``; unknown ids are a KeyError naming them."""
    lookup = {i: k for k, i in enumerate(ids)}
    missing = [i for i in wanted if i not in lookup]
    if missing:
        raise KeyError(f"ids not in the input store: {missing[:5]}")
    return torch.tensor([lookup[i] for i in wanted], dtype=torch.long)


def inputs_hash(table: PropertyTable, featurizer: Featurizer) -> str:
    """Content hash of everything an input depends on: ids, lattices, species, positions, featurizer."""
    digest = hashlib.sha256(featurizer.key().encode())
    for row_id, cell in zip(table.ids, _cells(table)):
        _add_row(digest, row_id, cell)
    return digest.hexdigest()[:20]


def row_keys(table: PropertyTable, featurizer: Featurizer) -> list[str]:
    """A content hash of each row's input (its id, structure and the featurizer), for per-row caches."""
    keys = []
    for row_id, cell in zip(table.ids, _cells(table)):
        digest = hashlib.sha256(f"{featurizer.name}:{featurizer.key()}".encode())
        _add_row(digest, row_id, cell)
        keys.append(digest.hexdigest()[:24])
    return keys


def _cells(table: PropertyTable) -> Sequence[Structure] | list[Composition]:
    """What a row's input depends on: its structure, or the composition of a composition-only table."""
    return table.structures if table.compositions is None else table.compositions


def _add_row(digest: "hashlib._Hash", row_id: str, cell: Structure | Composition) -> None:
    digest.update(row_id.encode())
    if isinstance(cell, Composition):
        digest.update(repr(sorted((el.Z, amount) for el, amount in cell.items())).encode())
        return
    structure = cell
    digest.update(np.asarray(structure.atomic_numbers, dtype=np.int64).tobytes())
    digest.update(structure.lattice.matrix.tobytes())
    digest.update(structure.frac_coords.tobytes())


def cached_inputs(table: PropertyTable, featurizer: Featurizer, progress: bool = True) -> InputStore:
    """``featurizer.build(table)``, cached on disk under the content hash: rebuilt when data or settings change."""
    path = _cache_file(table, featurizer)
    if path.exists():
        touch(path)  # used now: `mattransfer cache clear --older-than` keeps it
        return featurizer.load(path)
    store = featurizer.build(table, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    store.save(path)  # atomically: a killed build never leaves a half-written cache
    return store


def cached_inputs_file(table: PropertyTable, featurizer: Featurizer, progress: bool = True) -> Path:
    """The cache file of ``table``'s inputs, built first if missing (for readers that load it themselves)."""
    path = _cache_file(table, featurizer)
    if path.exists():
        touch(path)
    else:
        cached_inputs(table, featurizer, progress)
    return path


def _cache_file(table: PropertyTable, featurizer: Featurizer) -> Path:
    # Keyed by content alone: datasets with the same structures (eform, bandgap) share one file.
    return cache_dir() / featurizer.name / f"{inputs_hash(table, featurizer)}.pt"
