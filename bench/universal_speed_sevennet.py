"""SevenNet-0 (`sevenn:7net-0`) cost per structure on this CPU: featurizing and encoding.

What it measures, on the first ``--n`` structures of phonons (table order), one torch thread:
    featurize   sevenn's own graph of each structure (``build_sevennet_graphs``: ASE atoms,
                matscipy neighbour list within 5 Å), no cache.
    forward     the encoder's crystal vectors in eval mode without gradients, in batches of
                ``--batch-size`` structures (the size `heads` encodes with is 256; the last batch is short),
                and one structure at a time.
    train step  forward + backward of the whole encoder (what `full` pays per structure and epoch,
                without the optimizer step), in batches of ``--batch-size``.
Each is repeated ``--repeats`` times; the report keeps every repeat and the median. Loading the model
and the table is not timed. Wall and process-CPU seconds are recorded: on a shared machine prefer CPU.

How to run (about 2 minutes on the shared 2-core machine)
    PYTHONPATH=src .venv/bin/python bench/universal_speed_sevennet.py --n 100 --repeats 3

Writes ``bench/results/universal_speed_sevennet.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import sevenn
import torch

from mattransfer.data.registry import DataSources
from mattransfer.models.encoders.sevennet import build_sevennet_graphs
from mattransfer.models.model import TransferModel

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info  # noqa: E402
from timing import Timing, timed  # noqa: E402

SHARED_SOURCES = Path(__file__).parents[1] / "configs" / "shared-data.yaml"
RESULT = Path(__file__).parent / "results" / "universal_speed_sevennet.json"




def per_structure(timings: list[Timing], n: int) -> dict:
    return {"wall_ms": [round(1e3 * t.wall_s / n, 2) for t in timings],
            "cpu_ms": [round(1e3 * t.cpu_s / n, 2) for t in timings],
            "median_wall_ms": round(1e3 * statistics.median(t.wall_s for t in timings) / n, 2),
            "median_cpu_ms": round(1e3 * statistics.median(t.cpu_s for t in timings) / n, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100, help="structures (the first n of phonons)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()

    table = DataSources.from_yaml(SHARED_SOURCES).load("phonons")
    table = table.subset(table.ids[:args.n])
    model = TransferModel.from_pretrained("sevenn:7net-0")
    encoder = model.encoder

    featurize = []
    for _ in range(args.repeats):
        with timed() as t:
            store = build_sevennet_graphs(table, progress=False)
        featurize.append(t)
    n = len(store)
    batches = [torch.arange(k, min(k + args.batch_size, n)) for k in range(0, n, args.batch_size)]

    def encode(index_sets: list[torch.Tensor]) -> Timing:
        encoder.eval()
        with torch.no_grad(), timed() as t:
            for index in index_sets:
                encoder(store.batch(index))
        return t

    def train_steps() -> Timing:
        encoder.train()
        with timed() as t:
            for index in batches:
                encoder(store.batch(index)).sum().backward()
        encoder.zero_grad()
        return t

    batched = [encode(batches) for _ in range(args.repeats)]
    single = [encode([torch.tensor([k]) for k in range(n)]) for _ in range(args.repeats)]
    steps = [train_steps() for _ in range(args.repeats)]

    atoms = (store.atom_ptr[1:] - store.atom_ptr[:-1]).float()
    edges = (store.edge_ptr[1:] - store.edge_ptr[:-1]).float()
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": {**machine_info(), "sevenn": sevenn.__version__},
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "dataset": "phonons", "n_structures": n,
        "atoms_per_structure": {"mean": round(float(atoms.mean()), 1), "max": int(atoms.max())},
        "edges_per_atom": round(float(edges.sum() / atoms.sum()), 1), "batch_size": args.batch_size,
        "featurize": per_structure(featurize, n),
        "forward_batched": per_structure(batched, n),
        "forward_one_by_one": per_structure(single, n),
        "train_step_batched": per_structure(steps, n),
    }
    RESULT.write_text(json.dumps(report, indent=2))
    print(f"{n} phonons structures, {report['atoms_per_structure']['mean']} atoms and"
          f" {report['edges_per_atom']} edges per atom on average; median ms per structure (wall / cpu):")
    for key in ("featurize", "forward_batched", "forward_one_by_one", "train_step_batched"):
        print(f"  {key:20s} {report[key]['median_wall_ms']:8.1f} / {report[key]['median_cpu_ms']:8.1f}")
    print(f"written to {RESULT}")


if __name__ == "__main__":
    main()
