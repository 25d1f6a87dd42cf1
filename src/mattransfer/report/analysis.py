"""The numbers behind the report, from the study's tidy results table (one row per task).

Everything here is pandas in, pandas out: no plotting, no wording. Transfer gain of a fine-tune
is ``(MAE_scratch − MAE_TL) / MAE_scratch`` against the scratch model trained on the very same
subset (same target, fine-tune size and seed: ``study.results.transfer_gain`` pairs them); a cell's gain is
the mean over seeds. Sizes in the table are those used, after any cap (noted in ``cap_note``).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pandas as pd
from pandas.core.groupby import DataFrameGroupBy
from scipy import stats

from mattransfer.errors import DataError
from mattransfer.study.layout import StudyDir
from mattransfer.study.results import COLUMNS, results_table, write_results
from mattransfer.study.tasks import Plan

SCRATCH = "scratch"
OPTIONAL = ["test_same_structure", "test_same_formula"]  # absent from tables of older studies
PAIR = ["source", "target"]


def load_results(study_dir: Path) -> pd.DataFrame:
    """The results of a study directory, with the schema checked.

    In a study directory (``plan.json`` and ``tasks/``) the table is rebuilt from the task files (and
    rewritten), so a report never shows a stale table; else ``results.parquet`` (else ``results.csv``) is read.
    """
    study_dir = Path(study_dir)
    parquet, csv = study_dir / "results.parquet", study_dir / "results.csv"
    study = StudyDir(study_dir)
    if study.plan_file.is_file() and (study.root / "tasks").is_dir():
        frame = results_table(Plan.from_json(json.loads(study.plan_file.read_text())), study)
        write_results(frame, study)
    elif parquet.is_file():
        frame = pd.read_parquet(parquet)
    elif csv.is_file():
        frame = pd.read_csv(csv, dtype={"task_hash": str})  # a hash of digits only must stay text
    else:
        raise DataError(f"{study_dir}: no results.parquet or results.csv; run the study there first.")
    frame = frame.reindex(columns=[*frame.columns, *(c for c in OPTIONAL if c not in frame.columns)])
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{study_dir}: the results table lacks columns {missing}.")
    text = ["kind", "source", "target", "method", "unit", "status", "error", "cap_note"]
    # CSV and Parquet writers turn empty strings (scratch's source, no error) into NaN/None.
    return frame.assign(**{c: frame[c].fillna("").astype(str) for c in text})


def load_relatedness(study_dir: Path) -> pd.DataFrame | None:
    path = Path(study_dir) / "relatedness.csv"
    return pd.read_csv(path) if path.is_file() else None


def _plan(study_dir: Path) -> list[dict] | None:
    path = Path(study_dir) / "plan.json"
    return json.loads(path.read_text()) if path.is_file() else None


def planned_tasks(study_dir: Path) -> dict[int, int] | None:
    """Tasks planned per part, from the study's ``plan.json``; None without one (a bare results table)."""
    plan = _plan(study_dir)
    return None if plan is None else dict(Counter(part for task in plan for part in task["parts"]))


def transfers_without_result(study_dir: Path, results: pd.DataFrame, part: int) -> pd.DataFrame:
    """The part's planned transfer fine-tunes (with a source) that have no finished result yet: not run, or
    failed. Columns target, finetune_size, method, source and universal (a package's pre-trained model);
    empty without a ``plan.json``."""
    done = set(results.loc[results["status"] == "done", "task_hash"])
    return pd.DataFrame(
        [{"target": t["dataset"], "finetune_size": t["size"], "method": t["method"], "source": t["source"],
          "universal": t.get("pretrained") is not None}
         for t in _plan(study_dir) or []
         if part in t["parts"] and t["kind"] == "finetune" and t["source"] and t["hash"] not in done],
        columns=["target", "finetune_size", "method", "source", "universal"])


def test_in_source(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (source, target): of the target's test materials, how many the source's pre-training trained
    on (same structure; same reduced formula). The most over the cell's tasks (seeds, sizes, methods)."""
    transfer = rows[(rows["source"] != "") & (rows["status"] == "done")]
    return (transfer.groupby(PAIR)[["n_test", "test_same_structure", "test_same_formula"]].max()
            .dropna(subset=["test_same_structure"]).reset_index())


def task_status(results: pd.DataFrame, parts: list[int], planned: dict[int, int] | None = None) -> pd.DataFrame:
    """Planned, done, failed and not yet run task counts for every one of ``parts`` (their numbers).

    Without ``planned`` the tasks of a part are those with a row (done or failed).
    """
    counts = pd.crosstab(results["part"], results["status"]).reindex(index=parts, fill_value=0)
    counts = counts.reindex(columns=["done", "failed"], fill_value=0).rename_axis("part").reset_index()
    finished = counts["done"] + counts["failed"]
    tasks = counts["part"].map(planned or {}).fillna(0).astype(int).clip(lower=finished)
    return counts.assign(tasks=tasks, not_run=tasks - finished)[["part", "tasks", "done", "failed", "not_run"]]


def error_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Failed tasks grouped by part and the last line of their error (a traceback's names the exception)."""
    failed = results[results["status"] == "failed"]
    last_line = failed["error"].str.strip().str.split("\n").str[-1].str.slice(0, 200)
    return (failed.assign(error=last_line).groupby(["part", "error"]).size()
            .rename("tasks").reset_index().sort_values(["part", "tasks"], ascending=[True, False]))


def finetune_rows(results: pd.DataFrame, part: int) -> pd.DataFrame:
    """Finished fine-tunes of ``part``, its scratch baselines included (a shared task has a row in each part)."""
    return results[(results["part"] == part) & (results["status"] == "done") & (results["kind"] == "finetune")]


def zero_shot_stats(results: pd.DataFrame, part: int) -> pd.DataFrame:
    """Test MAE over seeds of ``part``'s finished zero-shot rows (a source's model as it is on a target) per
    (source, target), with the test set's size."""
    rows = results[(results["part"] == part) & (results["status"] == "done") & (results["kind"] == "zero-shot")]
    n_test = rows.groupby(["source", "target"], as_index=False)["n_test"].max()
    return mae_stats(rows, ["source", "target"]).merge(n_test, on=["source", "target"])


def paired_p_value(a: pd.Series, b: pd.Series) -> float:
    """Two-sided paired t-test over seeds; NaN with fewer than two pairs or no spread in the differences."""
    if len(a) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences → NaN, reported as such
        return float(stats.ttest_rel(a, b).pvalue)


def gain_cells(paired: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per cell: seeds, MAE of transfer and scratch, gain mean and std, paired t-test p (TL vs scratch)."""
    grouped = paired.groupby(keys, dropna=False)
    cells = grouped.agg(
        n_seeds=("test_mae", "size"), mae_mean=("test_mae", "mean"), mae_std=("test_mae", "std"),
        scratch_mean=("scratch_mae", "mean"), gain_mean=("gain", "mean"), gain_std=("gain", "std"),
        unit=("unit", "first"),
    )
    return cells.assign(p_value=_paired_p(grouped, "test_mae", "scratch_mae")).reset_index()


def _paired_p(grouped: DataFrameGroupBy, a: str, b: str) -> pd.Series:
    if grouped.ngroups == 0:  # apply on no groups returns a frame, not a Series
        return pd.Series(dtype=float)
    return grouped[[a, b]].apply(lambda g: paired_p_value(g[a], g[b]))


def mae_stats(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Test MAE mean and std over seeds per group (std NaN for one seed)."""
    grouped = rows.groupby(keys, dropna=False)
    return grouped.agg(mae_mean=("test_mae", "mean"), mae_std=("test_mae", "std"),
                       n_seeds=("seed", "nunique"), unit=("unit", "first")).reset_index()


def scratch_per_source(frame: pd.DataFrame) -> pd.DataFrame:
    """Scratch rows repeated for every source fine-tuned on their target, so each pair has its baseline."""
    transfer = frame[frame["method"] != SCRATCH]
    scratch = frame[frame["method"] == SCRATCH].drop(columns="source")
    pairs = transfer[PAIR].drop_duplicates()
    return pd.concat([transfer, scratch.merge(pairs, on="target")], ignore_index=True)


def pair_gains(cells: pd.DataFrame) -> pd.DataFrame:
    """Gain per (source, target, method), averaged over fine-tune sizes."""
    return cells.groupby([*PAIR, "method"], as_index=False)["gain_mean"].mean()


def best_sources(cells: pd.DataFrame) -> pd.DataFrame:
    """Per target and method, the source with the highest gain averaged over fine-tune sizes."""
    per_pair = pair_gains(cells)
    return per_pair.loc[per_pair.groupby(["target", "method"])["gain_mean"].idxmax()].reset_index(drop=True)


def negative_cells(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells where transfer is worse than scratch, worst first."""
    negative = cells[cells["gain_mean"] < 0]
    return negative.sort_values(["gain_mean", *PAIR, "method", "finetune_size"]).reset_index(drop=True)


def spearman(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    """Spearman's ρ and its p-value; NaN for fewer than 3 pairs or a constant input."""
    if len(a) < 3:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


def relatedness_test(cells: pd.DataFrame, relatedness: pd.DataFrame) -> pd.DataFrame:
    """Per method: Spearman rank correlation of pair gain (mean over sizes) with property relatedness."""
    joined = pair_gains(cells).merge(relatedness[[*PAIR, "relatedness"]], on=PAIR).dropna(subset=["relatedness"])
    rows = []
    for method, group in joined.groupby("method"):
        rho, p_value = spearman(group["gain_mean"], group["relatedness"])
        rows.append({"method": method, "n_pairs": len(group), "spearman_rho": rho, "p_value": p_value})
    return pd.DataFrame(rows, columns=["method", "n_pairs", "spearman_rho", "p_value"])


def scaling_growth(cells: pd.DataFrame) -> pd.DataFrame:
    """Per (source, target, method): gain at the smallest and the largest pre-training size."""
    ordered = cells.dropna(subset=["gain_mean"]).sort_values("pretrain_size")
    grouped = ordered.groupby([*PAIR, "method"])
    growth = grouped.agg(smallest=("pretrain_size", "first"), largest=("pretrain_size", "last"),
                         gain_smallest=("gain_mean", "first"), gain_largest=("gain_mean", "last")).reset_index()
    return growth.assign(growth=growth["gain_largest"] - growth["gain_smallest"])


def paired_difference(rows: pd.DataFrame, keys: list[str], column: str, baseline: object) -> pd.DataFrame:
    """MAE minus the same seed's MAE at ``column == baseline``, per group of ``keys`` and other value
    of ``column``: mean, std, number of seed pairs and paired t-test p."""
    on = [*keys, "seed"]
    base = (rows[rows[column] == baseline].groupby(on, as_index=False)["test_mae"].mean()
            .rename(columns={"test_mae": "baseline_mae"}))
    paired = rows[rows[column] != baseline].merge(base, on=on)
    paired = paired.assign(diff=paired["test_mae"] - paired["baseline_mae"])
    grouped = paired.groupby([*keys, column])
    diffs = grouped.agg(diff_mean=("diff", "mean"), diff_std=("diff", "std"), n_pairs=("diff", "size"))
    return diffs.assign(p_value=_paired_p(grouped, "test_mae", "baseline_mae")).reset_index()


def lambda_effect(rows: pd.DataFrame) -> pd.DataFrame:
    """Per fine-tune size and method: the λ with the lowest mean MAE, the MAE at λ = 0, and the
    paired difference best − plain (NaN where λ = 0 is itself the best)."""
    transfer = rows[rows["method"] != SCRATCH]
    keys = ["finetune_size", "method"]
    by_lambda = mae_stats(transfer, [*keys, "aux_lambda"])
    best = by_lambda.loc[by_lambda.groupby(keys)["mae_mean"].idxmin()]
    plain = by_lambda.loc[by_lambda["aux_lambda"] == 0, [*keys, "mae_mean"]].rename(columns={"mae_mean": "mae_plain"})
    diff = paired_difference(transfer, keys, "aux_lambda", 0.0)
    return best.merge(plain, on=keys, how="left").merge(diff, on=[*keys, "aux_lambda"], how="left")


def universal_sources(rows: pd.DataFrame) -> set[str]:
    """Sources that are packages' pre-trained models: fine-tunes with a source but no pre-training size."""
    transfer = rows[(rows["method"] != SCRATCH) & rows["source"].notna() & (rows["source"] != "")]
    return set(transfer.loc[transfer["pretrain_size"].isna(), "source"])


ANY_METHOD = "any method"


def universal_vs_specific(paired: pd.DataFrame, universal: set[str], any_method: bool = False) -> pd.DataFrame:
    """Per (target, method, fine-tune size) that has both: the universal source and the property-specific
    one with the lowest mean test MAE, paired seed by seed (``transfer_gain``'s layout: the universal run
    is the "transfer", the property-specific one stands where scratch stood, so ``gain`` is the universal
    model's relative improvement over the best property-specific pre-training).

    ``any_method``: each side's best (source, method) per (target, fine-tune size), the method named in the
    source ("chgnet:0.3.0 (freeze)") and ``method`` set to `ANY_METHOD`: the user's question, as universal
    and property sources may be fine-tuned with different methods."""
    keys = ["target", "method", "finetune_size"]
    is_universal = paired["source"].isin(universal)
    if any_method:
        paired = paired.assign(source=paired["source"] + " (" + paired["method"] + ")", method=ANY_METHOD)
    best = []
    for side in (is_universal, ~is_universal):
        mean = paired[side].groupby([*keys, "source"], as_index=False)["test_mae"].mean()
        best.append(mean.loc[mean.groupby(keys)["test_mae"].idxmin(), [*keys, "source"]].merge(paired[side]))
    universal_best, specific_best = best
    universal_best = universal_best[[*keys, "seed", "source", "test_mae", "task_hash", "n_test", "unit"]].rename(
        columns={"source": "universal"})
    specific_best = specific_best[[*keys, "seed", "source", "test_mae", "task_hash"]].rename(
        columns={"source": "specific", "test_mae": "scratch_mae", "task_hash": "scratch_hash"})
    both = universal_best.merge(specific_best, on=[*keys, "seed"])
    both["gain"] = (both["scratch_mae"] - both["test_mae"]) / both["scratch_mae"]
    return both
