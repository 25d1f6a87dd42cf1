"""Training throughput of the default model: GraphStore index slicing vs PyG's DataLoader, and fine-tune times.

What it measures
    1. Throughput, structures per second of training (train mode, forward + backward + AdamW step)
       of the default ``TransferModel`` (``ModelConfig()``: CGCNN 3x64 + MLP head) on 800 phonon
       structures (a ``make_split`` sample: its train + val ids), at batch sizes 16 and 64. Arms:

       mattransfer  what ``trainer.fit`` runs: ``trainer.Batches`` over the dataset's ``GraphStore``
                    (``Batches.epoch(generator)`` cuts every shuffled mini-batch of the epoch by index
                    slicing of the collated tensors, ``GraphStore.batch``) into the default encoder,
                    whose ``FactorizedCGConv`` layers apply the atom blocks of CGConv's linear maps
                    per atom instead of per edge.
       compiled     mattransfer with ``compile: true`` (the encoder compiled in place with
                    ``torch.compile(dynamic=True)``, as ``train_and_test`` does); each run's epoch 0,
                    left out of the medians as for every arm, holds the compilation (the first run's
                    most, later runs reuse the compiled code) and is recorded.
       stock_conv   the same batches into the same model with PyG's stock ``CGConv`` layers (the same
                    weights): separates the batching gain from the convolution's.
       pyg          the plain PyG baseline: one ``torch_geometric.data.Data(z, edge_index, distance, y)``
                    per structure (built from the same GraphStore, so the graphs are identical),
                    collated per sample by ``torch_geometric.loader.DataLoader(shuffle=True)``, into
                    the stock-CGConv model. The model reads ``batch.z / edge_index / distance / batch /
                    num_graphs``, which a PyG ``Batch`` has under the same names.

       Every arm trains a copy of the same initial weights for the same epochs (800 structures each)
       with AdamW: fused for mattransfer, as ``trainer.fit`` runs it, torch's default for the others.
       A check feeds the same 16 graphs through every arm and compares the model outputs. Each epoch
       is split into phases, timed with ``perf_counter`` (CPU only, so no asynchronous work hides):
       data (cutting/collating batches), forward, backward, optimizer.
       Epoch 0 of every run is a warm-up; with ``--repeats R`` the arms run R times in rotated order
       and the medians pool all timed epochs. A short ``torch.profiler`` table of a few steps of
       each arm at the first batch size shows which operators the time goes to.

    2. Fine-tune times at 800 samples (``make_split``, 720/80 train/val, fixed test set): one ``heads``,
       one ``full`` and one ``scratch`` run through ``mattransfer.training.run.train_and_test``, each
       with the default ``TrainingOptions`` except ``max_epochs=100`` and ``patience=101`` (early
       stopping never fires: equal work). The model is prepared by ``mattransfer.finetune.METHODS``
       from a freshly initialised ``TransferModel`` standing in for a pre-trained one (the cost does
       not depend on the weights). The ``heads`` time includes its encoder embedding pass
       (``EmbeddingBatches``); every time includes the final evaluation on train/val/test.

How to run (by hand, not a test; about 6 minutes on the 2-core development machine)
    . .venv/bin/activate
    python bench/training_throughput.py --threads 1
    python bench/training_throughput.py --epochs 6 --repeats 4 --finetune-epochs 100 --threads 1

It prints tables and writes ``bench/results/training_throughput.json``: the command line, the machine
(and its load average before and after), every epoch's phase times, the ratios over pyg, the
profiler tables and the fine-tune times.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader
from torch_geometric.nn import CGConv

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, load_table, machine, save_report, timed  # noqa: E402

from mattransfer.data.splits import make_split
from mattransfer.data.table import PropertyTable
from mattransfer.finetune import METHODS, param_groups
from mattransfer.graphs.build import GraphSettings, RadiusGraph
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.graphs.store import GraphStore
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training.job import Dataset, train_and_test
from mattransfer.training.trainer import Batches, TrainingOptions

ARMS = ("mattransfer", "compiled", "stock_conv", "pyg")
CPU = torch.device("cpu")
EpochBatches = Callable[[], Iterable[tuple]]  # one epoch of (graph batch, y) pairs


# ----------------------------------------------------------------------------------------------
# Data: one 800-structure sample, as mattransfer Batches and as a list of PyG Data objects
# ----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    positions: Tensor  # rows of the GraphStore
    y: Tensor  # standardised targets, float32


def make_sample(table: PropertyTable, graphs: GraphStore, n: int, seed: int) -> Sample:
    split = make_split(table.ids, n, seed, dataset=table.name)
    positions = graphs.positions(split.train + split.val)
    y = torch.from_numpy(table.y)[positions]
    return Sample(positions, ((y - y.mean()) / y.std()).float())


def sample_size(graphs: GraphStore, sample: Sample) -> dict[str, int]:
    whole = graphs.batch(sample.positions)
    return {"structures": len(sample.positions), "atoms": whole.z.numel(), "edges": whole.distance.numel()}


def pyg_data_list(graphs: GraphStore, sample: Sample) -> list[Data]:
    """One ``Data`` per structure, owning copies of its slices of the store."""
    data = []
    for k, row in enumerate(sample.positions.tolist()):
        a0, a1 = int(graphs.atom_ptr[row]), int(graphs.atom_ptr[row + 1])
        e0, e1 = int(graphs.edge_ptr[row]), int(graphs.edge_ptr[row + 1])
        data.append(Data(
            z=graphs.z[a0:a1].clone(), edge_index=graphs.edge_index[:, e0:e1].clone(),
            distance=graphs.distance[e0:e1].clone(), y=sample.y[k:k + 1].clone(), num_nodes=a1 - a0,
        ))
    return data


def epoch_source(arm: str, graphs: GraphStore, sample: Sample, data: list[Data], batch_size: int,
                 seed: int) -> EpochBatches:
    """A callable returning one shuffled epoch of ``(graphs, y)`` batches for ``arm``."""
    generator = torch.Generator().manual_seed(seed)
    if arm != "pyg":
        batches = Batches(graphs, sample.positions, sample.y, batch_size, CPU)
        return lambda: batches.epoch(generator)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    return lambda: ((batch, batch.y) for batch in loader)


def initial_model(seed: int) -> TransferModel:
    torch.manual_seed(seed)
    return TransferModel(ModelConfig(), GraphSettings())


def with_stock_cgconv(model: TransferModel) -> TransferModel:
    """A copy of ``model`` whose layers are PyG's stock ``CGConv`` with the same weights."""
    stock = copy.deepcopy(model)
    for k, conv in enumerate(stock.encoder.layers):
        layer = CGConv(conv.channels, dim=conv.dim, batch_norm=conv.batch_norm)
        layer.load_state_dict(conv.state_dict())
        stock.encoder.layers[k] = layer
    return stock


def check_same_input(models: dict[str, TransferModel], graphs: GraphStore, sample: Sample, data: list[Data]) -> float:
    """Max |output difference| between the arms on the same 16 graphs, each through its own input path."""
    outputs = []
    with torch.no_grad():
        for arm, model in models.items():
            inputs = Batch.from_data_list(data[:16]) if arm == "pyg" else graphs.batch(sample.positions[:16])
            outputs.append(arm_model(arm, model).eval()(inputs))
    return max(float((out - outputs[0]).abs().max()) for out in outputs)


# ----------------------------------------------------------------------------------------------
# Training epochs, timed by phase
# ----------------------------------------------------------------------------------------------


@dataclass
class EpochTimes:
    data_s: float = 0.0
    forward_s: float = 0.0
    backward_s: float = 0.0
    optimizer_s: float = 0.0
    structures: int = 0
    steps: int = 0

    @property
    def total_s(self) -> float:
        return self.data_s + self.forward_s + self.backward_s + self.optimizer_s


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, source: EpochBatches) -> EpochTimes:
    """One epoch as ``trainer.fit`` runs it (L1 loss, ``loss.item()`` per step), timed by phase."""
    times = EpochTimes()
    model.train()
    tick = time.perf_counter()
    batches = iter(source())
    while True:
        try:
            inputs, y = next(batches)
        except StopIteration:
            times.data_s += time.perf_counter() - tick
            return times
        now = time.perf_counter()
        times.data_s += now - tick
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.l1_loss(model(inputs), y)
        tick, now = now, time.perf_counter()
        times.forward_s += now - tick
        loss.backward()
        tick, now = now, time.perf_counter()
        times.backward_s += now - tick
        optimizer.step()
        loss.item()
        tick, now = now, time.perf_counter()
        times.optimizer_s += now - tick
        times.structures += len(y)
        times.steps += 1
        tick = now


def make_optimizer(arm: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """``trainer.fit``'s fused AdamW for mattransfer's arms; torch's default AdamW for the baselines."""
    ours = arm in ("mattransfer", "compiled")
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=ours or None)


def arm_model(arm: str, model: TransferModel) -> TransferModel:
    """A fresh copy of the arm's model; compiled as ``train_and_test(compile=True)`` compiles it."""
    model = copy.deepcopy(model)
    if arm == "compiled":
        model.encoder.compile(dynamic=True)
    return model


def train_run(arm: str, model: TransferModel, source: EpochBatches, epochs: int, lr: float) -> list[EpochTimes]:
    model = arm_model(arm, model)
    optimizer = make_optimizer(arm, model, lr)
    return [train_epoch(model, optimizer, source) for _ in range(epochs)]


def summarise(runs: list[list[EpochTimes]]) -> dict:
    """Medians over the timed epochs (epoch 0 of each run left out) of one arm."""
    epochs = [e for run in runs for e in run[1:]]
    median = {f: statistics.median(getattr(e, f) for e in epochs)
              for f in ("data_s", "forward_s", "backward_s", "optimizer_s", "total_s")}
    structures = epochs[0].structures
    return {
        "median_epoch_s": median["total_s"], "structures_per_s": structures / median["total_s"],
        "median_phase_s": {k: v for k, v in median.items() if k != "total_s"},
        "structures_per_epoch": structures, "steps_per_epoch": epochs[0].steps,
        "run_median_epoch_s": [statistics.median(e.total_s for e in run[1:]) for run in runs],
        "epochs": [[{**asdict(e), "total_s": e.total_s} for e in run] for run in runs],
    }


def throughput_row(models: dict[str, TransferModel], graphs: GraphStore, sample: Sample, data: list[Data],
                   batch_size: int, args: argparse.Namespace) -> dict:
    runs: dict[str, list[list[EpochTimes]]] = {arm: [] for arm in ARMS}
    for repeat in range(args.repeats):
        shift = repeat % len(ARMS)
        for arm in ARMS[shift:] + ARMS[:shift]:
            source = epoch_source(arm, graphs, sample, data, batch_size, args.seed + repeat)
            runs[arm].append(train_run(arm, models[arm], source, args.epochs, args.lr))
            print(f"  batch {batch_size} {arm:<11} repeat {repeat}: "
                  f"{statistics.median(e.total_s for e in runs[arm][-1][1:]):.3f} s/epoch", flush=True)
    summary = {arm: summarise(arm_runs) for arm, arm_runs in runs.items()}
    pyg = summary["pyg"]["structures_per_s"]
    return {"batch_size": batch_size, **summary,
            "ratio_throughput_mattransfer_over_pyg": summary["mattransfer"]["structures_per_s"] / pyg,
            "ratio_throughput_stock_conv_over_pyg": summary["stock_conv"]["structures_per_s"] / pyg,
            "ratio_throughput_compiled_over_pyg": summary["compiled"]["structures_per_s"] / pyg,
            "compiled_first_epoch_s": [run[0].total_s for run in runs["compiled"]]}


# ----------------------------------------------------------------------------------------------
# Profiler: which operators a few training steps spend their time in
# ----------------------------------------------------------------------------------------------


def profile_steps(arm: str, model: TransferModel, source: EpochBatches, steps: int, lr: float, top: int) -> list[dict]:
    """Top operators by self CPU time over the first ``steps`` steps of an epoch (after a warm-up epoch).

    The ``## ...`` rows are the phases (CPU total includes their operators). mattransfer's batches are
    all cut when the epoch starts, so its epoch-start row holds the whole epoch's data work.
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    model = arm_model(arm, model)
    optimizer = make_optimizer(arm, model, lr)
    train_epoch(model, optimizer, source)
    model.train()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("## epoch start (mattransfer: cuts all batches of the epoch)"):
            batches = iter(source())
        for _ in range(steps):
            with record_function("## data"):
                inputs, y = next(batches)
            with record_function("## forward"):
                optimizer.zero_grad(set_to_none=True)
                loss = nn.functional.l1_loss(model(inputs), y)
            with record_function("## backward"):
                loss.backward()
            with record_function("## optimizer"):
                optimizer.step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    rows = [{"name": e.key, "calls": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3,
             "cpu_total_ms": e.cpu_time_total / 1e3} for e in events]
    phases = [r for r in rows if r["name"].startswith("## ")]  # the record_function ranges above
    return phases + [r for r in rows if not r["name"].startswith("## ")][:top]


# ----------------------------------------------------------------------------------------------
# Fine-tune times through train_and_test
# ----------------------------------------------------------------------------------------------


def time_finetune(method: str, dataset: Dataset, n: int, epochs: int, seed: int) -> dict:
    """One fine-tune of ``method`` on ``n`` samples, from a fresh model standing in for a pre-trained one."""
    split = make_split(dataset.table.ids, n, seed, dataset=dataset.table.name)
    options_cls, prepare = METHODS[method]
    options = options_cls()
    model = prepare(initial_model(seed), options)
    training = TrainingOptions(max_epochs=epochs, patience=epochs + 1)
    groups = param_groups(model, options, training.lr)
    with timed() as t:
        result, metrics = train_and_test(model, dataset, split, training, groups, seed=seed, device=CPU,
                                         progress=False, description=method)
    assert result.epochs_run == epochs, "early stopping fired: runs would not do equal work"
    return {
        "method": method, "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
        "epochs": result.epochs_run, "batch_size": training.batch_size,
        "n_trainable": sum(p.numel() for g in groups for p in g["params"]),
        "wall_s": t.wall_s, "cpu_s": t.cpu_s, "fit_s": result.seconds,
        "outside_fit_s": t.wall_s - result.seconds, "test_mae": metrics["test"]["mae"],
    }


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def print_throughput(rows: list[dict]) -> None:
    print("\ntraining throughput, structures/s (median timed epoch); phases in s/epoch: data / fwd / bwd / opt")
    header = f"{'batch':>5} {'arm':<11} {'steps':>5} {'s/epoch':>8} {'struct/s':>8} | phases"
    print(header)
    print("-" * (len(header) + 30))
    for row in rows:
        for arm in ARMS:
            s, p = row[arm], row[arm]["median_phase_s"]
            print(f"{row['batch_size']:>5} {arm:<11} {s['steps_per_epoch']:>5} {s['median_epoch_s']:>8.3f}"
                  f" {s['structures_per_s']:>8.0f} | {p['data_s']:.3f} / {p['forward_s']:.3f} /"
                  f" {p['backward_s']:.3f} / {p['optimizer_s']:.3f}")
        print(f"{'':>5} ratio over pyg: mattransfer {row['ratio_throughput_mattransfer_over_pyg']:.2f},"
              f" compiled {row['ratio_throughput_compiled_over_pyg']:.2f},"
              f" stock_conv {row['ratio_throughput_stock_conv_over_pyg']:.2f};"
              f" compiled warm-up epochs (s): {', '.join(f'{t:.1f}' for t in row['compiled_first_epoch_s'])}")


def print_profile(profiles: dict[str, list[dict]], batch_size: int, steps: int) -> None:
    for arm, rows in profiles.items():
        print(f"\nprofiler, {arm}, batch {batch_size}, {steps} steps (ms, self CPU / CPU total incl. children)")
        for row in rows:
            print(f"  {row['name'][:60]:<60} {row['calls']:>5} {row['self_cpu_ms']:>9.1f} {row['cpu_total_ms']:>9.1f}")


def print_finetunes(rows: list[dict]) -> None:
    print("\nfine-tunes through train_and_test (fresh model standing in for a pre-trained one), seconds")
    print(f"{'method':<8} {'train/val':>9} {'epochs':>6} {'trainable':>9} | {'total':>7} {'fit':>7} {'other':>6} {'cpu':>7}")
    for r in rows:
        print(f"{r['method']:<8} {r['n_train']:>5}/{r['n_val']:<3} {r['epochs']:>6} {r['n_trainable']:>9}"
              f" | {r['wall_s']:>7.2f} {r['fit_s']:>7.2f} {r['outside_fit_s']:>6.2f} {r['cpu_s']:>7.2f}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=800, help="phonon structures (make_split sample)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--epochs", type=int, default=6, help="epochs per throughput run (the first is a warm-up)")
    parser.add_argument("--repeats", type=int, default=4, help="throughput runs per arm, in rotated order")
    parser.add_argument("--profile-steps", type=int, default=20, help="0: no profiler table")
    parser.add_argument("--finetune-epochs", type=int, default=100, help="0: skip the fine-tune timings")
    parser.add_argument("--methods", nargs="+", default=["heads", "full", "scratch"], choices=sorted(METHODS))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/training_throughput.json")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (one warm-up, one timed)")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    table = load_table("phonons")
    graphs = cached_inputs(table, RadiusGraph(GraphSettings()), progress=False)
    sample = make_sample(table, graphs, args.n, args.seed)
    data = pyg_data_list(graphs, sample)
    model = initial_model(args.seed)
    stock = with_stock_cgconv(model)
    models = {"mattransfer": model, "compiled": model, "stock_conv": stock, "pyg": stock}
    same_input_diff = check_same_input(models, graphs, sample, data)
    print(f"same 16 graphs through every arm: max |output diff| = {same_input_diff:.1e}")

    rows = [throughput_row(models, graphs, sample, data, b, args) for b in args.batch_sizes]
    print_throughput(rows)

    profiles: dict[str, list[dict]] = {}
    if args.profile_steps:
        b = args.batch_sizes[0]
        profiles = {arm: profile_steps(arm, models[arm], epoch_source(arm, graphs, sample, data, b, args.seed),
                                       args.profile_steps, args.lr, top=12) for arm in ARMS}
        print_profile(profiles, b, args.profile_steps)

    finetunes = []
    if args.finetune_epochs:
        dataset = Dataset(table, graphs)
        for method in args.methods:
            print(f"fine-tune {method} ...", flush=True)
            finetunes.append(time_finetune(method, dataset, args.n, args.finetune_epochs, args.seed))
        print_finetunes(finetunes)

    report = {
        "command": command_line(),
        "measured": "training structures/s (train mode: forward + backward + AdamW step), median timed epoch;"
                    " fine-tune wall seconds of train_and_test",
        "data": {"key": table.name, "rows": len(table), "source": table.source, **sample_size(graphs, sample)},
        "settings": {
            "epochs": args.epochs, "repeats": args.repeats, "lr": args.lr, "seed": args.seed,
            "threads": args.threads, "optimizer": "AdamW", "loss": "l1", "model": ModelConfig().model_dump(),
            "graphs": GraphSettings().model_dump(), "finetune_epochs": args.finetune_epochs,
            "finetune_training": TrainingOptions(max_epochs=max(args.finetune_epochs, 1),
                                                 patience=args.finetune_epochs + 1).model_dump(),
            "finetune_pretrained": "a freshly initialised TransferModel stands in for a pre-trained one",
        },
        "machine": {**machine(), "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "same_input_max_abs_output_diff": same_input_diff,
        "throughput": rows,
        "profile": {"batch_size": args.batch_sizes[0], "steps": args.profile_steps, "arms": profiles},
        "finetunes": finetunes,
    }
    print(f"\nwrote {save_report('training_throughput', report, args.out)}")


if __name__ == "__main__":
    main()
