"""Feature-based baselines that are not transfer learning: scikit-learn trees on hand-made features.

They train on the same labelled samples a fine-tune of (dataset, n, seed) draws — its train *and*
val ids, since trees need no early stopping and the fine-tune's labelling budget is all n — and are
scored on the dataset's fixed test set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline

from mattransfer.data.splits import Split, assert_disjoint, make_split
from mattransfer.data.table import PropertyTable
from mattransfer.featurizers import FEATURE_SETS, cached_features, features_path
from mattransfer.fileio import write_json
from mattransfer.provenance import provenance
from mattransfer.training.metrics import regression_metrics

MODELS = ("extra_trees", "hist_gb", "hist_gb_l1")


def make_model(name: str, seed: int):
    """An unfitted regressor; NaN features are imputed by the training rows' median (no test rows)."""
    if name == "extra_trees":
        model = ExtraTreesRegressor(n_estimators=500, random_state=seed, n_jobs=1)
    elif name == "hist_gb":
        model = HistGradientBoostingRegressor(random_state=seed)
    elif name == "hist_gb_l1":
        # Absolute-error loss: the metric is MAE, and on heavy-tailed targets (dielectric's refractive index)
        # squared error chases the few extreme rows.
        model = HistGradientBoostingRegressor(loss="absolute_error", random_state=seed)
    else:
        raise ValueError(f"unknown baseline model {name!r}; known: {', '.join(MODELS)}")
    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), model)


def fit_predict(features: pd.DataFrame, y: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                model: str, seed: int) -> tuple[np.ndarray, float]:
    """Fit ``model`` on ``train_rows`` of the features; its predictions on ``test_rows`` and the seconds taken."""
    start = time.perf_counter()
    regressor = make_model(model, seed).fit(features.iloc[train_rows].to_numpy(), y[train_rows])
    predicted = regressor.predict(features.iloc[test_rows].to_numpy())
    return predicted, time.perf_counter() - start


def fit_and_score(features: pd.DataFrame, y: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                  model: str, seed: int) -> dict:
    """Fit ``model`` on ``train_rows`` of the features, score it on ``test_rows``: metrics and fit time."""
    predicted, seconds = fit_predict(features, y, train_rows, test_rows, model, seed)
    return {**regression_metrics(y[test_rows], predicted), "fit_s": seconds}


def run_split(features: pd.DataFrame, table: PropertyTable, split: Split, model: str, seed: int,
              run_dir: Path, featurized: dict[str, Any]) -> dict[str, Any]:
    """A run directory as `training.run.run` writes one, for a baseline: ``model`` fitted on the split's train
    and val ids (trees need no early stopping), tested on its test ids. ``features``: one row per row of
    ``table``; ``featurized``: how they were made (sets, seconds, cached), recorded in the metrics.

    Writes ``split.json``, ``test_predictions.csv`` and, last, ``metrics.json`` (the run's result schema;
    no epochs); returns the metrics.
    """
    start = time.perf_counter()
    train_ids = _training_ids(split)
    assert_disjoint(train_ids, [], split.test)  # a test id in training raises LeakError
    position = {row_id: k for k, row_id in enumerate(table.ids)}
    train_rows = np.array([position[i] for i in train_ids])
    test_rows = np.array([position[i] for i in split.test])
    predicted, seconds = fit_predict(features, table.y, train_rows, test_rows, model, seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    split.to_json(run_dir / "split.json")
    pd.DataFrame({"id": split.test, "y_true": table.y[test_rows], "y_pred": predicted}
                 ).to_csv(run_dir / "test_predictions.csv", index=False)
    test = regression_metrics(table.y[test_rows], predicted)
    summary = {
        "description": f"{model} {table.name}", "dataset": table.name, "target": table.target, "unit": table.unit,
        "method": model, "seed": seed, "n_train": len(train_rows), "n_val": 0, "n_test": len(test_rows),
        "n_features": features.shape[1], "features": featurized, "best_epoch": None, "epochs_run": None,
        "fit_seconds": seconds, "wall_seconds": time.perf_counter() - start, "test": test, **provenance(),
    }
    write_json(run_dir / "metrics.json", summary)
    return summary


def run_baselines(table: PropertyTable, n: int, seeds: Sequence[int], models: Sequence[str] = MODELS,
                  sets: Sequence[str] = FEATURE_SETS, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """One row per (model, seed): test metrics of each model trained on the fine-tune subset of (n, seed).

    Returns the rows and featurization stats (structures, seconds, whether read from the cache). Only the rows
    some split uses are featurized, once for all seeds.
    """
    splits = {seed: make_split(table.ids, n, seed, dataset=table.name) for seed in seeds}
    used = sorted({i for split in splits.values() for i in (*split.train, *split.val, *split.test)})
    rows = table.subset(used)  # table order, so the cache key does not depend on seeds' set order
    cached = features_path(rows.structures, sets).exists()
    start = time.perf_counter()
    features = cached_features(rows.structures, sets, progress, table.name)
    feature_s = time.perf_counter() - start
    position = {row_id: k for k, row_id in enumerate(rows.ids)}
    records = []
    for seed, split in splits.items():
        train_ids = _training_ids(split)
        assert_disjoint(train_ids, [], split.test)  # a test id in training raises LeakError
        train_rows = np.array([position[i] for i in train_ids])
        test_rows = np.array([position[i] for i in split.test])
        for model in models:
            scores = fit_and_score(features, rows.y, train_rows, test_rows, model, seed)
            records.append({"dataset": table.name, "target": table.target, "unit": table.unit, "model": model,
                            "n": n, "seed": seed, "n_train": len(train_rows), "n_test": scores.pop("n"),
                            "n_features": features.shape[1], **scores})
    return pd.DataFrame(records), {"structures": len(rows), "seconds": feature_s, "cached": cached}


def _training_ids(split: Split) -> list[str]:
    # Train + val: the same n labels the fine-tune sees (it spends val on early stopping, trees need none).
    return [*split.train, *split.val]


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Per model: test MAE mean and std over seeds, n_test, seeds and total fit time."""
    grouped = results.groupby("model", sort=False)
    return pd.DataFrame({
        "mae_mean": grouped["mae"].mean(), "mae_std": grouped["mae"].std(ddof=1).fillna(0.0),
        "n_test": grouped["n_test"].first(), "seeds": grouped["seed"].count(), "fit_s": grouped["fit_s"].sum(),
    }).reset_index()
