"""Compare feature baselines on the Matbench folds' *validation* splits, never their test ids: on each
fold, a seeded 10 % of its train ids (the split `mattransfer matbench` gives a network, seed = fold) is
held out, the models of `training.baselines` fit on the rest and are scored there. Used to choose a
baseline's settings — its model, and which frozen source models' predictions join its features — without
looking at the test folds.

    python bench/matbench_validation.py matbench_dielectric --models hist_gb hist_gb_l1 \\
        --data-sources configs/shared-data.yaml > docs/results/matbench/validation_dielectric.md
    python bench/matbench_validation.py matbench_expt_gap --models hist_gb hurdle_hist_gb \\
        --source-features DFT_GAP.ckpt --data-sources configs/shared-data.yaml
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mattransfer.data.registry import DataSources
from mattransfer.featurizers import table_features
from mattransfer.matbench import fold_ids, fold_split, load_task, task_file, task_of
from mattransfer.training.baselines import MODELS, fit_and_score, source_predictions


def validation_data(task_name: str, data_sources: Path, sources: list[str]
                    ) -> tuple[Any, Any, pd.DataFrame, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The task, its features (with the ``sources``' predictions, as `matbench --source-features`), targets and,
    per fold, the rows to fit on and the validation rows (a seeded 10 % of the fold's train ids)."""
    task = task_of(task_name)
    _, table = load_task(task, task_file(task, DataSources.from_yaml(data_sources)))
    predictions, _ = source_predictions(sources, table)
    features = pd.concat([table_features(table, progress=False)[0], predictions], axis=1)
    position = {row_id: k for k, row_id in enumerate(table.ids)}
    folds = []
    for fold, (train_ids, test_ids) in enumerate(fold_ids(task.name)):
        split = fold_split(train_ids, test_ids, set(table.ids), 0.1, fold)
        folds.append((np.array([position[i] for i in split.train]), np.array([position[i] for i in split.val])))
    return task, table, features, np.asarray(table.y, dtype=float), folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--source-features", nargs="*", default=[], help="as `matbench --source-features`")
    parser.add_argument("--data-sources", type=Path, required=True)
    args = parser.parse_args()
    task, table, features, y, folds = validation_data(args.task, args.data_sources, args.source_features)
    maes: dict[str, list[float]] = {model: [] for model in args.models}
    print(f"# {task.name}: validation MAE ({table.unit}) of feature baselines, test ids unused\n")
    print(f"Features: {features.shape[1]} ({', '.join(args.source_features) or 'no source models'})\n")
    print("| fold | n fit | n val | " + " | ".join(args.models) + " |")
    print("|---|---|---|" + "---|" * len(args.models))
    for fold, (fit_rows, val_rows) in enumerate(folds):
        for model in args.models:
            maes[model].append(fit_and_score(features, y, fit_rows, val_rows, model, fold)["mae"])
        print(f"| {fold} | {len(fit_rows)} | {len(val_rows)} | "
              + " | ".join(f"{maes[m][-1]:.4g}" for m in args.models) + " |", flush=True)
    print("| mean ± std | | | " + " | ".join(f"{np.mean(v):.4g} ± {np.std(v):.2g}" for v in maes.values()) + " |")


if __name__ == "__main__":
    main()
