"""Graph-building throughput: mattransfer's ``build_graphs`` vs a plain per-site Python loop.

What it measures
    Structures per second of turning crystal structures into the default neighbour graphs
    (``GraphSettings()``: 8 Å cutoff, 12 nearest neighbours per atom), on
      * phonons (all 1,265 structures), and
      * the first 10,000 rows of the Materials Project snapshot (key ``eform`` of
        ``configs/shared-data.yaml``, taken with ``PropertyTable.subset``).
    Arms, timed in the same run on the same structures:

    mattransfer  ``mattransfer.graphs.build.build_graphs`` (no cache): pymatgen's compiled
                 ``get_neighbor_list`` + one vectorized numpy sort per structure, collated into a
                 ``GraphStore``.
    baseline     the issue's reference point (about 400 structures/s): a plain Python loop over
                 pymatgen's per-site neighbour lists (``structure.get_all_neighbors``, i.e. a
                 ``get_neighbors`` per site), each site's list sorted by distance and cut to the 12
                 nearest, into per-structure tensors (z, edge_index, distance) as one would put in
                 PyG ``Data`` objects. This is how CGCNN's reference code builds its graphs.

    Both arms must build the same graphs: per structure the edge counts are compared (all
    structures) and the sorted edge distances (max |Δ|); ties at the 12th neighbour may pick a
    different atom at the same distance, so edge identities are not compared.

    Wall and process-CPU seconds are recorded; on a shared machine prefer the ratio and the CPU
    times. Loading the tables (decoding the structures) is not timed.

How to run (by hand, not a test; about 6 minutes on the loaded 2-core development machine,
nearly all of it the Python loop on the 10,000 MP structures)
    . .venv/bin/activate
    python bench/graph_building.py                          # 3 repeats of build_graphs, 1 of the loop
    python bench/graph_building.py --repeats 5 --baseline-repeats 2 --mp-rows 10000

It prints a table and writes ``bench/results/graph_building.json``: the command line, the machine (and
its load average before and after), every repeat's times, and the throughputs and ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Structure
from torch import Tensor

sys.path.insert(0, str(Path(__file__).parent))
from common import Timing, command_line, load_table, machine, save_report, timed  # noqa: E402

from mattransfer.data.registry import DataSources
from mattransfer.data.table import PropertyTable
from mattransfer.graphs.build import GraphSettings, build_graphs
from mattransfer.graphs.store import GraphStore

SHARED_SOURCES = Path(__file__).parents[1] / "configs" / "shared-data.yaml"
Graph = tuple[Tensor, Tensor, Tensor]  # z, edge_index (2, E), distance (E,)


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def load_tables(mp_rows: int) -> dict[str, PropertyTable]:
    """phonons, and the first ``mp_rows`` rows of the MP snapshot (eform key)."""
    mp = DataSources.from_yaml(SHARED_SOURCES).load("eform")
    return {"phonons": load_table("phonons"), f"mp_snapshot[:{mp_rows}]": mp.subset(mp.ids[:mp_rows])}


# ----------------------------------------------------------------------------------------------
# The baseline: a plain Python loop over per-site neighbour lists
# ----------------------------------------------------------------------------------------------


def baseline_graph(structure: Structure, settings: GraphSettings) -> Graph:
    """The ``max_neighbors`` nearest neighbours of each site, one site at a time."""
    senders: list[int] = []
    receivers: list[int] = []
    distances: list[float] = []
    for site, neighbors in enumerate(structure.get_all_neighbors(settings.cutoff)):
        nearest = sorted(neighbors, key=lambda neighbor: neighbor.nn_distance)[: settings.max_neighbors]
        for neighbor in nearest:
            senders.append(neighbor.index)
            receivers.append(site)
            distances.append(neighbor.nn_distance)
    return (
        torch.tensor(structure.atomic_numbers, dtype=torch.long),
        torch.tensor([senders, receivers], dtype=torch.long).reshape(2, -1),
        torch.tensor(distances, dtype=torch.float32),
    )


def baseline_graphs(table: PropertyTable, settings: GraphSettings) -> list[Graph]:
    return [baseline_graph(structure, settings) for structure in table.structures]


# ----------------------------------------------------------------------------------------------
# Equal-work check
# ----------------------------------------------------------------------------------------------


def compare(store: GraphStore, graphs: list[Graph]) -> dict:
    """Edge counts per structure (all of them) and the largest difference of sorted distances."""
    edge_counts = (store.edge_ptr[1:] - store.edge_ptr[:-1]).tolist()
    mismatched = [k for k, (_, edges, _) in enumerate(graphs) if edges.shape[1] != edge_counts[k]]
    max_diff = 0.0
    for k, (_, _, distance) in enumerate(graphs):
        if k in mismatched or distance.numel() == 0:
            continue
        ours = store.distance[store.edge_ptr[k]: store.edge_ptr[k + 1]]
        max_diff = max(max_diff, float((ours.sort().values - distance.sort().values).abs().max()))
    return {
        "structures": len(graphs),
        "edges": int(store.edge_ptr[-1]),
        "edge_count_mismatches": len(mismatched),
        "first_mismatches": [store.ids[k] for k in mismatched[:5]],
        "max_abs_sorted_distance_diff": max_diff,
        "same_edge_counts": not mismatched,
    }


# ----------------------------------------------------------------------------------------------
# Timing one dataset
# ----------------------------------------------------------------------------------------------


def throughput(n: int, timings: list[Timing]) -> dict:
    wall = statistics.median(t.wall_s for t in timings)
    cpu = statistics.median(t.cpu_s for t in timings)
    return {
        "median_wall_s": wall, "median_cpu_s": cpu,
        "structures_per_s": n / wall, "structures_per_cpu_s": n / cpu,
        "runs_wall_s": [t.wall_s for t in timings], "runs_cpu_s": [t.cpu_s for t in timings],
    }


def run_dataset(name: str, table: PropertyTable, settings: GraphSettings, args: argparse.Namespace) -> dict:
    """Alternate the arms: build, loop, build, loop, ... (the loop runs ``baseline_repeats`` times)."""
    ours: list[Timing] = []
    loop: list[Timing] = []
    store, graphs = None, None
    for repeat in range(max(args.repeats, args.baseline_repeats)):
        if repeat < args.repeats:
            with timed() as t:
                store = build_graphs(table, settings, progress=False)
            ours.append(t)
        if repeat < args.baseline_repeats:
            with timed() as t:
                graphs = baseline_graphs(table, settings)
            loop.append(t)
        loop_s = f"{loop[-1].wall_s:.2f} s" if repeat < args.baseline_repeats else "-"
        print(f"  {name} repeat {repeat}: build_graphs {ours[-1].wall_s:.2f} s, loop {loop_s}", flush=True)
    n = len(table)
    row = {
        "dataset": name, "structures": n,
        "atoms_per_structure": float(np.mean([len(s) for s in table.structures])),
        "mattransfer": throughput(n, ours), "baseline": throughput(n, loop),
        "check": compare(store, graphs),
    }
    row["speedup_wall"] = row["mattransfer"]["structures_per_s"] / row["baseline"]["structures_per_s"]
    row["speedup_cpu"] = row["mattransfer"]["structures_per_cpu_s"] / row["baseline"]["structures_per_cpu_s"]
    return row


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def print_table(rows: list[dict]) -> None:
    print("\nstructures/s (median of repeats; wall, and per process-CPU second); speedup = mattransfer / loop")
    header = (f"{'dataset':<22} {'n':>6} {'atoms':>5} | {'build_graphs':>12} {'(cpu)':>7} | {'py loop':>8}"
              f" {'(cpu)':>7} | {'speedup':>7} {'(cpu)':>6} | same edges")
    print(header)
    print("-" * len(header))
    for row in rows:
        ours, loop, check = row["mattransfer"], row["baseline"], row["check"]
        print(f"{row['dataset']:<22} {row['structures']:>6} {row['atoms_per_structure']:>5.1f}"
              f" | {ours['structures_per_s']:>12.0f} {ours['structures_per_cpu_s']:>7.0f}"
              f" | {loop['structures_per_s']:>8.0f} {loop['structures_per_cpu_s']:>7.0f}"
              f" | {row['speedup_wall']:>7.1f} {row['speedup_cpu']:>6.1f}"
              f" | {check['same_edge_counts']} (max dd {check['max_abs_sorted_distance_diff']:.1e})")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mp-rows", type=int, default=10_000, help="first rows of the MP snapshot")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of build_graphs per dataset")
    parser.add_argument("--baseline-repeats", type=int, default=1, help="timed runs of the Python loop")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/graph_building.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    print("loading tables (not timed) ...", flush=True)
    tables = load_tables(args.mp_rows)
    settings = GraphSettings()
    rows = [run_dataset(name, table, settings, args) for name, table in tables.items()]
    print_table(rows)
    report = {
        "command": command_line(),
        "measured": "structures/s of building the neighbour graphs of every structure (table loading not timed)",
        "settings": {"graphs": settings.model_dump(), "repeats": args.repeats,
                     "baseline_repeats": args.baseline_repeats, "threads": args.threads},
        "baseline": "Python loop: Structure.get_all_neighbors per structure, per site sorted by distance, "
                    "first max_neighbors kept, into per-structure torch tensors",
        "data": {name: {"rows": len(t), "source": t.source} for name, t in tables.items()},
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "results": rows,
    }
    print(f"\nwrote {save_report('graph_building', report, args.out)}")


if __name__ == "__main__":
    main()
