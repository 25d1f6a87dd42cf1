"""What clipping predictions to the training targets' range does to the test MAE, from finished runs.

Training does not change with ``training.clip_to_train_range`` (early stopping reads the standardised
validation loss); only the predictions do. So the clipped test MAE of a run trained before the option
existed is its ``test_predictions.csv`` clipped to the training targets' [min, max], which its checkpoint
records (``domain.target_min``/``target_max``, from the same training split). One row per run directory
that has both files:

    run,group,raw_mae,clipped_mae,change_pct,n_clipped,n_test

``group`` is the run directory's name without its seed (the third ``__`` field of bench/recipe.py's names,
the ``_s<seed>`` end of bench/zoo_runs.py's), so a group's rows are the seeds of one setting.

    python bench/clip_to_range.py /work/h3-runs /work/zoo-runs --out bench/results/clip_to_range.csv
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from mattransfer.models.model import read_checkpoint


def clipped_row(run: Path) -> dict | None:
    """Raw and clipped test MAE of one run; None when it lacks predictions or a recorded training range."""
    if not (run / "model.ckpt").is_file():  # a study task's fine-tune keeps no checkpoint
        return None
    test = pd.read_csv(run / "test_predictions.csv")
    domain = read_checkpoint(run / "model.ckpt").get("domain")
    if not domain:
        return None
    low, high = domain["target_min"], domain["target_max"]
    raw = (test.y_pred - test.y_true).abs().mean()
    clipped = (test.y_pred.clip(low, high) - test.y_true).abs().mean()
    fields = run.name.split("__")  # bench/recipe.py: target__n__seed__recipe__eN
    group = "__".join(fields[:2] + fields[3:]) if len(fields) == 5 else re.sub(r"_s\d+$", "", run.name)
    return {"run": str(run), "group": f"{run.parent.name}/{group}", "raw_mae": raw, "clipped_mae": clipped,
            "change_pct": 100 * (clipped - raw) / raw, "n_clipped": int(((test.y_pred < low) | (test.y_pred > high)).sum()),
            "n_test": len(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="directories searched for run directories")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = sorted({p.parent for root in args.roots for p in root.rglob("test_predictions.csv")})
    rows = pd.DataFrame([r for r in map(clipped_row, runs) if r])
    rows.to_csv(args.out, index=False, float_format="%.6g")
    groups = rows.groupby("group").agg(runs=("raw_mae", "size"), raw=("raw_mae", "mean"), clipped=("clipped_mae", "mean"),
                                       change_pct=("change_pct", "mean"), worst_pct=("change_pct", "max"))
    print(groups.to_string(float_format=lambda v: f"{v:.4g}"))
    worse = int((rows.clipped_mae > rows.raw_mae).sum())
    print(f"{len(rows)} runs in {len(groups)} groups: clipped MAE below raw in {int((rows.clipped_mae < rows.raw_mae).sum())},"
          f" equal in {int((rows.clipped_mae == rows.raw_mae).sum())}, above in {worse};"
          f" mean change {rows.change_pct.mean():+.2f} %, median {rows.change_pct.median():+.2f} %")


if __name__ == "__main__":
    main()
