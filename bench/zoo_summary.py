"""Mean ± std over seeds of the model-zoo CSVs that bench/zoo_runs.py writes, as a markdown table.

One row per (encoder, method, pooling, target, n): test MAE mean ± std (sample std over seeds), the
number of seeds, n_test and the median wall seconds of one run. A cell of one seed is marked "one run".

    python bench/zoo_summary.py docs/results/model-zoo/runs_chgnet.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

KEYS = ["encoder", "method", "pooling", "head", "target", "n"]


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    grouped = frame.groupby(KEYS, sort=False)
    table = grouped.agg(mae=("test_mae", "mean"), std=("test_mae", "std"), seeds=("seed", "nunique"),
                        n_test=("n_test", "first"), unit=("unit", "first"), wall_s=("wall_s", "median"))
    return table.reset_index()


def markdown(table: pd.DataFrame) -> str:
    lines = ["| encoder | method | pooling | head | target | n | test MAE | unit | seeds | n_test | wall s (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        mae = f"{row.mae:.4g} ± {row.std:.2g}" if row.seeds > 1 else f"{row.mae:.4g} (one run)"
        lines.append(f"| {row.encoder} | {row.method} | {row.pooling} | {row.head} | {row.target} | {row.n} | {mae} | {row.unit}"
                     f" | {row.seeds} | {row.n_test} | {row.wall_s:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", type=Path)
    args = parser.parse_args()
    frame = pd.concat([pd.read_csv(path) for path in args.csv], ignore_index=True)
    frame["head"] = frame["head"].fillna("plain") if "head" in frame else "plain"  # rows from before the column
    print(markdown(summary(frame)))


if __name__ == "__main__":
    main()
