"""Yardsticks of Part 1, from the results table: transfer against the best model that does not transfer,
and how well transferability scores computed before fine-tuning rank the measured gains.

Pandas in, pandas out, like `analysis`. Non-transfer models are the scratch fine-tunes and the feature
baselines (kind ``baseline``: trees on matminer features), all trained on the same subsets and tested
on the same fixed test sets as the transfer runs of their (target, size, seed).
"""

from __future__ import annotations


import pandas as pd

from mattransfer.report.analysis import SCRATCH, mae_stats, paired_p_value, spearman

CELL = ["target", "finetune_size"]


def baseline_rows(results: pd.DataFrame, part: int) -> pd.DataFrame:
    """Finished feature baselines of ``part``."""
    return results[(results["part"] == part) & (results["status"] == "done") & (results["kind"] == "baseline")]


def versus_baselines(rows: pd.DataFrame, baselines: pd.DataFrame) -> pd.DataFrame:
    """Per (target, fine-tune size): the best transfer (source and method of the lowest mean MAE over seeds)
    against the best non-transfer model (scratch or a feature baseline), each model's mean MAE, the margin
    ``(MAE_best_baseline − MAE_best_TL) / MAE_best_baseline`` (> 0: transfer wins) and the paired t-test p
    of the two over seeds. ``rows``: Part 1 fine-tunes, scratch included (`analysis.finetune_rows`)."""
    transfer = rows[rows["method"] != SCRATCH]
    reference = pd.concat([rows[rows["method"] == SCRATCH], baselines], ignore_index=True)
    if transfer.empty or reference.empty:
        return pd.DataFrame()
    tl = mae_stats(transfer, [*CELL, "source", "method"])
    ref = mae_stats(reference, [*CELL, "method"])
    best_tl = tl.loc[tl.groupby(CELL)["mae_mean"].idxmin()]
    best_ref = ref.loc[ref.groupby(CELL)["mae_mean"].idxmin()]
    table = best_tl.merge(best_ref, on=CELL, suffixes=("_tl", "_ref")).rename(
        columns={"method_tl": "tl_method", "source": "tl_source", "method_ref": "ref_method", "unit_tl": "unit"})
    table["margin"] = (table["mae_mean_ref"] - table["mae_mean_tl"]) / table["mae_mean_ref"]
    table["p_value"] = [
        _paired(transfer, reference, r) for r in table[[*CELL, "tl_source", "tl_method", "ref_method"]].itertuples()]
    each = ref.pivot_table(index=CELL, columns="method", values="mae_mean").add_prefix("mae_").reset_index()
    return table.drop(columns=["unit_ref"]).merge(each, on=CELL).sort_values(CELL, ignore_index=True)


def _paired(transfer: pd.DataFrame, reference: pd.DataFrame, cell) -> float:
    at = (transfer["target"] == cell.target) & (transfer["finetune_size"] == cell.finetune_size)
    tl = transfer[at & (transfer["source"] == cell.tl_source) & (transfer["method"] == cell.tl_method)]
    at = (reference["target"] == cell.target) & (reference["finetune_size"] == cell.finetune_size)
    ref = reference[at & (reference["method"] == cell.ref_method)]
    pairs = tl.groupby("seed")["test_mae"].mean().to_frame("tl").join(
        ref.groupby("seed")["test_mae"].mean().rename("ref"), how="inner")
    return paired_p_value(pairs["tl"], pairs["ref"])


def score_gain_cells(scores: pd.DataFrame, gains: pd.DataFrame) -> pd.DataFrame:
    """Per (score, method, source, target, size): the score and the transfer gain, means over seeds, and both
    centred on their (score, method, target, size) mean, since scores and gains shift with the target and the
    subset size: what is compared is how the sources rank on one subset. ``gains``: `transfer_gain` rows."""
    keys = ["source", *CELL, "seed"]
    joined = gains[[*keys, "method", "gain"]].merge(scores[[*keys, "score", "value"]], on=keys).dropna(
        subset=["gain", "value"])  # krr_cv is NaN on subsets under 4 samples
    cells = joined.groupby(["score", "method", "source", *CELL], as_index=False)[["value", "gain"]].mean()
    group = cells.groupby(["score", "method", *CELL])
    # rounded: floating-point noise of the centring must not break ties between equal cells
    return cells.assign(value_centred=(cells["value"] - group["value"].transform("mean")).round(12),
                        gain_centred=(cells["gain"] - group["gain"].transform("mean")).round(12),
                        sources=group["source"].transform("size"))


def score_gain_correlation(cells: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ and p of centred score vs centred gain, per (score, method, target) and pooled over targets
    ("all"); cells of a subset with a single source carry no ranking and are left out."""
    ranked = cells[cells["sources"] >= 2]
    rows = []
    for (score, method), group in ranked.groupby(["score", "method"]):
        for target, part in [*group.groupby("target"), ("all", group)]:
            rho, p_value = spearman(part["value_centred"], part["gain_centred"])
            rows.append({"score": score, "method": method, "target": target, "n_cells": len(part),
                         "spearman_rho": rho, "p_value": p_value})
    return pd.DataFrame(rows, columns=["score", "method", "target", "n_cells", "spearman_rho", "p_value"])
