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


def build_graphs(table: PropertyTable, settings: GraphSettings, progress: bool = True) -> GraphStore:
    """Graphs of every structure in ``table`` (no cache)."""
    z_parts, edge_parts, dist_parts = [], [], []
    n_atoms = np.zeros(len(table) + 1, dtype=np.int64)
    n_edges = np.zeros(len(table) + 1, dtype=np.int64)
    start = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"graphs {table.name}", total=len(table))
        for k, (row_id, structure) in enumerate(zip(table.ids, table.structures)):
            senders, receivers, distances = neighbor_graph(structure, settings)
            z_parts.append(atomic_numbers(structure, f"{table.source}: structure {row_id!r}"))
            if len(distances) and distances.min() < MIN_DISTANCE:
                log.warning("%s: structure %r has atoms %.3f Å apart (< %g Å): check the file", table.source,
                            row_id, distances.min(), MIN_DISTANCE)
            edge_parts.append(np.stack([senders, receivers]).astype(np.int64))
            dist_parts.append(distances.astype(np.float32))
            n_atoms[k + 1], n_edges[k + 1] = len(structure), len(distances)
            if k % 500 == 0:
                bar.update(task, completed=k)
    elapsed = time.perf_counter() - start
    log.info("built %d graphs of %s in %.1f s (%.0f structures/s)", len(table), table.name, elapsed,
             len(table) / max(elapsed, 1e-9))
    return GraphStore(
        ids=list(table.ids),
        z=torch.from_numpy(np.concatenate(z_parts)),
        edge_index=torch.from_numpy(np.concatenate(edge_parts, axis=1)),
        distance=torch.from_numpy(np.concatenate(dist_parts)),
        atom_ptr=torch.from_numpy(np.cumsum(n_atoms)),
        edge_ptr=torch.from_numpy(np.cumsum(n_edges)),
    )


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
