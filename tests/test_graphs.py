"""Neighbour graphs: the neighbour rule, batching by index arithmetic, and the on-disk cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mattransfer.data.table import PropertyTable
from mattransfer.graphs import build as build_module
from mattransfer.graphs.build import GraphSettings, RadiusGraph, build_graphs, neighbor_graph
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.graphs.store import GraphStore

from conftest import fcc


def _subset(table: PropertyTable, n: int, name: str) -> PropertyTable:
    return dataclasses.replace(table, name=name, ids=table.ids[:n], structures=table.structures[:n], y=table.y[:n])


def _assert_stores_equal(a: GraphStore, b: GraphStore) -> None:
    assert a.ids == b.ids
    for field in ("z", "edge_index", "distance", "atom_ptr", "edge_ptr"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_at_most_max_neighbors_within_cutoff(demo_energy, graph_settings):
    store = cached_inputs(demo_energy, RadiusGraph(graph_settings), progress=False)
    k, cutoff = graph_settings.max_neighbors, graph_settings.cutoff
    assert store.distance.numel() > 0
    assert float(store.distance.max()) <= cutoff + 1e-5
    assert float(store.distance.min()) > 0  # no self-loops at distance zero
    saturated = 0
    for g in range(len(store)):
        n_atoms = int(store.atom_ptr[g + 1] - store.atom_ptr[g])
        edges = store.edge_index[:, store.edge_ptr[g]:store.edge_ptr[g + 1]]
        assert int(edges.min()) >= 0 and int(edges.max()) < n_atoms  # local indices
        incoming = torch.bincount(edges[1], minlength=n_atoms)
        assert int(incoming.max()) <= k
        saturated += int((incoming == k).sum())
    assert saturated > 0  # dense metals at 5 Å have more than k neighbours: the cap is exercised


def test_kept_neighbours_are_the_nearest():
    structure = fcc("Cu", 3.61)
    settings = GraphSettings(cutoff=6.0, max_neighbors=12)
    senders, receivers, distances = neighbor_graph(structure, settings)
    for atom, neighbours in enumerate(structure.get_all_neighbors(settings.cutoff)):
        expected = sorted(n.nn_distance for n in neighbours)[: settings.max_neighbors]
        np.testing.assert_allclose(np.sort(distances[receivers == atom]), expected, rtol=1e-10)
    # fcc: exactly 12 nearest neighbours at a / sqrt(2)
    np.testing.assert_allclose(distances, 3.61 / np.sqrt(2), rtol=1e-10)
    assert len(distances) == 4 * 12


def test_batch_equals_concatenated_neighbor_graphs(demo_energy, graph_settings):
    store = cached_inputs(demo_energy, RadiusGraph(graph_settings), progress=False)
    index = torch.tensor([5, 0, 17, 3, 5])  # out of order, with a repeat
    batch = store.batch(index)

    z, edges, dist, graph_of_atom, offset = [], [], [], [], 0
    for position, g in enumerate(index.tolist()):
        structure = demo_energy.structures[g]
        senders, receivers, distances = neighbor_graph(structure, graph_settings)
        z.append(torch.tensor(structure.atomic_numbers))
        edges.append(torch.from_numpy(np.stack([senders, receivers])) + offset)
        dist.append(torch.from_numpy(distances.astype(np.float32)))
        graph_of_atom.append(torch.full((len(structure),), position))
        offset += len(structure)

    assert batch.num_graphs == len(index)
    assert torch.equal(batch.z, torch.cat(z))
    assert torch.equal(batch.edge_index, torch.cat(edges, dim=1))
    assert torch.equal(batch.distance, torch.cat(dist))
    assert torch.equal(batch.batch, torch.cat(graph_of_atom))
    edge_counts = torch.bincount(batch.batch[batch.edge_index[1]], minlength=len(index))
    assert edge_counts.tolist() == [len(d) for d in dist]
    # No edge crosses from one crystal into another.
    assert torch.equal(batch.batch[batch.edge_index[0]], batch.batch[batch.edge_index[1]])


def test_positions_of_unknown_ids_name_them(demo_energy, graph_settings):
    store = cached_inputs(demo_energy, RadiusGraph(graph_settings), progress=False)
    assert store.positions([demo_energy.ids[3], demo_energy.ids[0]]).tolist() == [3, 0]
    with pytest.raises(KeyError, match="no-such-id"):
        store.positions([demo_energy.ids[0], "no-such-id"])


def test_cache_reused_and_rebuilt_when_inputs_change(demo_energy, tmp_path, monkeypatch):
    monkeypatch.setenv("MATTRANSFER_CACHE", str(tmp_path))  # a cache of this test's own
    table = _subset(demo_energy, 30, "cachetest")
    builds = []
    real_build = build_module.build_graphs

    def counting_build(*args, **kwargs):
        builds.append(args[1])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(build_module, "build_graphs", counting_build)
    settings = GraphSettings(cutoff=5.0, max_neighbors=8)
    first = cached_inputs(table, RadiusGraph(settings), progress=False)
    assert len(builds) == 1
    assert len(list((tmp_path / "graphs").glob("*.pt"))) == 1

    def must_not_build(*args, **kwargs):
        raise AssertionError("graphs rebuilt although the cache holds them")

    monkeypatch.setattr(build_module, "build_graphs", must_not_build)
    _assert_stores_equal(cached_inputs(table, RadiusGraph(settings), progress=False), first)
    # Another property of the same structures (eform and bandgap) shares the file.
    _assert_stores_equal(cached_inputs(dataclasses.replace(table, name="other", y=table.y * 2), RadiusGraph(settings), progress=False), first)

    monkeypatch.setattr(build_module, "build_graphs", counting_build)
    wider = cached_inputs(table, RadiusGraph(GraphSettings(cutoff=6.0, max_neighbors=64)), progress=False)
    fewer = cached_inputs(table, RadiusGraph(GraphSettings(cutoff=5.0, max_neighbors=4)), progress=False)
    assert len(builds) == 3
    assert wider.distance.max() > 5.0
    assert fewer.edge_index.shape[1] < first.edge_index.shape[1]

    # Changed structures are a different cache entry too: never stale graphs for edited data.
    moved = _subset(demo_energy, 30, "cachetest")
    moved.structures = list(moved.structures)
    moved.structures[0] = moved.structures[0].copy()
    moved.structures[0].scale_lattice(moved.structures[0].volume * 1.1)
    rebuilt = cached_inputs(moved, RadiusGraph(settings), progress=False)
    assert len(builds) == 4
    assert not torch.equal(rebuilt.distance[: rebuilt.edge_ptr[1]], first.distance[: first.edge_ptr[1]])
    assert len(list((tmp_path / "graphs").glob("*.pt"))) == 4


def test_store_save_load_round_trip(demo_energy, graph_settings, tmp_path):
    store = build_graphs(_subset(demo_energy, 12, "roundtrip"), graph_settings, progress=False)
    path = tmp_path / "graphs.pt"
    store.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["graphs.pt"]  # no temporary file left
    _assert_stores_equal(GraphStore.load(path), store)
