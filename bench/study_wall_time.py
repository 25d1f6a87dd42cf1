"""Wall time of a study's grid: Part 1 for one seed, and every other part, from a study directory.

What it measures
    A study records each task's wall seconds (``result.json``: loading its data, training, testing,
    writing) and each ``run_study`` call's elapsed wall time, worker count and the tasks it ran
    (``runs/*.json``). From those this script reports, per part and over the whole study:

    * tasks done, and the sum of their task seconds (the grid's cost on one worker), split by kind
      and method, and the slowest tasks;
    * the elapsed wall time of the runs, with what they ran; a study run in one go gives the grid's
      wall time directly; one resumed across runs (or code versions) is the sum of its runs;
    * ``--since ISO-TIME``: only tasks that finished after that time (to leave out tasks run by an
      earlier version of the code), with their sum divided by the workers as the ideal wall time.
    * ``--cost-model RUN``: an estimate, for a grid run partly by older code, of what every done task
      would take at the cost of the tasks that run ``RUN`` (index into ``runs/``, -1 the latest) ran:
      each task's epochs times the median seconds per epoch of that run's tasks of the same target,
      size and kind (graph training or ``heads``). Tasks without such a measurement keep their own
      time and are counted.

How to run (by hand, not a test; reads files only, seconds)
    . .venv/bin/activate
    python bench/study_wall_time.py studies/paper-seed0
    python bench/study_wall_time.py studies/paper-seed0 --since 2026-11-22T05:02:00
    python bench/study_wall_time.py studies/paper-seed0 --cost-model -1

It prints tables and writes ``bench/results/study_wall_time.json`` (or ``--out``) with the command line and machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from common import command_line, machine, save_report  # noqa: E402


def task_frame(root: Path) -> pd.DataFrame:
    """One row per (task, part) of the plan, with the task's wall seconds and finish time when done."""
    rows = []
    for task in json.loads((root / "plan.json").read_text()):
        path = root / "tasks" / task["hash"] / "result.json"
        done = path.exists()
        result = json.loads(path.read_text()) if done else {}
        finished = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc) if done else None
        for part in task["parts"]:
            rows.append({"part": part, "hash": task["hash"], "kind": task["kind"], "method": task["method"],
                         "cost_class": "heads" if task["method"] == "heads" else task["kind"],
                         "dataset": task["dataset"], "size": task["size"], "source": task["source"],
                         "done": done, "wall_s": result.get("wall_seconds"), "epochs": result.get("epochs_run"),
                         "finished": finished})
    return pd.DataFrame(rows)


def run_records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "runs").glob("*.json"))]


def summarise(frame: pd.DataFrame, workers: int) -> dict:
    done = frame[frame["done"]]
    by_method = done.groupby(["kind", "method"])["wall_s"].agg(["count", "sum", "median", "max"]).reset_index()
    return {
        "tasks": int(len(frame)), "done": int(len(done)), "task_seconds": float(done["wall_s"].sum()),
        "ideal_wall_seconds": float(done["wall_s"].sum()) / workers,
        "by_method": by_method.to_dict("records"),
        "slowest": done.nlargest(5, "wall_s")[["kind", "method", "source", "dataset", "size", "epochs", "wall_s"]]
        .to_dict("records"),
    }


def cost_model_estimate(frame: pd.DataFrame, ran: set[str]) -> pd.DataFrame:
    """``frame``'s done tasks with ``estimated_s``: epochs × the median s/epoch of the tasks in ``ran``
    with the same target, size and cost class; their own ``wall_s`` where none was measured."""
    done = frame[frame["done"]].copy()
    keys = ["dataset", "size", "cost_class"]
    measured = done[done["hash"].isin(ran)]
    per_epoch = (measured["wall_s"] / measured["epochs"]).groupby([measured[k] for k in keys]).median()
    modelled = pd.Series([per_epoch.get(tuple(row[k] for k in keys)) for _, row in done.iterrows()], index=done.index)
    done["modelled"] = modelled.notna()
    done["estimated_s"] = (modelled * done["epochs"]).where(done["modelled"], done["wall_s"])
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--since", help="ISO time: count only tasks that finished after it")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="for the ideal wall time")
    parser.add_argument("--cost-model", type=int, metavar="RUN", help="estimate every task at run RUN's costs")
    parser.add_argument("--out", type=Path, help="the JSON report (default bench/results/study_wall_time.json)")
    args = parser.parse_args()

    frame = task_frame(args.study_dir)
    if args.since:
        since = datetime.fromisoformat(args.since).replace(tzinfo=timezone.utc)
        frame = frame[~frame["done"] | (frame["finished"] > since)]
    parts = {int(p): summarise(frame[frame["part"] == p], args.workers) for p in sorted(frame["part"].unique())}
    whole = summarise(frame.drop_duplicates("hash"), args.workers)
    runs = run_records(args.study_dir)

    for name, s in [*((f"part {p}", s) for p, s in parts.items()), ("study", whole)]:
        print(f"{name:>7}: {s['done']}/{s['tasks']} done, task seconds {s['task_seconds']:,.0f}"
              f" -> {s['ideal_wall_seconds'] / 60:,.1f} min on {args.workers} workers (ideal)")
    print("\nby kind and method (study, each task once):")
    print(pd.DataFrame(whole["by_method"]).to_string(index=False))
    print("\nruns:")
    for run in runs:
        print(f"  {run['started']}: {run['elapsed_seconds'] / 60:.1f} min on {run['workers']} workers,"
              f" ran {run['ran_done']} done / {run['ran_failed']} failed; study {run['done']}/{run['tasks']}")

    estimate = {}
    if args.cost_model is not None:
        ran = set(runs[args.cost_model]["ran_tasks"])
        done = cost_model_estimate(frame, ran)
        print(f"\ncost model from the run of {runs[args.cost_model]['started']} ({len(ran)} tasks):")
        for p in sorted(done["part"].unique()):
            tasks = done[done["part"] == p]
            estimate[int(p)] = {"tasks": int(len(tasks)), "modelled": int(tasks["modelled"].sum()),
                                "estimated_task_seconds": float(tasks["estimated_s"].sum()),
                                "measured_task_seconds": float(tasks["wall_s"].sum()),
                                "estimated_ideal_wall_seconds": float(tasks["estimated_s"].sum()) / args.workers}
            e = estimate[int(p)]
            print(f"  part {p}: {e['tasks']} tasks ({e['modelled']} modelled), estimated task seconds"
                  f" {e['estimated_task_seconds']:,.0f} (measured {e['measured_task_seconds']:,.0f})"
                  f" -> {e['estimated_ideal_wall_seconds'] / 60:,.1f} min on {args.workers} workers (ideal)")

    report = {"command": command_line(), "study_dir": str(args.study_dir), "since": args.since,
              "workers": args.workers, "parts": parts, "study": whole, "runs": runs,
              "cost_model_run": args.cost_model, "cost_model_estimate": estimate, "machine": machine()}
    print(f"\nwrote {save_report('study_wall_time', report, args.out)}")


if __name__ == "__main__":
    main()
