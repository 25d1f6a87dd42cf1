"""Peak resident memory of a Part 2 pre-training on the whole Materials Project snapshot.

What it measures
    The study's own path: ``prepare_datasets`` in this (main) process, then one study worker
    process running ``mattransfer.study.worker.run_task`` on the Part 2 pre-training task of
    ``--key`` (default eform) at 100,000 samples, capped at the pool (33,063 of 36,737 rows outside
    the fixed test set: 29,757 train / 3,306 val), with the test set (3,674) evaluated at the end.
    Only ``max_epochs`` is cut (``--epochs``, default 1; early stopping off) so that the run takes
    minutes: memory does not grow with epochs (the loop keeps one copy of the best weights and a
    history row per epoch), so the peak is reached within the first epoch, validation and test.

    Reported: the worker's peak RSS (``VmHWM`` of ``/proc/self/status``, read inside the worker
    when the task is done), the main process's peak RSS (it loads the tables with their pymatgen
    structures to prepare the data), and the worker's wall time per epoch.

How to run (by hand, not a test; about 4 minutes on the 2-core development machine)
    . .venv/bin/activate
    python bench/pretrain_memory.py --data-sources configs/shared-data.yaml
    python bench/pretrain_memory.py --data-sources configs/shared-data.yaml --key bandgap --epochs 2

It prints the numbers and writes ``bench/results/pretrain_memory.json`` with the command line and
the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, machine, save_report  # noqa: E402

from mattransfer.study.data import PreparedData, prepare_datasets
from mattransfer.study.layout import StudyDir
from mattransfer.study.spec import StudySpec
from mattransfer.study.tasks import Planner
from mattransfer.study.worker import run_task
from mattransfer.training.trainer import TrainingOptions

REQUESTED = 100_000  # Part 2's largest size: the whole pool


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` of its memory map.

    Not ``getrusage``'s ``ru_maxrss``: Linux carries that over from the parent through fork + exec,
    so a spawned worker would report the main process's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def worker(spec: StudySpec, data: dict[str, PreparedData], study_dir: Path, key: str, threads: int) -> dict:
    """Run the pre-training task in this (fresh) process; return its result and this process's peak RSS."""
    import torch

    torch.set_num_threads(threads)
    task = Planner(spec, data).pretrain(key, REQUESTED, seed=0)
    start = time.perf_counter()
    status = run_task(task, spec, data, study_dir)
    wall = time.perf_counter() - start
    study = StudyDir(study_dir)
    result = study.result(task.hash) if status == "done" else study.error(task.hash)
    return {"status": status, "task": task.describe(), "notes": sorted(task.notes), "wall_s": wall,
            "result": result, "worker_peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-sources", type=Path, required=True, help="data-sources YAML")
    parser.add_argument("--key", default="eform", choices=["eform", "bandgap"])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    training = TrainingOptions(max_epochs=args.epochs, patience=args.epochs + 1)
    # Two keys as a study needs; eform and bandgap share one file (read once) and one graph file.
    spec = StudySpec(datasets=["eform", "bandgap"], data_sources=args.data_sources, seeds=[0], pretrain=training,
                     part1={"enabled": False}, part2={"enabled": False}, part3={"enabled": False},
                     part4={"enabled": False})
    with tempfile.TemporaryDirectory() as tmp:
        study_dir = Path(tmp) / "study"
        start = time.perf_counter()
        data = prepare_datasets(spec, StudyDir(study_dir), set(), progress=False)
        prepare_s = time.perf_counter() - start
        main_after_prepare = peak_rss_mb()
        # A fresh process, as a study worker is: its peak is the training's alone.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            run = pool.submit(worker, spec, data, study_dir, args.key, args.threads).result()
    result = run["result"]
    if run["status"] != "done":
        raise SystemExit(f"the task failed: {result}")
    report = {
        "command": command_line(),
        "measured": "peak RSS (VmHWM) of the study worker running a Part 2 pre-training on"
                    " the whole pool, and of the main process that prepared the data",
        "task": run["task"], "cap": run["notes"], "epochs": result["epochs_run"],
        "n_train": result["n_train"], "n_val": result["n_val"], "n_test": result["n_test"],
        "worker_peak_rss_mb": run["worker_peak_rss_mb"], "main_peak_rss_mb": main_after_prepare,
        "prepare_s": prepare_s, "worker_wall_s": run["wall_s"], "fit_s": result["fit_seconds"],
        "fit_s_per_epoch": result["fit_seconds"] / result["epochs_run"],
        "test_mae_after_epochs": result["test"]["mae"], "unit": result["unit"],
        "machine": machine(),
    }
    print(f"{run['task']} ({', '.join(run['notes'])}): {result['n_train']}/{result['n_val']}/{result['n_test']}"
          f" train/val/test, {result['epochs_run']} epochs")
    print(f"worker peak RSS {report['worker_peak_rss_mb']:.0f} MB; main process peak RSS"
          f" {main_after_prepare:.0f} MB (data preparation {prepare_s:.0f} s)")
    print(f"worker wall {run['wall_s']:.0f} s, fit {result['fit_seconds']:.0f} s"
          f" ({report['fit_s_per_epoch']:.0f} s/epoch)")
    print(f"wrote {save_report('pretrain_memory', report)}")


if __name__ == "__main__":
    main()
