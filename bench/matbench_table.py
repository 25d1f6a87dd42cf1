"""One Markdown table of the Matbench runs under docs/results/matbench/: task × model, mean ± std MAE over
the folds finished, wall times, and each task's leaderboard rows beside ours.

Each results directory is what ``mattransfer matbench … --out DIR`` wrote (``folds.json`` and the folds'
``metrics.json``); the model's name comes from its first fold's ``metrics.json`` and ``config.yaml``.
The std is the population std over folds, as ``results.md`` and the leaderboard give it.

    python bench/matbench_table.py docs/results/matbench/*/ > table.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from mattransfer.matbench import N_FOLDS, TASKS


def source_name(source: str) -> str:
    """A checkpoint by its run directory's name; a seed ensemble (``A,B,C``) by its first member's and size."""
    members = source.split(",")
    name = Path(members[0]).parent.name if members[0].endswith(".ckpt") else members[0]
    return name if len(members) == 1 else f"{name} (ensemble of {len(members)} seeds)"


def model_name(run_dir: Path) -> str:
    """extra_trees / hist_gb (features), CGCNN from scratch, or the fine-tune's method and source."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if metrics.get("features"):
        sources = [source_name(s) for s in metrics["features"].get("source_features", [])]
        return f"features{''.join(f' + {s} prediction' for s in sources)} → {metrics['method']}"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    base_seed = config["seed"] - int(run_dir.name.split("_")[1])  # fold K runs with the command's seed + K
    seed = f", seed {base_seed}" if base_seed else ""
    finetune = config.get("finetune")
    if finetune:
        train_last = (finetune.get("config") or {}).get("train_last")
        method = f"{finetune['method']}-{train_last}" if finetune["method"] == "freeze" and train_last else finetune["method"]
        return f"{finetune['read_from']} `{method}`{seed}"
    encoder = dict(config["model"]["encoder"])
    name = encoder.pop("name")
    return f"{name} (scratch; {', '.join(f'{k} {v}' for k, v in encoder.items() if not isinstance(v, (list, dict)))}{seed})"


def row(results: Path) -> tuple[str, str, str]:
    """(task, model, the rest of the table row) of one results directory."""
    folds = json.loads((results / "folds.json").read_text())
    first = results / f"fold_{folds[0]['fold']}"
    task = json.loads((first / "metrics.json").read_text())["dataset"]
    mae = np.array([f["mae"] for f in folds])
    wall = np.array([f["wall_seconds"] for f in folds])
    n = len(folds)
    label = f"{mae.mean():.4g} ± {mae.std():.2g}" if n > 1 else f"{mae[0]:.4g} (one fold)"
    if n < N_FOLDS:
        label += f" **partial: folds {', '.join(str(f['fold']) for f in folds)}**"
    return task, model_name(first), (f"{label} | {n} | {', '.join(f'{m:.4g}' for m in mae)} |"
                                     f" {wall.sum():.0f} ({wall.min():.0f}–{wall.max():.0f}) |"
                                     f" [{results.name}]({results.name}/results.md) |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="directories `mattransfer matbench --out` wrote")
    args = parser.parse_args()
    rows = sorted(row(r) for r in args.results if (r / "folds.json").exists())
    print("| task | model | MAE mean ± std | folds | MAE per fold | wall s: total (fold min–max) | results |")
    print("|---|---|---|---|---|---|---|")
    for task in dict.fromkeys(t for t, _, _ in rows):
        for _, model, rest in (r for r in rows if r[0] == task):
            print(f"| {task} | {model} | {rest}")
        for model, mae in TASKS[task].leaderboard:
            print(f"| {task} | *leaderboard: {model}* | *{mae:.4g}* | 5 | | | |")


if __name__ == "__main__":
    main()
