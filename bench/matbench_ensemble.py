"""A seed ensemble over `mattransfer matbench` results directories: per fold, the mean of the members'
test predictions (each member one directory, run with another ``--seed``), its MAE, and the members' own
MAEs (and validation MAEs, what a choice between models may use) beside it; the ensemble's MAE on the targets at 0 and above 0 apart (band gaps: metals and the rest);
optionally predictions below 0 set to 0 (band gaps: ``--clip-min 0``). Members may be different models.

    python bench/matbench_ensemble.py DIR_SEED0 DIR_SEED100 DIR_SEED200 --out docs/results/matbench/NAME/ensemble.md

Only folds that every member finished are scored; the members must hold the same test ids per fold.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from mattransfer.fileio import write_atomic
from mattransfer.matbench import N_FOLDS, FoldResult


def fold_scores(members: list[Path], clip_min: float | None = None) -> pd.DataFrame:
    """One row per fold every member finished: the members' MAEs and the ensemble's (mean prediction)."""
    rows = []
    for fold in range(N_FOLDS):
        runs = [member / f"fold_{fold}" for member in members]
        if not all((run / "metrics.json").is_file() for run in runs):
            continue
        results = [FoldResult.read(fold, run) for run in runs]
        predictions = [r.predictions.set_index("id").sort_index() for r in results]
        ids = predictions[0].index
        if any(not p.index.equals(ids) for p in predictions[1:]):
            raise SystemExit(f"fold {fold}: the members' test ids differ ({', '.join(map(str, runs))})")
        y_true = predictions[0]["y_true"].to_numpy()
        mean = np.mean([p["y_pred"].to_numpy() for p in predictions], axis=0)
        if clip_min is not None:
            mean = np.maximum(mean, clip_min)
        members_mae = [float(np.abs(p["y_pred"].to_numpy() - y_true).mean()) for p in predictions]
        error = np.abs(mean - y_true)
        zero = y_true == 0  # band gaps: the metals
        rows.append({"fold": fold, "n_test": len(ids), "members_mae": members_mae,
                     "member_mean_mae": float(np.mean(members_mae)), "ensemble_mae": float(error.mean()),
                     "member_val_mae": float(np.mean([r.metrics["val"]["mae"] for r in results])),
                     "zero_fraction": float(zero.mean()), "mae_at_zero": float(error[zero].mean()) if zero.any() else np.nan,
                     "mae_above_zero": float(error[~zero].mean()) if (~zero).any() else np.nan})
    return pd.DataFrame(rows)


def markdown(scores: pd.DataFrame, members: list[Path], clip_min: float | None) -> str:
    lines = [f"Seed ensemble of {len(members)} members: " + ", ".join(f"`{m}`" for m in members)
             + (f"; mean prediction clipped at {clip_min:g}" if clip_min is not None else ""), "",
             "| fold | n test | members' validation MAE (mean) | members' MAE | members' mean | ensemble MAE |"
             " targets at 0 | ensemble MAE there | ensemble MAE above 0 |", "|---|---|---|---|---|---|---|---|---|"]
    for row in scores.itertuples():
        lines.append(f"| {row.fold} | {row.n_test} | {row.member_val_mae:.4g} | {', '.join(f'{m:.4g}' for m in row.members_mae)} |"
                     f" {row.member_mean_mae:.4g} | {row.ensemble_mae:.4g} | {row.zero_fraction:.1%} |"
                     f" {row.mae_at_zero:.4g} | {row.mae_above_zero:.4g} |")
    if len(scores) > 1:  # population std over folds, as the leaderboard
        lines.append(f"| mean ± std (n = {len(scores)} folds) | | {scores.member_val_mae.mean():.4g} | | {scores.member_mean_mae.mean():.4g} ±"
                     f" {scores.member_mean_mae.std(ddof=0):.2g} | {scores.ensemble_mae.mean():.4g} ±"
                     f" {scores.ensemble_mae.std(ddof=0):.2g} | {scores.zero_fraction.mean():.1%} |"
                     f" {scores.mae_at_zero.mean():.4g} | {scores.mae_above_zero.mean():.4g} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("members", nargs="+", type=Path, help="results directories of `mattransfer matbench`")
    parser.add_argument("--clip-min", type=float, help="raise ensemble predictions below this to it (0 for band gaps)")
    parser.add_argument("--out", type=Path, help="write the table here (markdown) as well")
    args = parser.parse_args()
    text = markdown(fold_scores(args.members, args.clip_min), args.members, args.clip_min)
    if args.out:
        write_atomic(args.out, text)
    print(text)


if __name__ == "__main__":
    main()
