"""Two runs of the same study spec (two study directories), task by task: for the tasks both finished (same
hash: the same job), the summed wall seconds per method in each, and how many gave the same epochs and the
same test MAE. Separates a change's effect on some tasks from a machine that was slower in one of the runs.

    python bench/compare_study_tasks.py BEFORE_STUDY AFTER_STUDY --out bench/results/part1_tasks_before_after.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def results(study: Path) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in study.glob("tasks/*/result.json")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    before, after = results(args.before), results(args.after)
    rows: dict[str, dict] = defaultdict(lambda: {"tasks": 0, "before_s": 0.0, "after_s": 0.0, "same_epochs": 0,
                                                 "same_test_mae": 0})
    for task in sorted(before.keys() & after.keys()):
        b, a = before[task], after[task]
        row = rows[b.get("method") or "pretrain"]
        row["tasks"] += 1
        row["before_s"] += b["wall_seconds"]
        row["after_s"] += a["wall_seconds"]
        row["same_epochs"] += b.get("epochs_run") == a.get("epochs_run")
        row["same_test_mae"] += b["test"]["mae"] == a["test"]["mae"]
    for row in rows.values():
        row.update(before_s=round(row["before_s"], 1), after_s=round(row["after_s"], 1),
                   ratio=round(row["before_s"] / row["after_s"], 2))
    report = {"command": f"python bench/compare_study_tasks.py {args.before} {args.after}",
              "tasks_before": len(before), "tasks_after": len(after), "common": len(before.keys() & after.keys()),
              "by_method": dict(rows)}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
