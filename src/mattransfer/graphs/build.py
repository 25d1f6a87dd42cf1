"""Periodic neighbour graphs of crystals, built once per (structures, settings) and cached.

`RadiusGraph` is the featurizer that encoders of these graphs declare (cached by `graphs.inputs`).
Neighbours come from pymatgen's ``Structure.get_neighbor_list`` (compiled cell-list search); the
``max_neighbors`` nearest per atom are kept with one vectorized sort. A structure whose atoms have no
neighbour inside the cutoff is still a valid graph: it has atoms and no edges.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import DummySpecies, Structure
from rich.progress import Progress

from mattransfer.data.table import PropertyTable
from mattransfer.errors import DataError
from mattransfer.graphs.inputs import inputs_hash
from mattransfer.graphs.store import GraphStore

log = logging.getLogger(__name__)

GRAPH_FORMAT_VERSION = 1  # bump when the stored layout or the neighbour rule changes
MIN_DISTANCE = 0.5  # Å: atoms closer than this are almost surely a broken structure file


class GraphSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cutoff: float = Field(8.0, gt=0, description="neighbour cutoff radius, Å")
    max_neighbors: int = Field(12, ge=1, description="nearest neighbours kept per atom")


def neighbor_graph(structure: Structure, settings: GraphSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(senders, receivers, distances) of the ``max_neighbors`` nearest neighbours of each atom."""
    centers, neighbors, _, distances = structure.get_neighbor_list(settings.cutoff)
    # Sort by centre, then distance, and keep each centre's first max_neighbors entries.
    order = np.lexsort((distances, centers))
    centers, neighbors, distances = centers[order], neighbors[order], distances[order]
    first = np.searchsorted(centers, centers, side="left")
    keep = np.arange(len(centers)) - first < settings.max_neighbors
    return neighbors[keep], centers[keep], distances[keep]


def atomic_numbers(structure: Structure, where: str) -> np.ndarray:
    """Z of every site; dummy species (X, vacancies) and partial occupancies are errors naming ``where``."""
    if not structure.is_ordered:
        raise DataError(f"{where} is disordered (partial occupancies); the graph needs one element per site.")
    bad = sorted({str(sp) for sp in structure.species if isinstance(sp, DummySpecies)})
    if bad:
        raise DataError(f"{where} has sites of {', '.join(bad)}, which are not chemical elements.")
    return np.asarray(structure.atomic_numbers, dtype=np.int64)


def structures_hash(table: PropertyTable, settings: GraphSettings) -> str:
    """Content hash of everything a radius graph depends on: ids, lattices, species, positions, settings."""
    return inputs_hash(table, RadiusGraph(settings))


# One structure's graph: atomic numbers (n,), edge_index (2, E) local to it, and distances (E,) or edge
# vectors (E, 3) (then the distances are their norms).
StructureGraph = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


def pack_graphs(table: PropertyTable, graph_of: Callable[[str, Structure], StructureGraph], what: str,
                progress: bool = True) -> GraphStore:
    """A `GraphStore` of ``graph_of(row_id, structure)`` for every structure in ``table``, with a progress bar."""
    z_parts, edge_parts, dist_parts, vec_parts = [], [], [], []
    n_atoms = np.zeros(len(table) + 1, dtype=np.int64)
    n_edges = np.zeros(len(table) + 1, dtype=np.int64)
    start = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{what} {table.name}", total=len(table))
        for k, (row_id, structure) in enumerate(zip(table.ids, table.structures)):
            z, edges, distances, vectors = graph_of(row_id, structure)
            z_parts.append(z)
            edge_parts.append(edges.astype(np.int64))
            (dist_parts if vectors is None else vec_parts).append(
                (distances if vectors is None else vectors).astype(np.float32))
            n_atoms[k + 1], n_edges[k + 1] = len(z), edges.shape[1]
            bar.update(task, completed=k + 1)
    elapsed = time.perf_counter() - start
    log.info("built %d %s of %s in %.1f s (%.0f structures/s)", len(table), what, table.name, elapsed,
             len(table) / max(elapsed, 1e-9))
    edge_vec = torch.from_numpy(np.concatenate(vec_parts)) if vec_parts else None
    return GraphStore(
        ids=list(table.ids),
        z=torch.from_numpy(np.concatenate(z_parts)),
        edge_index=torch.from_numpy(np.concatenate(edge_parts, axis=1)),
        distance=torch.from_numpy(np.concatenate(dist_parts)) if edge_vec is None else edge_vec.norm(dim=1),
        atom_ptr=torch.from_numpy(np.cumsum(n_atoms)),
        edge_ptr=torch.from_numpy(np.cumsum(n_edges)),
        edge_vec=edge_vec,
    )


def build_graphs(table: PropertyTable, settings: GraphSettings, progress: bool = True) -> GraphStore:
    """Radius graphs of every structure in ``table`` (no cache)."""

    def graph_of(row_id: str, structure: Structure) -> StructureGraph:
        senders, receivers, distances = neighbor_graph(structure, settings)
        if len(distances) and distances.min() < MIN_DISTANCE:
            log.warning("%s: structure %r has atoms %.3f Å apart (< %g Å): check the file", table.source,
                        row_id, distances.min(), MIN_DISTANCE)
        z = atomic_numbers(structure, f"{table.source}: structure {row_id!r}")
        return z, np.stack([senders, receivers]), distances, None

    return pack_graphs(table, graph_of, "graphs", progress)


class RadiusGraph:
    """The featurizer of distance-graph encoders (CGCNN): `build_graphs` with ``settings``."""

    name = "graphs"  # the cache folder

    def __init__(self, settings: GraphSettings) -> None:
        self.settings = settings

    def key(self) -> str:
        return f"v{GRAPH_FORMAT_VERSION}:{self.settings.model_dump_json()}"

    def build(self, table: PropertyTable, progress: bool = True) -> GraphStore:
        return build_graphs(table, self.settings, progress)

    def load(self, path: Path) -> GraphStore:
        return GraphStore.load(path)
