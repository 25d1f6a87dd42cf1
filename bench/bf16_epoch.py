"""Seconds per training epoch of Part 1's CGCNN in float32 and under bfloat16 autocast, eager and compiled (issue 13 §3).

Part 1's `full`, `scratch` and pre-training tasks are compute-bound (bench/README.md, "Study wall time"):
an epoch costs the same at batch 16 and 64, so only cheaper arithmetic could halve the grid on this CPU.
This CPU has ``avx512_bf16``; this measures whether bfloat16 autocast is that.

Arms, each training a copy of the same initial weights on the same shuffled batches (batch 32, AdamW,
L1 loss on standardised targets) for ``--epochs`` epochs: ``fp32``; ``bf16`` (the forward pass under
``torch.autocast("cpu", dtype=torch.bfloat16)``, the loss in float32); both again with the encoder
compiled as ``compile: true`` compiles it. The model is the one of Part 1's committed studies (CGCNN,
learned element vectors, mean readout); under autocast its convolution sums the bfloat16 messages into
float32 atoms. Epoch 0 of every run (the compilation) is left out; the arms run ``--rounds``
times in rotated order and the medians pool the timed epochs. The last training loss of each arm shows
that bfloat16 trains the same way over these few epochs, not that it keeps the accuracy.

    OMP_NUM_THREADS=1 python bench/bf16_epoch.py --targets phonons eform --out bench/results/bf16_epoch.json
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, machine, save_report  # noqa: E402

from mattransfer.data.registry import DataSources
from mattransfer.data.splits import make_split
from mattransfer.graphs.build import GraphSettings, RadiusGraph
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training.trainer import Batches

ARMS = ("fp32", "bf16", "fp32-compiled", "bf16-compiled")
PART1_ENCODER = {"name": "cgcnn", "pooling": "mean", "elements": "learned", "atom_descriptors": False}


def train_epochs(arm: str, base: TransferModel, batches: Batches, epochs: int) -> tuple[list[float], float]:
    """Seconds of each epoch and the last epoch's mean training loss."""
    model = copy.deepcopy(base)
    if arm.endswith("compiled"):
        model.encoder.compile(dynamic=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    seconds, loss_sum = [], 0.0
    for _ in range(epochs):
        start, loss_sum = time.perf_counter(), 0.0
        for batch, y, _ in batches.epoch(generator):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=arm.startswith("bf16")):
                prediction = model(batch)
            loss = F.l1_loss(prediction.float(), y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
        seconds.append(time.perf_counter() - start)
    return seconds, loss_sum / len(batches.y)


def measure(target: str, sources: DataSources, n: int, epochs: int, rounds: int) -> dict:
    table = sources.load(target)
    graphs = cached_inputs(table, RadiusGraph(GraphSettings()), progress=False)
    positions = graphs.positions(make_split(table.ids, n, 0, dataset=table.name).train)
    y = torch.from_numpy(table.y)[positions].float()
    batches = Batches(graphs, positions, (y - y.mean()) / y.std(), 32, torch.device("cpu"))
    torch.manual_seed(0)
    base = TransferModel(ModelConfig(encoder=PART1_ENCODER), GraphSettings())
    runs: dict[str, list] = {arm: [] for arm in ARMS}
    for r in range(rounds):
        for arm in ARMS[r % len(ARMS):] + ARMS[:r % len(ARMS)]:
            seconds, loss = train_epochs(arm, base, batches, epochs)
            runs[arm].append({"epoch_s": seconds, "last_train_loss": loss})
            print(f"{target} round {r} {arm}: s/epoch {[round(s, 3) for s in seconds]}, last train loss {loss:.4f}",
                  flush=True)
    median = {arm: statistics.median(s for run in runs[arm] for s in run["epoch_s"][1:]) for arm in ARMS}
    return {"target": target, "n_train": len(positions), "median_epoch_s": median,
            "speedup_over_fp32": {arm: median["fp32"] / median[arm] for arm in ARMS},
            "bf16_compiled_over_fp32_compiled": median["fp32-compiled"] / median["bf16-compiled"], "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", nargs="+", default=["phonons", "eform"])
    parser.add_argument("--data-sources", default=str(Path(__file__).parents[1] / "configs" / "shared-data.yaml"))
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sources = DataSources.from_yaml(args.data_sources)
    load_before = os.getloadavg()
    results = [measure(t, sources, args.n, args.epochs, args.rounds) for t in args.targets]
    for result in results:
        ratios = ", ".join(f"{arm} {result['median_epoch_s'][arm]:.3f} s" for arm in ARMS)
        print(f"{result['target']} (n_train {result['n_train']}): median s/epoch {ratios};"
              f" bf16/fp32 compiled speed-up {result['bf16_compiled_over_fp32_compiled']:.2f}x")
    path = save_report("bf16_epoch", {"command": command_line(), "results": results, "machine": {
        **machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
