"""What each part of `hurdle_hist_gb` buys, on the Matbench folds' *validation* splits (never their test ids;
the split of `bench/matbench_validation.py`): the model as it was (a HistGB classifier, lr 0.05, and an
absolute-error regressor of the rows above the minimum), then, one at a time, the mixture's median (quantile
regressors), the source predictions as a linear offset (Δ-learning) and the regularised classifier — the
last row is today's `hurdle_hist_gb`.

    python bench/hurdle_variants.py matbench_expt_gap --data-sources configs/shared-data.yaml \\
        --source-features A0,A1,A2 M0,M1,M2 >> docs/results/matbench/validation_expt_gap_hurdle.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline

from matbench_validation import validation_data  # bench/, beside this file
from mattransfer.training.baselines import QUANTILES, SOURCE_PREFIX, HurdleRegressor, make_model


def variants(seed: int, sources: list[int]) -> dict[str, object]:
    """The ablation's models, each adding one part to the one before."""
    old_classifier = HistGradientBoostingClassifier(max_iter=500, learning_rate=0.05, random_state=seed)
    regressor = HistGradientBoostingRegressor(max_iter=1000, learning_rate=0.05, random_state=seed)
    imputer = SimpleImputer(strategy="median", keep_empty_features=True)
    models = {
        "before (median of the rows above)": HurdleRegressor(old_classifier, regressor, quantiles=(0.5,)),
        "+ mixture median": HurdleRegressor(old_classifier, regressor, QUANTILES),
    }
    if sources:
        models["+ source offset"] = HurdleRegressor(old_classifier, regressor, QUANTILES, offset_columns=sources)
    models = {name: make_pipeline(imputer, model) for name, model in models.items()}
    models["+ regularised classifier (today)"] = make_model("hurdle_hist_gb", seed, offset_columns=sources)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    parser.add_argument("--source-features", nargs="*", default=[], help="as `matbench --source-features`")
    parser.add_argument("--data-sources", type=Path, required=True)
    args = parser.parse_args()
    task, table, features, y, folds = validation_data(args.task, args.data_sources, args.source_features)
    sources = [k for k, column in enumerate(features.columns) if str(column).startswith(SOURCE_PREFIX)]
    X = features.to_numpy()
    maes: dict[str, list[float]] = {}
    for fold, (fit_rows, val_rows) in enumerate(folds):
        for name, model in variants(fold, sources).items():
            predicted = model.fit(X[fit_rows], y[fit_rows]).predict(X[val_rows])
            maes.setdefault(name, []).append(float(np.abs(predicted - y[val_rows]).mean()))
    print(f"## {task.name}: validation MAE ({table.unit}) of hurdle variants, test ids unused\n")
    print(f"Features: {features.shape[1]}; sources: {', '.join(args.source_features) or 'none'}\n")
    print("| model | " + " | ".join(f"fold {k}" for k in range(len(folds))) + " | mean ± std |")
    print("|---|" + "---|" * (len(folds) + 1))
    for name, values in maes.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {np.mean(values):.4f} ± {np.std(values):.3f} |")
    print()


if __name__ == "__main__":
    main()
