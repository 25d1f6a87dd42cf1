"""Per-structure cost of a pre-trained encoder on this CPU: featurizing, forward, and training step.

What it measures, on the first ``--n`` structures of ``--dataset`` (phonons by default):
    featurize   the encoder's featurizer ``build`` (no cache), seconds per structure;
    forward     ``TransferModel.embed`` in eval mode without gradients (what ``heads`` pays once per
                structure, and ``predict`` per call), seconds per structure;
    train step  forward + backward of the encoder in training mode with every weight trainable (what
                ``full`` pays per structure and epoch; ``freeze``/``lora`` pay a little less), seconds
                per structure.
Each timed part runs ``--repeats`` times (after one untimed warm-up for forward and train step); the
median is reported. It writes ``bench/results/universal_speed_<source>.json`` (``:`` → ``-``) with the
command line and the machine.

How to run (by hand; about 2 minutes for chgnet:0.3.0 on the 2-core development machine)
    OMP_NUM_THREADS=1 python bench/universal_speed.py --source chgnet:0.3.0 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

from mattransfer.data.registry import DataSources
from mattransfer.models.model import TransferModel

from common import machine_info  # bench/common.py (this script's folder is on the path)

SHARED_SOURCES = Path(__file__).parents[1] / "configs" / "shared-data.yaml"
RESULTS_DIR = Path(__file__).parent / "results"


def machine(package: str) -> dict:
    """What the times depend on: the machine and the universal model's package version."""
    return {**machine_info(), package: version(package)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="chgnet:0.3.0", help="a registered pre-trained model")
    parser.add_argument("--dataset", default="phonons")
    parser.add_argument("--n", type=int, default=100, help="structures timed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    table = DataSources.from_yaml(SHARED_SOURCES).load(args.dataset)
    table = table.subset(list(table.ids[:args.n]))
    model = TransferModel.from_pretrained(args.source)
    featurizer = model.encoder.featurizer()
    load_before = os.getloadavg()

    featurize = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        store = featurizer.build(table, progress=False)
        featurize.append(time.perf_counter() - start)

    chunks = torch.arange(len(store)).split(args.batch_size)
    forward, train_step = [], []
    model.embed(store, batch_size=args.batch_size)  # warm-up
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.embed(store, batch_size=args.batch_size)
        forward.append(time.perf_counter() - start)
    model.train()
    for repeat in range(args.repeats + 1):
        start = time.perf_counter()
        for chunk in chunks:
            model.zero_grad()
            model.encoder(store.batch(chunk)).sum().backward()
        if repeat:  # the first pass is the warm-up
            train_step.append(time.perf_counter() - start)

    n_atoms = len(getattr(store, "z", []))
    per = {name: statistics.median(times) / len(table) for name, times in
           (("featurize", featurize), ("forward", forward), ("train_step", train_step))}
    report = {
        "command": shlex.join(["python", *sys.argv]), "machine": machine(args.source.split(":")[0]),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(), "source": args.source, "dataset": args.dataset,
        "n_structures": len(table), "n_atoms": n_atoms, "batch_size": args.batch_size,
        "wall_s": {"featurize": featurize, "forward": forward, "train_step": train_step},
        "median_ms_per_structure": {name: 1000 * value for name, value in per.items()},
    }
    path = RESULTS_DIR / f"universal_speed_{args.source.replace(':', '-')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"{args.source} on {len(table)} {args.dataset} structures ({n_atoms} atoms), {args.threads} thread(s):")
    for name, value in per.items():
        print(f"  {name:>10}: {1000 * value:8.2f} ms/structure")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
