"""`GraphStore`: every graph of a dataset held as a few collated tensors.

A mini-batch is cut out by index arithmetic (`GraphStore.batch`) instead of collating one
``Data`` object per sample, which is where PyG's DataLoader spends most of its time on graphs
this small.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from mattransfer.fileio import atomic_path
from mattransfer.graphs.inputs import positions_of


@dataclass
class GraphBatch:
    """A batch in PyG's conventions: ``edge_index[0]`` sends to ``edge_index[1]``."""

    z: Tensor  # (n_atoms,) atomic numbers
    edge_index: Tensor  # (2, n_edges) batch-global atom indices
    distance: Tensor  # (n_edges,) Å
    batch: Tensor  # (n_atoms,) graph index of each atom
    num_graphs: int
    edge_vec: Tensor | None = None  # (n_edges, 3) Å, for encoders that need directions (equivariant ones)

    def to(self, device: torch.device | str) -> GraphBatch:
        return GraphBatch(
            self.z.to(device), self.edge_index.to(device), self.distance.to(device),
            self.batch.to(device), self.num_graphs, None if self.edge_vec is None else self.edge_vec.to(device),
        )


def concat_ranges(starts: Tensor, lengths: Tensor) -> Tensor:
    """``cat([arange(s, s + n) for s, n in zip(starts, lengths)])`` without a Python loop."""
    total = int(lengths.sum())
    offsets = torch.cumsum(lengths, 0) - lengths
    return torch.arange(total) + torch.repeat_interleave(starts - offsets, lengths, output_size=total)


class StoreFile:
    """What every input store dataclass shares: its ids, positions by id, and saving to and loading from the
    cache (its fields, tensors and ids only: loaded with ``weights_only``)."""

    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: Sequence[str]) -> Tensor:
        """Row positions of ``ids``; unknown ids are a KeyError naming them."""
        return positions_of(self.ids, ids)

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:  # a killed build never leaves a half-written cache
            torch.save({f.name: getattr(self, f.name) for f in fields(self)}, tmp)

    @classmethod
    def load(cls, path: Path) -> StoreFile:
        return cls(**torch.load(path, weights_only=True))


class PackedStore(StoreFile):
    """A store that packs every structure's rows into a few tensors, with pointer arrays (`parts`) saying
    which rows are whose."""

    z: Tensor  # (N,) atomic numbers
    atom_ptr: Tensor  # (G + 1,) into z

    def parts(self) -> dict[str, Tensor]:
        """Each row kind's pointer array: structure k's atoms are rows atom_ptr[k]..atom_ptr[k + 1] - 1."""
        raise NotImplementedError

    def elements(self) -> list[set[int]]:
        """The atomic numbers of each structure."""
        return [set(part.tolist()) for part in torch.split(self.z, (self.atom_ptr[1:] - self.atom_ptr[:-1]).tolist())]


@dataclass
class GraphStore(PackedStore):
    """Graphs of ``ids`` in one block; edges hold atom indices local to their graph."""

    ids: list[str]
    z: Tensor  # (N,) long
    edge_index: Tensor  # (2, E) long, local to each graph
    distance: Tensor  # (E,) float32
    atom_ptr: Tensor  # (G + 1,) long
    edge_ptr: Tensor  # (G + 1,) long
    edge_vec: Tensor | None = None  # (E, 3) float32, Å; its norm is ``distance``

    def subset(self, index: Tensor) -> GraphStore:
        """The graphs at positions ``index`` as a store of their own."""
        n_atoms = self.atom_ptr[index + 1] - self.atom_ptr[index]
        n_edges = self.edge_ptr[index + 1] - self.edge_ptr[index]
        atoms = concat_ranges(self.atom_ptr[index], n_atoms)
        edges = concat_ranges(self.edge_ptr[index], n_edges)
        zero = torch.zeros(1, dtype=torch.long)
        return GraphStore(
            ids=[self.ids[k] for k in index.tolist()], z=self.z[atoms], edge_index=self.edge_index[:, edges],
            distance=self.distance[edges], atom_ptr=torch.cat([zero, torch.cumsum(n_atoms, 0)]),
            edge_ptr=torch.cat([zero, torch.cumsum(n_edges, 0)]),
            edge_vec=None if self.edge_vec is None else self.edge_vec[edges],
        )

    def parts(self) -> dict[str, Tensor]:
        return {"atom": self.atom_ptr, "edge": self.edge_ptr}

    def batch(self, index: Tensor) -> GraphBatch:
        """The graphs at positions ``index`` as one batch."""
        n_atoms = self.atom_ptr[index + 1] - self.atom_ptr[index]
        n_edges = self.edge_ptr[index + 1] - self.edge_ptr[index]
        atoms = concat_ranges(self.atom_ptr[index], n_atoms)
        edges = concat_ranges(self.edge_ptr[index], n_edges)
        first_atom = torch.cumsum(n_atoms, 0) - n_atoms
        shift = torch.repeat_interleave(first_atom, n_edges, output_size=edges.numel())
        return GraphBatch(
            z=self.z[atoms],
            edge_index=self.edge_index[:, edges] + shift,
            distance=self.distance[edges],
            batch=torch.repeat_interleave(torch.arange(len(index)), n_atoms, output_size=atoms.numel()),
            num_graphs=len(index),
            edge_vec=None if self.edge_vec is None else self.edge_vec[edges],
        )
