"""Models that fine-tune nothing: scikit-learn trees on hand-made features, optionally with frozen source
models' predictions as extra features (transfer through features), and kernel ridge on a frozen encoder's
pooled embeddings.

They train on the same labelled samples a fine-tune of (dataset, n, seed) draws — its train *and*
val ids, since these models need no early stopping (kernel ridge picks α and γ by cross-validation
on those rows alone) and the fine-tune's labelling budget is all n — and are scored on the dataset's
fixed test set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import ExtraTreesRegressor, HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.kernel_ridge import KernelRidge
from sklearn.linear_model import HuberRegressor
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mattransfer.data.splits import Split, assert_disjoint, make_split
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError
from mattransfer.featurizers import table_features
from mattransfer.fileio import write_json
from mattransfer.graphs.inputs import row_keys
from mattransfer.models.model import TransferModel, load_source
from mattransfer.provenance import provenance
from mattransfer.training.job import check_test_overlap, featurize
from mattransfer.training.latents import cached_latents
from mattransfer.training.metrics import regression_metrics

MODELS = ("extra_trees", "hist_gb", "hist_gb_l1", "hurdle_hist_gb")  # on matminer features
EMBEDDING_MODELS = ("krr",)  # on a frozen encoder's embeddings
# RBF kernel ridge on standardised features and target: α and γ by 5-fold CV (MAE) on the training rows.
# γ spans 1/d-like scales of 64-256-dimensional embeddings (bench/pooling_krr.py's grid, widened: it picked its edge).
KRR_GRID = {"alpha": [1e-3, 1e-2, 1e-1, 1.0], "gamma": [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]}


SOURCE_PREFIX = "source|"  # the columns of source models' predictions among a baseline's features
MIN_AT_FLOOR = 0.1  # the hurdle model needs this share of training targets at their minimum
QUANTILES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)  # the hurdle regressors' levels (bench/hurdle_variants.py)


class HurdleRegressor(RegressorMixin, BaseEstimator):
    """A two-part model for targets with many rows at their minimum (band gaps: metals at 0 eV): a classifier
    of "above the minimum" and quantile regressors fitted on the rows above it. It predicts the median of the
    mixture they make, what minimises the expected absolute error: the minimum where the classifier puts the
    row there with probability ≥ 0.5, else the level (p − 0.5) / p of the regressors' distribution, p the
    probability above (interpolated between the fitted ``quantiles``; at p = 1 their lowest).

    ``offset_columns``: features that already estimate the target (a DFT model's band gap, for a measured
    one). A robust linear fit of them on the rows above the minimum is the regressors' offset, and the trees
    learn what it misses (Δ-learning), rather than cutting a near-linear relation into steps."""

    def __init__(self, classifier: Any, regressor: Any, quantiles: Sequence[float] = QUANTILES,
                 offset_columns: Sequence[int] = ()) -> None:
        self.classifier = classifier
        self.regressor = regressor
        self.quantiles = quantiles
        self.offset_columns = offset_columns

    def fit(self, X: np.ndarray, y: np.ndarray) -> HurdleRegressor:
        y = np.asarray(y, dtype=float)
        self.floor_ = float(y.min())
        above = y > self.floor_
        if (~above).mean() < MIN_AT_FLOOR or above.sum() < 2:
            raise ConfigError(f"hurdle model: {int((~above).sum())} of {len(y)} training targets sit at their minimum"
                              f" {self.floor_:g}; it is for targets with at least {MIN_AT_FLOOR:.0%} of the rows at one"
                              " lowest value (band gaps of metals): use hist_gb_l1.")
        self.classifier_ = clone(self.classifier).fit(X, above)
        columns = list(self.offset_columns)
        self.offset_ = HuberRegressor(max_iter=1000).fit(X[above][:, columns], y[above]) if columns else None
        residual = y[above] - self._offset(X[above])
        self.regressors_ = [clone(self.regressor).set_params(loss="quantile", quantile=q).fit(X[above], residual)
                            for q in self.quantiles]
        return self

    def _offset(self, X: np.ndarray) -> np.ndarray:
        return self.offset_.predict(X[:, list(self.offset_columns)]) if self.offset_ is not None else np.zeros(len(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        p_above = self.classifier_.predict_proba(X)[:, list(self.classifier_.classes_).index(True)]
        # Sorted per row, so the levels never cross.
        levels = np.sort(np.column_stack([r.predict(X) for r in self.regressors_]), axis=1)
        quantiles = np.asarray(self.quantiles, dtype=float)
        wanted = np.clip((p_above - 0.5) / np.maximum(p_above, 1e-12), quantiles[0], quantiles[-1])
        value = np.array([np.interp(w, quantiles, row) for w, row in zip(wanted, levels)]) + self._offset(X)
        return np.where(p_above > 0.5, value, self.floor_)


def make_model(name: str, seed: int, n_train: int | None = None, offset_columns: Sequence[int] = ()):
    """An unfitted regressor; NaN features are imputed by the training rows' median (no test rows).

    ``n_train`` caps kernel ridge's CV folds for tiny subsets (at least 2 rows per fold); ``offset_columns``
    (the hurdle model only): the columns of source models' predictions, its regressors' linear offset."""
    if name == "extra_trees":
        model = ExtraTreesRegressor(n_estimators=500, random_state=seed, n_jobs=1)
    elif name == "hist_gb":
        model = HistGradientBoostingRegressor(random_state=seed)
    elif name == "hist_gb_l1":
        # Absolute-error loss: the metric is MAE, and on heavy-tailed targets (dielectric's refractive index)
        # squared error chases the few extreme rows.
        model = HistGradientBoostingRegressor(loss="absolute_error", random_state=seed)
    elif name == "hurdle_hist_gb":
        # Smaller steps, more of them than hist_gb's defaults (lr 0.1, 100): each part sees part of the rows. The
        # classifier is regularised (L2, half the features per split): its errors cost the most (a metal called
        # a semiconductor, or the reverse, is off by the whole gap), chosen on validation splits.
        model = HurdleRegressor(
            HistGradientBoostingClassifier(max_iter=1000, learning_rate=0.02, l2_regularization=1.0,
                                           max_features=0.5, random_state=seed),
            HistGradientBoostingRegressor(max_iter=1000, learning_rate=0.05, random_state=seed),
            offset_columns=offset_columns)
    elif name == "krr":
        folds = KFold(max(2, min(5, (n_train or 10) // 2)), shuffle=True, random_state=seed)
        search = GridSearchCV(KernelRidge(kernel="rbf"), KRR_GRID, cv=folds, scoring="neg_mean_absolute_error")
        model = make_pipeline(StandardScaler(), TransformedTargetRegressor(search, transformer=StandardScaler()))
    else:
        raise ValueError(f"unknown baseline model {name!r}; known: {', '.join(MODELS + EMBEDDING_MODELS)}")
    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), model)


def fit_predict(features: pd.DataFrame, y: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                model: str, seed: int) -> tuple[np.ndarray, float]:
    """Fit ``model`` on ``train_rows`` of the features; its predictions on ``test_rows`` and the seconds taken."""
    if model == "hist_gb_l1" and np.median(y[train_rows]) == np.min(y[train_rows]):
        # Measured: from scikit-learn's start at the median, the absolute-error trees then never leave it.
        raise ConfigError(f"hist_gb_l1: {np.mean(y[train_rows] == np.min(y[train_rows])):.0%} of the training targets"
                          f" sit at their minimum {np.min(y[train_rows]):g}, and an absolute-error HistGB then"
                          " predicts that value for every row; use hurdle_hist_gb.")
    start = time.perf_counter()
    sources = [k for k, column in enumerate(features.columns) if str(column).startswith(SOURCE_PREFIX)]
    regressor = make_model(model, seed, len(train_rows), sources).fit(features.iloc[train_rows].to_numpy(), y[train_rows])
    predicted = regressor.predict(features.iloc[test_rows].to_numpy())
    return predicted, time.perf_counter() - start


def fit_and_score(features: pd.DataFrame, y: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                  model: str, seed: int) -> dict:
    """Fit ``model`` on ``train_rows`` of the features, score it on ``test_rows``: metrics and fit time."""
    predicted, seconds = fit_predict(features, y, train_rows, test_rows, model, seed)
    return {**regression_metrics(y[test_rows], predicted), "fit_s": seconds}


def run_split(features: pd.DataFrame, table: PropertyTable, split: Split, model: str, seed: int,
              run_dir: Path, featurized: dict[str, Any], sources: Sequence[TransferModel] = ()) -> dict[str, Any]:
    """A run directory as `training.run.run` writes one, for a baseline: ``model`` fitted on the split's train
    and val ids (trees need no early stopping), tested on its test ids. ``features``: one row per row of
    ``table``; ``featurized``: how they were made (sets, seconds, cached), recorded in the metrics;
    ``sources``: the models whose predictions are among the features (`source_predictions`).

    Writes ``split.json``, ``test_predictions.csv`` and, last, ``metrics.json`` (the run's result schema;
    no epochs); returns the metrics.
    """
    start = time.perf_counter()
    train_ids = _training_ids(split)
    assert_disjoint(train_ids, [], split.test)  # a test id in training raises LeakError
    for source in sources:  # a source trained on a test row would leak it through its prediction
        check_test_overlap(source, table, split, allow=False)
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
                  progress: bool = True, encoder: str | Path | None = None,
                  source_features: Sequence[str] = ()) -> tuple[pd.DataFrame, dict]:
    """One row per (model, seed): test metrics of each model trained on the fine-tune subset of (n, seed).

    Trees read matminer features (`featurizers.table_features`) and the predictions of the frozen
    ``source_features`` models (`source_predictions`; none may have trained on a test row); ``krr`` reads the
    pooled embeddings of the frozen ``encoder`` (a checkpoint or a package's pre-trained model by name, e.g.
    ``chgnet:0.3.0``), from the latent cache. Returns the rows and featurization stats (sets, rows, seconds,
    whether read from the cache). Only the rows some split uses are featurized, once for all seeds.
    """
    unknown = [m for m in models if m not in MODELS + EMBEDDING_MODELS]
    if unknown:
        raise ValueError(f"unknown baseline models {unknown}; known: {', '.join(MODELS + EMBEDDING_MODELS)}")
    if encoder is None and any(m in EMBEDDING_MODELS for m in models):
        raise ConfigError(f"{', '.join(EMBEDDING_MODELS)} needs an encoder: a checkpoint or a pre-trained name"
                          " (e.g. cgcnn-mp:formation-energy, chgnet:0.3.0)")
    source = load_source(encoder) if encoder is not None else None  # a bad name fails before any featurizing
    splits = {seed: make_split(table.ids, n, seed, dataset=table.name) for seed in seeds}
    used = sorted({i for split in splits.values() for i in (*split.train, *split.val, *split.test)})
    rows = table.subset(used)  # table order, so the cache key does not depend on seeds' set order
    inputs: dict[str, pd.DataFrame] = {}
    stats = {"rows": len(rows), "seconds": 0.0, "cached": True}
    sources: list[TransferModel] = []
    if any(m in MODELS for m in models):
        features, made = table_features(rows, progress)
        predictions, sources = source_predictions(source_features, rows, progress)
        inputs["matminer"] = pd.concat([features, predictions], axis=1)
        stats.update(made, source_features=list(source_features))
    if source is not None:
        start = time.perf_counter()
        inputs[str(encoder)] = pd.DataFrame(frozen_embeddings(source, rows, progress))
        stats["embedding_seconds"] = time.perf_counter() - start
    y = pd.Series(rows.y, index=rows.ids)
    records = []
    for seed, split in splits.items():
        for source in sources:  # a source trained on a test row would leak it through its prediction
            check_test_overlap(source, rows, split, allow=False)
        for model in models:
            name = "matminer" if model in MODELS else str(encoder)
            scores = score_split(inputs[name].set_axis(rows.ids), y, split, model, seed)
            records.append({"dataset": table.name, "target": table.target, "unit": table.unit, "model": model,
                            "features": name, "n": n, "seed": seed, "n_train": scores.pop("n_train"),
                            "n_test": scores.pop("n"), "n_features": inputs[name].shape[1], **scores})
    return pd.DataFrame(records), stats


def source_predictions(sources: Sequence[str | Path], table: PropertyTable,
                       progress: bool = False) -> tuple[pd.DataFrame, list[TransferModel]]:
    """Each frozen source model's prediction for every row of ``table`` — in its own target's unit, the head's
    value unclipped — as a column ``source|<name>``, and the models (for `check_test_overlap`): transfer through
    features, e.g. what a model of 100k DFT band gaps says of each composition, for a tree model of measured ones.

    A source may be a seed ensemble, its members joined by commas (``A0,A1,A2``): their mean prediction is one
    column, with less of one pre-training run's noise (measured: bench/hurdle_variants.py)."""
    ensembles = [[load_source(member) for member in str(source).split(",")] for source in sources]  # fail early
    for source, members in zip(sources, ensembles):
        targets = {(model.target.get("name"), model.target.get("unit")) for model in members}
        if len(targets) > 1:  # a mean of, say, band gaps and formation energies means nothing
            raise ConfigError(f"--source-features {source}: a seed ensemble's members must predict one target;"
                              f" these predict {', '.join(sorted(f'{n} ({u})' for n, u in targets))}")
    columns = {f"{SOURCE_PREFIX}{source}": np.mean([
        head_predictions(model, torch.from_numpy(frozen_embeddings(model.eval(), table, progress)).float())
        for model in members], axis=0) for source, members in zip(sources, ensembles)}
    return pd.DataFrame(columns), [model for members in ensembles for model in members]


def head_predictions(model: TransferModel, latent: torch.Tensor) -> np.ndarray:
    """A frozen model's predictions from its encoder's vectors, in its own target's unit: the head's value,
    unclipped (a feature, not an answer)."""
    with torch.no_grad():
        return model.eval().predict_latent(latent, clip=False).cpu().numpy().ravel()


def score_split(features: pd.DataFrame, y: pd.Series, split: Split, model: str, seed: int) -> dict:
    """Fit ``model`` on the split's train + val ids and score it on its test ids (``features`` and ``y``
    indexed by id): metrics, ``n_train`` and fit time. A test id among the training ids raises LeakError."""
    train_ids = _training_ids(split)
    assert_disjoint(train_ids, [], split.test)
    missing = sorted(set(train_ids + list(split.test)) - set(features.index))[:5]
    if missing:
        raise KeyError(f"ids without features: {missing}")
    train_rows, test_rows = features.index.get_indexer(train_ids), features.index.get_indexer(split.test)
    scores = fit_and_score(features, y.reindex(features.index).to_numpy(), train_rows, test_rows, model, seed)
    return {**scores, "n_train": len(train_rows)}


def frozen_embeddings(model: TransferModel, table: PropertyTable, progress: bool = False) -> np.ndarray:
    """The frozen encoder's pooled vector of every row of ``table`` (n, d), through the latent cache."""
    inputs = featurize(model, table, progress=progress)
    return cached_latents(model, row_keys(table, model.encoder.featurizer()), inputs).detach().double().cpu().numpy()


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
