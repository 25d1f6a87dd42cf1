"""How sure a transfer gain is: paired bootstrap over test structures, paired tests, FDR, broken baselines.

Every fine-tune of a study writes ``tasks/<hash>/test_predictions.csv`` (id, y_true, y_pred) on its
dataset's fixed test set, so a transfer run and the scratch run on the same subset and seed have
errors on the very same test structures. Resampling those structures with one index for every array
of a cell (``scipy.stats.bootstrap(paired=True)``) gives a confidence interval of the gain for every
cell, one seed included; it measures test-set noise with the trained models fixed. Seed-to-seed
noise is measured by the paired tests over seeds (``gain_cells``' t-test p; Wilcoxon from 6 seeds).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from mattransfer.study.layout import StudyDir

CONFIDENCE = 0.95
N_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # the same resamples on every report run: the printed CIs reproduce
WILCOXON_MIN_PAIRS = 6  # below 6 pairs the signed-rank test cannot reach p < 0.05 (two-sided)
# A scratch run whose test R² falls this far below the same target's scratch at the next smaller
# size (or below its other seeds at the same size) is treated as a failed baseline, not divided by.
R2_DROP = 0.3
CI_COLUMNS = ["n_test", "gain_low", "gain_high", "diff", "diff_low", "diff_high", "p_structures", "ci_over"]

Statistic = Callable[..., np.ndarray]


# --- predictions ------------------------------------------------------------------------------------------

def absolute_errors(study_dir: Path | None, task_hashes: list[str]) -> np.ndarray | None:
    """|y_pred − y_true| of each task on the test ids all of them share, shape (tasks, n_test).

    None when the study directory or any task's ``test_predictions.csv`` is absent (a bare results table).
    """
    if study_dir is None:
        return None
    study = StudyDir(study_dir)
    frames = []
    for task_hash in task_hashes:
        path = study.task_dir(str(task_hash)) / "test_predictions.csv"
        if not path.is_file():
            return None
        frame = pd.read_csv(path, dtype={"id": str}).set_index("id")
        frames.append((frame["y_pred"] - frame["y_true"]).abs())
    joined = pd.concat(frames, axis=1, join="inner")  # the fixed test set: the same ids in every task
    return joined.to_numpy(dtype=float).T if len(joined) else None


def has_predictions(study_dir: Path | None) -> bool:
    """Whether the study directory holds per-task predictions at all."""
    return study_dir is not None and any((Path(study_dir) / "tasks").glob("*/test_predictions.csv"))


# --- bootstrap --------------------------------------------------------------------------------------------

def _mean_gain(scratch: np.ndarray, transfer: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over seeds (axis 0) of (MAE_scratch − MAE_TL) / MAE_scratch, MAEs over ``axis``."""
    mae_scratch = scratch.mean(axis=axis)
    return ((mae_scratch - transfer.mean(axis=axis)) / mae_scratch).mean(axis=0)


def _gain_and_diff(scratch: np.ndarray, transfer: np.ndarray, axis: int = -1) -> np.ndarray:
    """``_mean_gain`` and the mean over seeds of MAE_scratch − MAE_TL (in the target's unit), stacked:
    one bootstrap serves both."""
    mae_scratch, mae_transfer = scratch.mean(axis=axis), transfer.mean(axis=axis)
    return np.stack([((mae_scratch - mae_transfer) / mae_scratch).mean(axis=0),
                     (mae_scratch - mae_transfer).mean(axis=0)])


def bootstrap_ci(arrays: list[np.ndarray], statistic: Statistic, *, confidence: float = CONFIDENCE,
                 n_resamples: int = N_RESAMPLES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Statistic and its percentile CI, resampling test structures (last axis) jointly across ``arrays``.

    Each array is (seeds, n_test) of absolute errors on the same test structures; ``statistic`` takes
    the arrays and ``axis`` and reduces the seed axis (axis 0) itself; it may return several values.
    """
    arrays = [np.atleast_2d(np.asarray(a, dtype=float)) for a in arrays]
    point = np.asarray(statistic(*arrays, axis=-1), dtype=float)
    if arrays[0].shape[-1] < 2:
        return point, np.full_like(point, np.nan), np.full_like(point, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)  # identical errors: CI [x, x]
        result = stats.bootstrap(arrays, statistic, paired=True, vectorized=True, axis=-1, method="percentile",
                                 confidence_level=confidence, n_resamples=n_resamples, batch=200,
                                 rng=np.random.default_rng(BOOTSTRAP_SEED))
    low, high = result.confidence_interval
    return point, np.asarray(low, dtype=float), np.asarray(high, dtype=float)


def paired_gain(scratch: np.ndarray, transfer: np.ndarray, **options) -> dict[str, float]:
    """Gain and MAE difference (scratch − TL) with their bootstrap CIs, and a paired t-test over test structures.

    ``scratch`` and ``transfer`` are absolute errors (seeds, n_test), row k of both from seed k.
    The t-test compares the seed-averaged errors per structure (the MAE difference is their mean difference).
    """
    scratch, transfer = np.atleast_2d(scratch), np.atleast_2d(transfer)
    (gain, diff), (gain_low, diff_low), (gain_high, diff_high) = bootstrap_ci([scratch, transfer], _gain_and_diff,
                                                                              **options)
    return {"n_test": scratch.shape[-1], "gain": float(gain), "gain_low": float(gain_low),
            "gain_high": float(gain_high), "diff": float(diff), "diff_low": float(diff_low),
            "diff_high": float(diff_high),
            "p_structures": _ttest(scratch.mean(axis=0), transfer.mean(axis=0))}


def _ttest(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.array_equal(a, b):
        return 1.0 if len(a) >= 2 else float("nan")  # no difference at all: nothing to reject
    return float(stats.ttest_rel(a, b).pvalue)


# --- per cell ---------------------------------------------------------------------------------------------

def cell_intervals(paired: pd.DataFrame, keys: list[str], study_dir: Path | None) -> pd.DataFrame:
    """Per cell of ``keys``: n_test, gain and MAE-difference CIs, p over test structures.

    ``paired`` is ``transfer_gain``'s output (``task_hash`` of the fine-tune, ``scratch_hash`` of its
    baseline). With predictions the CI is the paired bootstrap over test structures (``ci_over`` =
    "test structures"); without them and with ≥2 seeds, the t interval of the mean per-seed gain
    ("seeds"); else no CI ("none").
    """
    rows = []
    for key, cell in paired.groupby(keys, dropna=False, sort=False):
        cell = cell.sort_values("seed")
        scratch = absolute_errors(study_dir, list(cell["scratch_hash"]))
        transfer = absolute_errors(study_dir, list(cell["task_hash"]))
        if scratch is not None and transfer is not None and scratch.shape == transfer.shape:
            row = {**paired_gain(scratch, transfer), "ci_over": "test structures"}
        else:
            row = {**_seed_interval(cell["gain"]), "n_test": cell["n_test"].max()}
        rows.append({**dict(zip(keys, key if isinstance(key, tuple) else (key,))), **row})
    return pd.DataFrame(rows, columns=[*keys, *CI_COLUMNS])


def _seed_interval(gains: pd.Series) -> dict[str, float | str]:
    nan = float("nan")
    empty = {"gain_low": nan, "gain_high": nan, "diff": nan, "diff_low": nan, "diff_high": nan, "p_structures": nan}
    if len(gains) < 2 or not np.isfinite(gains.std()):
        return {**empty, "ci_over": "none"}
    low, high = stats.t.interval(CONFIDENCE, len(gains) - 1, loc=gains.mean(), scale=stats.sem(gains))
    if not np.isfinite(low):  # identical gains: no spread
        low = high = float(gains.mean())
    return {**empty, "gain_low": float(low), "gain_high": float(high), "ci_over": "seeds"}


def with_intervals(cells: pd.DataFrame, paired: pd.DataFrame, keys: list[str],
                   study_dir: Path | None) -> pd.DataFrame:
    """``gain_cells``' table with the CI columns, a Wilcoxon p over seeds (from 6 seeds), the call
    (helps / hurts / within noise / untested) and the Benjamini–Hochberg q-value of each method's cells."""
    if cells.empty:
        return cells.assign(**{c: pd.Series(dtype=float) for c in
                               [*CI_COLUMNS, "p_wilcoxon", "call", "p_cell", "q_value"] if c not in cells.columns})
    intervals = cell_intervals(paired, keys, study_dir)
    cells = cells.drop(columns="n_test", errors="ignore").merge(intervals, on=keys, how="left")
    cells["p_wilcoxon"] = _seed_wilcoxon(paired, keys).reindex(
        pd.MultiIndex.from_frame(cells[keys]) if len(keys) > 1 else cells[keys[0]]).to_numpy()
    cells["call"] = [call(low, high) for low, high in zip(cells["gain_low"], cells["gain_high"])]
    cells["p_cell"] = cells["p_structures"].where(cells["ci_over"] == "test structures", cells["p_value"])
    cells["q_value"] = np.nan
    for _, group in cells.groupby("method"):  # each method is its own family of comparisons
        cells.loc[group.index, "q_value"] = bh_q_values(group["p_cell"].to_numpy())
    return cells


def _seed_wilcoxon(paired: pd.DataFrame, keys: list[str]) -> pd.Series:
    def test(cell: pd.DataFrame) -> float:
        if len(cell) < WILCOXON_MIN_PAIRS or np.array_equal(cell["test_mae"], cell["scratch_mae"]):
            return float("nan")
        return float(stats.wilcoxon(cell["test_mae"], cell["scratch_mae"]).pvalue)
    if paired.empty:
        return pd.Series(dtype=float)
    return paired.groupby(keys, dropna=False)[["test_mae", "scratch_mae"]].apply(test)


def call(low: float, high: float) -> str:
    """A difference is called only when its CI excludes zero."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "untested"
    return "helps" if low > 0 else "hurts" if high < 0 else "within noise"


# --- multiple comparisons ---------------------------------------------------------------------------------

def bh_q_values(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (``scipy.stats.false_discovery_control``); NaN stays NaN
    and does not count as a test."""
    p = np.asarray(p_values, dtype=float)
    q = np.full_like(p, np.nan)
    tested = np.isfinite(p)
    if tested.any():
        q[tested] = stats.false_discovery_control(p[tested], method="bh")
    return q


def method_counts(cells: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Per method: cells, cells with a CI (tested), helps / hurts / within noise by CI, cells with a positive
    and a negative mean gain (uncalled point estimates), and helps / hurts that keep q < ``alpha`` after
    Benjamini–Hochberg over the method's tested cells."""
    rows = []
    for method, group in cells.groupby("method"):
        significant = group["q_value"] < alpha
        rows.append({
            "method": method, "cells": len(group), "tested": int((group["call"] != "untested").sum()),
            "helps": int((group["call"] == "helps").sum()), "hurts": int((group["call"] == "hurts").sum()),
            "within_noise": int((group["call"] == "within noise").sum()),
            "positive": int((group["gain_mean"] > 0).sum()), "negative": int((group["gain_mean"] < 0).sum()),
            "helps_fdr": int((significant & (group["gain_mean"] > 0)).sum()),
            "hurts_fdr": int((significant & (group["gain_mean"] < 0)).sum()),
            "fdr_tested": int(group["q_value"].notna().sum()),
        })
    return pd.DataFrame(rows, columns=["method", "cells", "tested", "helps", "hurts", "within_noise", "positive", "negative",
                                       "helps_fdr", "hurts_fdr", "fdr_tested"])


# --- baselines --------------------------------------------------------------------------------------------

def broken_baselines(results: pd.DataFrame, drop: float = R2_DROP) -> pd.DataFrame:
    """Scratch runs whose test R² is ``drop`` or more below the same target's scratch runs at the next
    smaller fine-tune size (median over seeds) or at the same size (median of the other seeds, ≥2).

    More data should not make a scratch model much worse, so such a run most likely failed to train;
    gains against it would be large for no reason. All parts' scratch runs are compared together.
    """
    scratch = results[(results["method"] == "scratch") & (results["status"] == "done")].drop_duplicates("task_hash")
    flagged = []
    for target, runs in scratch.groupby("target"):
        median = runs.groupby("finetune_size")["test_r2"].median()
        sizes = list(median.index)
        for run in runs.itertuples():
            smaller = [s for s in sizes if s < run.finetune_size]
            others = runs[(runs["finetune_size"] == run.finetune_size) & (runs["task_hash"] != run.task_hash)]
            references = {f"scratch at n = {smaller[-1]:,.0f}": median[smaller[-1]]} if smaller else {}
            if len(others) >= 2:
                references["its other seeds"] = others["test_r2"].median()
            for what, r2 in references.items():
                if run.test_r2 < r2 - drop:
                    flagged.append({"target": target, "finetune_size": run.finetune_size, "seed": run.seed,
                                    "test_r2": run.test_r2, "test_mae": run.test_mae, "unit": run.unit,
                                    "reference": what, "reference_r2": r2, "task_hash": run.task_hash})
                    break
    return pd.DataFrame(flagged, columns=["target", "finetune_size", "seed", "test_r2", "test_mae", "unit",
                                          "reference", "reference_r2", "task_hash"])


def usable(paired: pd.DataFrame, broken: pd.DataFrame) -> pd.DataFrame:
    """``transfer_gain`` rows without those paired with a flagged scratch baseline (``broken_baselines``)."""
    return paired[~paired["scratch_hash"].isin(broken["task_hash"])]


# --- data vs physics --------------------------------------------------------------------------------------

def gain_change(study_dir: Path | None, scratch: list[str], first: list[str], second: list[str],
                first_gains: pd.Series, second_gains: pd.Series) -> tuple[float, float, float, str]:
    """Gain of ``second`` minus gain of ``first`` (task hashes per seed, each against its scratch run
    ``scratch``), with the paired bootstrap CI over the shared test structures when predictions exist,
    else the t interval over seeds of the per-seed change. Returns (change, low, high, ci_over)."""
    errors = [absolute_errors(study_dir, hashes) for hashes in (scratch, first, second)]
    if all(e is not None for e in errors) and len({e.shape for e in errors}) == 1:
        def change(s: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
            return _mean_gain(s, b, axis) - _mean_gain(s, a, axis)
        point, low, high = bootstrap_ci(errors, change)
        return float(point), float(low), float(high), "test structures"
    per_seed = pd.Series(np.asarray(second_gains, float) - np.asarray(first_gains, float))
    interval = _seed_interval(per_seed)
    return float(per_seed.mean()), interval["gain_low"], interval["gain_high"], interval["ci_over"]


def paired_gain_change(paired: pd.DataFrame, column: str, first: object, second: object,
                       study_dir: Path | None) -> tuple[float, float, float, str]:
    """``gain_change`` of the rows of ``paired`` (one cell's seeds, ``transfer_gain`` columns) at
    ``column == second`` minus those at ``column == first``, on the seeds both have."""
    a = paired[paired[column] == first].set_index("seed")
    b = paired[paired[column] == second].set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    a, b = a.loc[seeds], b.loc[seeds]
    return gain_change(study_dir, list(a["scratch_hash"]), list(a["task_hash"]), list(b["task_hash"]),
                       a["gain"], b["gain"])
