"""Seconds per training epoch at 1 and 2 torch threads, on the machine as it is and with added load.

What it measures
    The default model (``ModelConfig()``: CGCNN 3x64 + MLP head, batch 32, AdamW, L1) trained by
    ``mattransfer.training.trainer.fit`` on 800 phonon structures (a ``make_split`` sample: 720 train,
    80 validation), for ``--epochs`` epochs with early stopping off. An epoch is train + validation;
    its wall time comes from ``history.csv``'s ``elapsed_s`` column, epoch 0 (warm-up) left out.

    Arms: threads 1 and 2, each with no load of ours ("as is": whatever the machine's other users
    run, recorded as the 1-minute load average at the start and end of each run) and with
    ``--busy`` spinning Python processes of ours ("loaded"). Arms rotate over ``--repeats`` rounds.
    ``default_threads`` (mattransfer.threads) is printed for each case: what the CLI would choose.

How to run (by hand, not a test; about 5 minutes on the 2-core development machine)
    . .venv/bin/activate
    python bench/threads.py --data-sources configs/shared-data.yaml

It writes ``bench/results/threads_idle_machine.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from mattransfer.data.registry import DataSources
from mattransfer.data.splits import make_split
from mattransfer.graphs.build import GraphSettings, RadiusGraph
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.threads import available_cores, default_threads, load_average
from mattransfer.training.job import Dataset, train_and_test
from mattransfer.training.trainer import TrainingOptions

from common import machine_info  # bench/common.py (this script's folder is on the path)

RESULTS = Path(__file__).parent / "results" / "threads_idle_machine.json"


def spin() -> None:  # a busy process: one core's worth of load
    while True:
        pass


def one_run(data: Dataset, split, threads: int, epochs: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = TransferModel(ModelConfig(), GraphSettings())
    training = TrainingOptions(max_epochs=epochs, patience=epochs + 1, batch_size=32)
    groups = [{"name": "all", "params": list(model.parameters()), "lr": training.lr}]
    load_start, cpu_start = load_average(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        train_and_test(model, data, split, training, groups, seed=0, device=torch.device("cpu"),
                       run_dir=Path(tmp), progress=False)
        elapsed = pd.read_csv(Path(tmp) / "history.csv")["elapsed_s"].tolist()
    epoch_s = [b - a for a, b in zip(elapsed, elapsed[1:])]  # epochs 1.. (epoch 0: warm-up)
    return {"threads": threads, "epoch_s": epoch_s, "median_epoch_s": statistics.median(epoch_s),
            "cpu_s": time.process_time() - cpu_start, "load_start": load_start, "load_end": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-sources", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--busy", type=int, default=2, help="spinning processes in the loaded case")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"result JSON (default: {RESULTS.name})")
    args = parser.parse_args()

    table = DataSources.from_yaml(args.data_sources).load("phonons")
    data = Dataset(table, cached_inputs(table, RadiusGraph(GraphSettings()), progress=False))
    split = make_split(table.ids, 800, seed=0, dataset="phonons")
    runs = []
    for repeat in range(args.repeats):
        for case in (["as_is", "loaded"] if repeat % 2 == 0 else ["loaded", "as_is"]):
            busy = [multiprocessing.Process(target=spin, daemon=True) for _ in range(args.busy if case == "loaded" else 0)]
            for p in busy:
                p.start()
            if busy:
                time.sleep(5)  # let the spinners take their cores
            chosen = default_threads()
            for threads in ([1, 2] if repeat % 2 == 0 else [2, 1]):
                result = {"case": case, "repeat": repeat, "default_threads_would_be": chosen,
                          **one_run(data, split, threads, args.epochs)}
                print(f"{case:7} threads {threads}: {result['median_epoch_s']:.2f} s/epoch (load"
                      f" {result['load_start']:.1f} → {result['load_end']:.1f}; default would be {chosen})", flush=True)
                runs.append(result)
            for p in busy:
                p.terminate()
            for p in busy:
                p.join()
    summary = {}
    for case in ("as_is", "loaded"):
        for threads in (1, 2):
            epochs = [e for r in runs if r["case"] == case and r["threads"] == threads for e in r["epoch_s"]]
            loads = [r["load_start"] for r in runs if r["case"] == case and r["threads"] == threads]
            summary[f"{case}_threads{threads}"] = {"median_epoch_s": statistics.median(epochs),
                                                    "min_epoch_s": min(epochs), "max_epoch_s": max(epochs),
                                                    "load_at_start": loads}
    for key, value in summary.items():
        print(f"{key:18} median {value['median_epoch_s']:.2f} s/epoch (min {value['min_epoch_s']:.2f},"
              f" max {value['max_epoch_s']:.2f}; load {', '.join(f'{x:.1f}' for x in value['load_at_start'])})")
    report = {"command": shlex.join(["python", *sys.argv]), "summary": summary, "runs": runs,
              "machine": {**machine_info(), "cores_available": available_cores()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
