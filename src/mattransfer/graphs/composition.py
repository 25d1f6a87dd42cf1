"""Element fractions: the input of composition encoders (ElemNet, the Magpie MLP), one dense row per formula.

`ElementFractions` is their featurizer (cached by `graphs.inputs` like the radius graphs). It reads a
table's compositions, or its structures' compositions when the table has structures, so composition
encoders train on composition-only data (matbench_expt_gap) and on crystal data alike. A mini-batch is
a slice of one dense matrix (no per-sample collation): 100k formulas cost a few MB.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import DummySpecies
from torch import Tensor

from mattransfer.data.table import PropertyTable
from mattransfer.errors import DataError
from mattransfer.graphs.store import StoreFile

log = logging.getLogger(__name__)

FRACTIONS_FORMAT_VERSION = 1  # bump when the stored layout changes
N_ELEMENTS = 103  # column k holds the fraction of Z = k + 1 (H … Lr)


@dataclass
class CompositionBatch:
    """Formulas of a mini-batch: the dense fractions ``x`` and, per element present, its row (``batch``),
    ``z`` and ``fraction`` (for encoders that read a formula as a set of elements)."""

    x: Tensor  # (num_graphs, N_ELEMENTS) element fractions, rows sum to 1
    z: Tensor  # (n_present,) atomic numbers
    fraction: Tensor  # (n_present,)
    batch: Tensor  # (n_present,) formula of each element
    num_graphs: int

    def to(self, device: torch.device | str) -> CompositionBatch:
        return CompositionBatch(self.x.to(device), self.z.to(device), self.fraction.to(device),
                                self.batch.to(device), self.num_graphs)


@dataclass
class CompositionStore(StoreFile):
    """Element fractions of ``ids``, one dense row each."""

    ids: list[str]
    x: Tensor  # (N, N_ELEMENTS) float32

    def subset(self, index: Tensor) -> CompositionStore:
        return CompositionStore([self.ids[k] for k in index.tolist()], self.x[index])

    def batch(self, index: Tensor) -> CompositionBatch:
        x = self.x[index]
        rows, columns = x.nonzero(as_tuple=True)
        return CompositionBatch(x, columns + 1, x[rows, columns], rows, len(index))

    def elements(self) -> list[set[int]]:
        rows, columns = self.x.nonzero(as_tuple=True)
        out: list[set[int]] = [set() for _ in self.ids]
        for row, z in zip(rows.tolist(), (columns + 1).tolist()):
            out[row].add(z)
        return out


def element_fractions(table: PropertyTable) -> CompositionStore:
    """The fractions of every row of ``table``; a dummy species or an element past Lr is an error naming the row."""
    start = time.perf_counter()
    x = np.zeros((len(table), N_ELEMENTS), dtype=np.float32)
    for k, (row_id, composition) in enumerate(zip(table.ids, table.row_compositions())):
        for species, amount in composition.items():
            if isinstance(species, DummySpecies) or not 1 <= species.Z <= N_ELEMENTS:
                raise DataError(f"{table.source}: row {row_id!r} ({composition.formula}) has {species}, which is not"
                                f" an element of Z 1..{N_ELEMENTS}.")
            x[k, species.Z - 1] += amount  # Fe2+ and Fe3+ of one formula are both iron
        x[k] /= x[k].sum()
    log.info("element fractions of %d rows of %s in %.1f s", len(table), table.name, time.perf_counter() - start)
    return CompositionStore(list(table.ids), torch.from_numpy(x))


class ElementFractions:
    """The featurizer of composition encoders: `element_fractions`."""

    name = "compositions"  # the cache folder

    def key(self) -> str:
        return f"v{FRACTIONS_FORMAT_VERSION}:fractions:{N_ELEMENTS}"

    def build(self, table: PropertyTable, progress: bool = True) -> CompositionStore:
        return element_fractions(table)

    def load(self, path: Path) -> CompositionStore:
        return CompositionStore.load(path)
