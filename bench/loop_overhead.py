"""Training-loop overhead: mattransfer's lean loop vs PyTorch Lightning on the study's tiny fine-tunes.

What it measures
    Seconds per epoch (median over the epochs after a warm-up epoch) of training the same default
    ``TransferModel`` (``ModelConfig()``: CGCNN encoder + MLP head) from the same initial weights, on
    the same mini-batches, with the same AdamW and learning rate, for a fixed number of epochs, with
    train + validation every epoch and no early stop firing (patience > epochs), so that every arm
    does the same work. Arms:

    lean           ``mattransfer.training.trainer.fit`` (patience > epochs, progress bar off)
    lightning      a ``LightningModule`` + ``lightning.Trainer(accelerator="cpu")`` without logger,
                   checkpointing, progress bar or model summary, with ``EarlyStopping`` on ``val_loss``
                   (patience > epochs); the validation loss is logged with ``self.log`` (EarlyStopping
                   reads it from there)
    lightning_log  as ``lightning``, plus the default per-step ``self.log("train_loss", ...)``

    Both loops get their batches from the same ``Batches`` object: the lean loop calls
    ``Batches.epoch(generator)`` itself; Lightning gets a ``DataLoader(batch_size=None)`` over an
    iterable dataset that makes the same call with an identically seeded generator. Both therefore
    cut and shuffle the same mini-batches at the same cost. As a check that the work is equal, each
    Lightning arm's per-epoch validation losses are compared with the lean loop's ("max dval"; they
    agree to float rounding).

    Grid: subset sizes n = 100 and 800 (``make_split``: 90/10 train/val of n) x batch sizes 16 and 64.
    An epoch is timed from its start to the next epoch's start (train + val + the loop's bookkeeping),
    in wall seconds and in CPU seconds of this process (``time.process_time``; less sensitive to other
    processes on a shared machine). The fit time is the whole call, including Lightning's Trainer
    set-up and its sanity-check validation. With ``--repeats R`` every arm runs R times, in rotated
    order, and the median pools the timed epochs of all R runs.

How to run (by hand, not a test; a few minutes on 2 CPU cores)
    . .venv/bin/activate
    python bench/loop_overhead.py                           # phonons from /work/shared/data, 30 epochs
    python bench/loop_overhead.py --data demo               # embedded demo_bulk (300 rows: n is capped)
    python bench/loop_overhead.py --epochs 20 --repeats 2 --threads 1

It prints a table and writes ``bench/results/loop_overhead.json``: the command line, the machine
(and its load average before and after), every run's epoch times, and the lightning/lean ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import lightning
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

from mattransfer.data.splits import fixed_test_ids, make_split
from mattransfer.data.table import PropertyTable
from mattransfer.finetune import param_groups
from mattransfer.graphs.build import GraphSettings, RadiusGraph
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.graphs.store import GraphBatch, GraphStore
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training.trainer import Batches, TrainingOptions, fit

sys.path.insert(0, str(Path(__file__).parent))
from common import BENCH_DATASETS, load_table, machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "loop_overhead.json"
ARMS = ("lean", "lightning", "lightning_log")


# ----------------------------------------------------------------------------------------------
# Data: one table, its graphs, and a fine-tune-sized subset as train/val Batches
# ----------------------------------------------------------------------------------------------


@dataclass
class Subset:
    """Standardised train/val batches of ``n`` samples, built as ``run.train_and_test`` builds them."""

    n: int
    train: Batches
    val: Batches
    y_train: Tensor  # physical units, for the model's standardisation


def make_subset(table: PropertyTable, graphs: GraphStore, n: int, batch_size: int, seed: int) -> Subset:
    pool = len(table) - len(fixed_test_ids(table.ids))  # n is capped only for the 300-row demo
    split = make_split(table.ids, min(n, pool), seed, dataset=table.name)
    y = torch.from_numpy(table.y)
    train_pos, val_pos = graphs.positions(split.train), graphs.positions(split.val)
    y_std = ((y - y[train_pos].mean()) / y[train_pos].std()).float()
    cpu = torch.device("cpu")
    return Subset(
        n,
        Batches(graphs, train_pos, y_std[train_pos], batch_size, cpu),
        Batches(graphs, val_pos, y_std[val_pos], batch_size, cpu),
        y[train_pos],
    )


def initial_model(table: PropertyTable, subset: Subset, seed: int) -> TransferModel:
    """The default model, seeded; every run trains a deep copy of it (identical initial weights)."""
    torch.manual_seed(seed)
    model = TransferModel(ModelConfig(), GraphSettings())
    model.set_target(table.name, table.target, table.unit, subset.y_train)
    return model


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


class EpochClock:
    """Wall and process-CPU time stamps at each epoch start."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def stamp(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    @staticmethod
    def _durations(stamps: list[float]) -> list[float]:
        """Epoch k lasts from its start to the start of epoch k + 1 (the last epoch is not timed)."""
        return [b - a for a, b in zip(stamps, stamps[1:])]

    def wall_durations(self) -> list[float]:
        return self._durations(self.wall)

    def cpu_durations(self) -> list[float]:
        return self._durations(self.cpu)


@dataclass
class ArmRun:
    """One training run of one arm."""

    arm: str
    repeat: int
    epoch_wall_s: list[float]  # epochs 0 .. E-2; epoch 0 is the warm-up, left out of the medians
    epoch_cpu_s: list[float]
    fit_wall_s: float  # the whole call: set-up, sanity check, all epochs, teardown
    val_losses: list[float]


def arm_run(arm: str, repeat: int, clock: EpochClock, fit_wall_s: float, val_losses: list[float]) -> ArmRun:
    return ArmRun(arm, repeat, clock.wall_durations(), clock.cpu_durations(), fit_wall_s, val_losses)


# ----------------------------------------------------------------------------------------------
# (a) the lean loop
# ----------------------------------------------------------------------------------------------


class ClockedBatches(Batches):
    """``Batches`` whose ``epoch()`` (called once at the start of each training epoch) stamps a clock."""

    def __init__(self, inner: Batches, clock: EpochClock) -> None:
        super().__init__(inner.store, inner.positions, inner.y, inner.batch_size, inner.device)
        self.clock = clock

    def epoch(self, generator: torch.Generator | None = None) -> list[tuple[GraphBatch, Tensor]]:
        self.clock.stamp()
        return super().epoch(generator)


def run_lean(model: TransferModel, subset: Subset, epochs: int, lr: float, seed: int, repeat: int) -> ArmRun:
    clock = EpochClock()
    options = TrainingOptions(lr=lr, batch_size=subset.train.batch_size, max_epochs=epochs, patience=epochs + 1)
    start = time.perf_counter()
    result = fit(
        model, ClockedBatches(subset.train, clock), subset.val, param_groups(model, None, lr), options,
        seed=seed, progress=False,
    )
    fit_wall_s = time.perf_counter() - start
    assert result.epochs_run == epochs, "early stopping fired: the arms would not do equal work"
    return arm_run("lean", repeat, clock, fit_wall_s, [h["val_loss"] for h in result.history])


# ----------------------------------------------------------------------------------------------
# (b), (c) Lightning on the same batches
# ----------------------------------------------------------------------------------------------


class EpochBatches(IterableDataset):
    """Each pass is one epoch of ``Batches.epoch(generator)``, seeded as ``trainer.fit`` seeds it."""

    def __init__(self, batches: Batches, seed: int) -> None:
        self.batches = batches
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[tuple[GraphBatch, Tensor]]:
        return iter(self.batches.epoch(self.generator))

    def __len__(self) -> int:
        return math.ceil(len(self.batches) / self.batches.batch_size)  # as Batches.epoch cuts them


class FixedBatches(IterableDataset):
    """Validation: the same unshuffled batches every epoch, cut once (as ``trainer.fit`` does)."""

    def __init__(self, batches: Batches) -> None:
        self.items = batches.epoch()

    def __iter__(self) -> Iterator[tuple[GraphBatch, Tensor]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def loader(dataset: IterableDataset) -> DataLoader:
    """A plain torch DataLoader that hands the prebuilt (GraphBatch, y) pairs through unchanged."""
    return DataLoader(dataset, batch_size=None, collate_fn=lambda item: item)


class LitTransfer(lightning.LightningModule):
    """``TransferModel`` trained as ``trainer.fit`` trains it: L1 on standardised targets, AdamW."""

    def __init__(self, model: TransferModel, lr: float, log_train_loss: bool) -> None:
        super().__init__()
        self.model, self.lr, self.log_train_loss = model, lr, log_train_loss
        self.val_sum, self.val_count = 0.0, 0
        self.val_history: list[float] = []  # per epoch, for the equal-work check

    def training_step(self, batch: tuple[GraphBatch, Tensor], batch_idx: int) -> Tensor:
        graphs, y = batch
        loss = nn.functional.l1_loss(self.model(graphs), y)
        if self.log_train_loss:
            self.log("train_loss", loss, batch_size=graphs.num_graphs)  # default in training: on_step
        return loss

    def validation_step(self, batch: tuple[GraphBatch, Tensor], batch_idx: int) -> None:
        graphs, y = batch
        losses = nn.functional.l1_loss(self.model(graphs), y, reduction="none")
        self.log("val_loss", losses.mean(), batch_size=graphs.num_graphs)  # default in validation: on_epoch
        self.val_sum += float(losses.sum())
        self.val_count += graphs.num_graphs

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_history.append(self.val_sum / self.val_count)
        self.val_sum, self.val_count = 0.0, 0

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(param_groups(self.model, None, self.lr), lr=self.lr, weight_decay=0.0)


class ClockCallback(lightning.Callback):
    def __init__(self, clock: EpochClock) -> None:
        self.clock = clock

    def on_train_epoch_start(self, trainer: lightning.Trainer, pl_module: lightning.LightningModule) -> None:
        self.clock.stamp()


def run_lightning(
    model: TransferModel, subset: Subset, epochs: int, lr: float, seed: int, repeat: int, *, log_train_loss: bool,
) -> ArmRun:
    module = LitTransfer(model, lr, log_train_loss)
    clock = EpochClock()
    stopper = lightning.pytorch.callbacks.EarlyStopping(monitor="val_loss", patience=epochs + 1, mode="min")
    start = time.perf_counter()
    trainer = lightning.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[stopper, ClockCallback(clock)],
    )
    trainer.fit(module, loader(EpochBatches(subset.train, seed)), loader(FixedBatches(subset.val)))
    fit_wall_s = time.perf_counter() - start
    assert len(module.val_history) == epochs, "early stopping fired: the arms would not do equal work"
    arm = "lightning_log" if log_train_loss else "lightning"
    return arm_run(arm, repeat, clock, fit_wall_s, module.val_history)


def run_arm(arm: str, model: TransferModel, subset: Subset, args: argparse.Namespace, repeat: int) -> ArmRun:
    model = copy.deepcopy(model)
    if arm == "lean":
        return run_lean(model, subset, args.epochs, args.lr, args.seed, repeat)
    return run_lightning(model, subset, args.epochs, args.lr, args.seed, repeat, log_train_loss=arm == "lightning_log")


# ----------------------------------------------------------------------------------------------
# One configuration: all arms, repeated in rotated order, summarised
# ----------------------------------------------------------------------------------------------


def summarise(runs: list[ArmRun]) -> dict:
    """Medians over the timed epochs (warm-up epoch 0 of each run left out) of all runs of one arm."""
    wall = [t for r in runs for t in r.epoch_wall_s[1:]]
    cpu = [t for r in runs for t in r.epoch_cpu_s[1:]]
    return {
        "median_epoch_wall_s": statistics.median(wall),
        "median_epoch_cpu_s": statistics.median(cpu),
        "run_median_epoch_wall_s": [statistics.median(r.epoch_wall_s[1:]) for r in runs],
        "median_fit_wall_s": statistics.median(r.fit_wall_s for r in runs),
    }


def run_configuration(
    table: PropertyTable, graphs: GraphStore, n: int, batch_size: int, args: argparse.Namespace,
) -> dict:
    subset = make_subset(table, graphs, n, batch_size, args.seed)
    model = initial_model(table, subset, args.seed)
    runs: dict[str, list[ArmRun]] = {arm: [] for arm in ARMS}
    for repeat in range(args.repeats):
        order = ARMS[repeat % len(ARMS):] + ARMS[: repeat % len(ARMS)]
        for arm in order:
            runs[arm].append(run_arm(arm, model, subset, args, repeat))
    summary = {arm: summarise(arm_runs) for arm, arm_runs in runs.items()}
    lean, lean_val = summary["lean"], runs["lean"][0].val_losses
    others = [arm for arm in ARMS if arm != "lean"]
    return {
        "n_requested": n, "n_train": len(subset.train), "n_val": len(subset.val), "batch_size": batch_size,
        "train_batches_per_epoch": len(EpochBatches(subset.train, 0)),
        "summary": summary,
        "ratio_wall": {arm: summary[arm]["median_epoch_wall_s"] / lean["median_epoch_wall_s"] for arm in others},
        "ratio_cpu": {arm: summary[arm]["median_epoch_cpu_s"] / lean["median_epoch_cpu_s"] for arm in others},
        "max_abs_val_loss_diff_vs_lean": max(
            abs(a - b) for arm in others for r in runs[arm] for a, b in zip(r.val_losses, lean_val)
        ),
        "runs": [asdict(r) for arm_runs in runs.values() for r in arm_runs],
    }


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    print(f"\nmedian seconds per epoch (train + val), epochs 1..{args.epochs - 2} of {args.repeats} run(s);"
          " ratio = arm / lean")
    header = (f"{'n':>4} {'train/val':>9} {'batch':>5} {'steps':>5} | {'lean':>7} {'lightning':>9} {'ratio':>5}"
              f" | {'+step log':>9} {'ratio':>5} | {'cpu ratios':>11} | {'max dval':>8}")
    print(header)
    print("-" * len(header))
    for row in rows:
        s, wall, cpu = row["summary"], row["ratio_wall"], row["ratio_cpu"]
        print(f"{row['n_requested']:>4} {row['n_train']:>5}/{row['n_val']:<3} {row['batch_size']:>5}"
              f" {row['train_batches_per_epoch']:>5} | {s['lean']['median_epoch_wall_s']:>7.3f}"
              f" {s['lightning']['median_epoch_wall_s']:>9.3f} {wall['lightning']:>5.2f}"
              f" | {s['lightning_log']['median_epoch_wall_s']:>9.3f} {wall['lightning_log']:>5.2f}"
              f" | {cpu['lightning']:>5.2f} {cpu['lightning_log']:>5.2f} | {row['max_abs_val_loss_diff_vs_lean']:>8.1e}")
    print("\nwhole fit call, median wall seconds (Lightning's includes Trainer set-up and sanity check)")
    for row in rows:
        fits = "  ".join(f"{arm} {row['summary'][arm]['median_fit_wall_s']:.2f}" for arm in ARMS)
        print(f"  n={row['n_requested']:<4} batch={row['batch_size']:<3} {fits}")


def quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (".*does not have many workers.*", ".*smaller than the logging interval.*",
                    ".*IterableDataset.*has .__len__. defined.*", ".*LeafSpec.*is deprecated.*"):
        warnings.filterwarnings("ignore", message=message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=sorted(BENCH_DATASETS), default="phonons")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 800], help="subset sizes n (train + val)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (at least 3)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per arm, in rotated order")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.epochs < 3:
        parser.error("--epochs must be at least 3 (one warm-up epoch, one timed, one to end the timed one)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_lightning()
    load_before = os.getloadavg()
    table = load_table(args.data)
    graphs = cached_inputs(table, RadiusGraph(GraphSettings()), progress=False)
    rows = []
    for n in args.sizes:
        for batch_size in args.batch_sizes:
            print(f"n={n} batch={batch_size} ...", flush=True)
            rows.append(run_configuration(table, graphs, n, batch_size, args))
    print_table(rows, args)
    report = {
        "command": shlex.join(["python", *(sys.argv if argv is None else ["bench/loop_overhead.py", *argv])]),
        "measured": "median seconds per epoch (train + val), epoch 0 of each run left out as warm-up",
        "data": {"key": table.name, "rows": len(table), "source": table.source},
        "settings": {
            "epochs": args.epochs, "repeats": args.repeats, "lr": args.lr, "seed": args.seed, "threads": args.threads,
            "optimizer": "AdamW", "loss": "l1", "model": ModelConfig().model_dump(),
            "graphs": GraphSettings().model_dump(),
        },
        "machine": {**machine_info(), "lightning": lightning.__version__, "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
