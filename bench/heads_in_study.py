"""A study's first `heads` fine-tune of a (source, target) pair: encoding the target's whole prepared store
(as before) against only the rows the split reads (train, val and the fixed test set). Both in one process,
each with an empty latent cache; the same fine-tune after the encoding, so the test MAE must agree.

A study prepares every row of a dataset (Part 2 pre-trains on up to the whole 36,737-row MP snapshot), so
the default CGCNN with random weights stands in for a Part 1 source: what it costs to encode a structure
does not depend on the weights.

    OMP_NUM_THREADS=1 python bench/heads_in_study.py --target eform --sizes 100 800 \\
        --out bench/results/heads_in_study.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from mattransfer.data.registry import DataSources
from mattransfer.data.splits import make_split
from mattransfer.graphs.build import GraphSettings
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training import job as job_module
from mattransfer.training.latents import cached_latents
from mattransfer.training.trainer import TrainingOptions

ROOT = Path(__file__).resolve().parents[1]


def heads_run(source: TransferModel, data: job_module.Dataset, n: int, whole_store: bool) -> dict:
    """One `heads` fine-tune with an empty latent cache; ``whole_store``: encode every row first, as before."""
    split = make_split(data.table.ids, n, 0, dataset=data.table.name)
    job = job_module.Job(source.config, source.graphs, TrainingOptions(), seed=0, method="heads")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MATTRANSFER_CACHE"] = cache
        start = time.perf_counter()
        latent = cached_latents(source, data.keys, data.inputs) if whole_store else None
        outcome = job_module.execute(job, data, split, source=source, device=torch.device("cpu"), progress=False,
                                     latent=latent)
        seconds = time.perf_counter() - start
    rows = len(split.train) + len(split.val) + len(split.test)
    return {"n": n, "encoded": len(data.table) if whole_store else rows, "seconds": round(seconds, 2),
            "fit_seconds": round(outcome.summary["fit_seconds"], 2), "test_mae": outcome.summary["test"]["mae"],
            "n_test": len(split.test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="eform")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 800])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = DataSources.from_yaml(ROOT / "configs" / "shared-data.yaml").load(args.target)
    torch.manual_seed(0)
    source = TransferModel(ModelConfig(), GraphSettings())
    data = job_module.dataset(source, table, progress=True)  # graphs of every row, as a study prepares them
    runs = []
    for n in args.sizes:
        before, after = (heads_run(source, data, n, whole_store) for whole_store in (True, False))
        assert before["test_mae"] == after["test_mae"], (before, after)
        runs.append({"n": n, "whole_store": before, "split_rows": after,
                     "ratio": round(before["seconds"] / after["seconds"], 1)})
    record = {"command": f"python bench/heads_in_study.py --target {args.target} --sizes {' '.join(map(str, args.sizes))}",
              "target": args.target, "rows": len(table), "threads": 1, "runs": runs}
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
