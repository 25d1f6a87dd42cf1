"""The label-selection simulation's report: sample-efficiency curves, labels to match random choice, and
whether the ensemble deviation predicts the actual error.

Reads a simulation directory (`mattransfer.study.label_selection`) and writes ``report.md``,
``results.csv`` (one row per iteration), ``calibration.csv`` (binned deviation vs actual error) and the
figures into the report directory. Every number in ``report.md`` is in those CSV files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from mattransfer.fileio import write_atomic
from mattransfer.report.figures import _grid, _unit, curves_figure, save, series_colors
from mattransfer.study.label_selection import calibration_table, results_table

STRATEGIES = ["deviation", "random"]
N_BINS = 10


def efficiency_stats(results: pd.DataFrame, column: str = "test_mae_ensemble") -> pd.DataFrame:
    """Mean ± std over seeds of ``column`` per (target, strategy, labelled count)."""
    grouped = results.groupby(["target", "unit", "strategy", "n_labelled"])[column]
    stats = grouped.agg(mae_mean="mean", mae_std="std", n_seeds="count").reset_index()
    return stats


def labels_to_match(results: pd.DataFrame) -> pd.DataFrame:
    """Per target: random choice's mean test MAE at its largest labelled count, and the labels the
    deviation strategy's mean curve needs to reach it (linear interpolation between iterations)."""
    stats = efficiency_stats(results)
    rows = []
    for target, group in stats.groupby("target"):
        random = group[group["strategy"] == "random"].sort_values("n_labelled")
        chosen = group[group["strategy"] == "deviation"].sort_values("n_labelled")
        if random.empty or chosen.empty:
            continue
        final = random.iloc[-1]
        rows.append({"target": target, "unit": final["unit"], "random_labels": int(final["n_labelled"]),
                     "random_mae": final["mae_mean"], "random_mae_std": final["mae_std"],
                     "deviation_final_labels": int(chosen["n_labelled"].iloc[-1]),
                     "deviation_final_mae": chosen["mae_mean"].iloc[-1],
                     "deviation_final_mae_std": chosen["mae_std"].iloc[-1],
                     "labels_to_match": first_crossing(chosen["n_labelled"].to_numpy(), chosen["mae_mean"].to_numpy(),
                                                       final["mae_mean"])})
    return pd.DataFrame(rows)


def first_crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """The first x at which the piecewise-linear curve (x, y) falls to ``level``; NaN if it never does."""
    if len(y) and y[0] <= level:
        return float(x[0])
    for k in range(1, len(y)):
        if y[k] <= level:
            return float(x[k - 1] + (x[k] - x[k - 1]) * (y[k - 1] - level) / (y[k - 1] - y[k]))
    return float("nan")


def rank_correlation(calibration: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ between deviation and actual error on the pool, per target, strategy and iteration
    (pooled over seeds; ``p``: its two-sided p-value), plus one row per target and strategy over all iterations."""
    rows = []
    for (target, strategy), group in calibration.groupby(["target", "strategy"]):
        parts = [(int(i), g) for i, g in group.groupby("iteration")] + [("all", group)]
        for iteration, part in parts:
            rho, p = spearmanr(part["deviation"], part["abs_error"])
            rows.append({"target": target, "strategy": strategy, "iteration": iteration, "n": len(part),
                         "rho": rho, "p": p})
    return pd.DataFrame(rows)


def calibration_bins(calibration: pd.DataFrame, n_bins: int = N_BINS) -> pd.DataFrame:
    """Pool structures of the random strategy (an unbiased pool) in deviation deciles per target:
    mean deviation and mean actual absolute error of the ensemble mean per bin."""
    rows = []
    for target, group in calibration[calibration["strategy"] == "random"].groupby("target"):
        bins = pd.qcut(group["deviation"].rank(method="first"), n_bins, labels=False)
        for b, part in group.groupby(bins):
            rows.append({"target": target, "unit": part["unit"].iloc[0], "bin": int(b), "n": len(part),
                         "deviation_mean": part["deviation"].mean(), "abs_error_mean": part["abs_error"].mean(),
                         "abs_error_sem": part["abs_error"].std() / np.sqrt(len(part))})
    return pd.DataFrame(rows)


def calibration_figure(bins: pd.DataFrame) -> Figure:
    targets = list(dict.fromkeys(bins["target"]))
    figure, axes = _grid(len(targets), panel_size=(4.2, 3.6))
    color = series_colors(["random"])["random"]
    for ax, target in zip(axes, targets):
        data = bins[bins["target"] == target]
        ax.errorbar(data["deviation_mean"], data["abs_error_mean"], yerr=data["abs_error_sem"], marker="o",
                    color=color, capsize=3, label="pool, binned by deviation")
        top = max(data["deviation_mean"].max(), data["abs_error_mean"].max()) * 1.1
        ax.plot([0, top], [0, top], "k--", lw=1, label="error = deviation")
        unit = _unit(data["unit"].iloc[0])
        ax.set_xlabel(f"ensemble deviation ({unit})")
        ax.set_ylabel(f"actual |error| of the mean ({unit})")
        ax.set_title(target)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("Does the deviation predict the error? Pool deciles, random strategy, all seeds and iterations")
    return figure


def write_selection_report(sim_dir: Path, report_dir: Path, command: str | None = None) -> Path:
    """Write the report of the simulation in ``sim_dir`` into ``report_dir``; returns report.md's path."""
    sim_dir, report_dir = Path(sim_dir), Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    results, calibration = results_table(sim_dir), calibration_table(sim_dir)
    write_atomic(report_dir / "results.csv", results.to_csv(index=False))
    n_test = results.groupby("target")["n_test"].first()
    stats = pd.concat([
        efficiency_stats(results).assign(series=lambda f: f["strategy"]),
        efficiency_stats(results, "test_mae_member").assign(series=lambda f: f["strategy"] + ", one member"),
    ])
    stats["panel"] = [f"{t} (n_test = {n_test[t]})" for t in stats["target"]]
    stats = stats.rename(columns={"n_labelled": "x"})
    save(curves_figure(stats, title="Test MAE vs labels (mean ± std over seeds; ensemble mean unless 'one member')",
                       xlabel="labelled samples", xscale="linear",
                       order=["deviation", "random", "deviation, one member", "random, one member"]),
         report_dir / "efficiency.png")
    bins = calibration_bins(calibration)
    write_atomic(report_dir / "calibration.csv", bins.to_csv(index=False))
    save(calibration_figure(bins), report_dir / "calibration.png")
    match = labels_to_match(results)
    correlation = rank_correlation(calibration)
    write_atomic(report_dir / "spearman.csv", correlation.to_csv(index=False))
    text = _markdown(results, stats, match, correlation, sim_dir, command)
    write_atomic(report_dir / "report.md", text)
    return report_dir / "report.md"


def _markdown(results: pd.DataFrame, stats: pd.DataFrame, match: pd.DataFrame, correlation: pd.DataFrame,
              sim_dir: Path, command: str | None) -> str:
    lines = ["# Choosing what to label: ensemble deviation vs random choice", ""]
    if command:
        lines += ["Made with:", "", "```bash", command, "```", ""]
    seeds = sorted(results["seed"].unique())
    lines += [f"Seeds: {', '.join(map(str, seeds))}. Test MAE on each dataset's fixed 10 % test set (never in the "
              "pool, the labelled set or validation), of the ensemble mean unless noted. Numbers: `results.csv` "
              "(one row per iteration), `spearman.csv`, `calibration.csv`.", "",
              "![test MAE vs labels](efficiency.png)", ""]
    lines += ["## Test MAE vs labels", ""]
    for target, group in stats[~stats["series"].str.contains("member")].groupby("target"):
        wide = group.pivot_table(index="x", columns="strategy", values=["mae_mean", "mae_std"], dropna=False)
        unit = group["unit"].iloc[0]
        lines += [f"**{target}** ({unit}, n_test = {results.loc[results['target'] == target, 'n_test'].iloc[0]})", "",
                  "| labels | " + " | ".join(s for s in STRATEGIES if ("mae_mean", s) in wide.columns) + " |",
                  "|---:|" + "---:|" * sum(("mae_mean", s) in wide.columns for s in STRATEGIES)]
        for x, row in wide.iterrows():
            cells = [_pm(row[("mae_mean", s)], row[("mae_std", s)]) for s in STRATEGIES if ("mae_mean", s) in wide.columns]
            lines.append(f"| {int(x)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Labels to match random choice", "",
              "| target | random: labels | random: MAE | deviation: labels to reach it | deviation: final labels | deviation: final MAE |",
              "|---|---:|---:|---:|---:|---:|"]
    for _, row in match.iterrows():
        reached = f"{row['labels_to_match']:.0f}" if np.isfinite(row["labels_to_match"]) else "not reached"
        lines.append(f"| {row['target']} | {row['random_labels']} | {_pm(row['random_mae'], row['random_mae_std'])} "
                     f"{row['unit']} | {reached} | {row['deviation_final_labels']} | "
                     f"{_pm(row['deviation_final_mae'], row['deviation_final_mae_std'])} |")
    lines += ["", "## Does the deviation predict the error?", "",
              "Spearman ρ between a pool structure's ensemble deviation and the actual absolute error of the "
              "ensemble mean there, over all iterations and seeds (`spearman.csv` has every iteration):", "",
              "| target | strategy | pool points | ρ | p |", "|---|---|---:|---:|---:|"]
    for _, row in correlation[correlation["iteration"] == "all"].iterrows():
        lines.append(f"| {row['target']} | {row['strategy']} | {row['n']} | {row['rho']:.3f} | {row['p']:.2g} |")
    lines += ["", "![calibration](calibration.png)", "", "## Wall time", "",
              "| target | strategy | iterations | fit s (sum) | wall s (sum) |", "|---|---|---:|---:|---:|"]
    for (target, strategy), group in results.groupby(["target", "strategy"]):
        lines.append(f"| {target} | {strategy} | {len(group)} | {group['fit_seconds'].sum():.0f} | "
                     f"{group['wall_seconds'].sum():.0f} |")
    lines += ["", "Stop reasons of the chains: " + ", ".join(
        f"{t}/{s}: {', '.join(sorted(set(g['stop'].dropna())))}" for (t, s), g in results.groupby(["target", "strategy"])), ""]
    return "\n".join(lines)


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4g} ± {std:.2g}" if np.isfinite(std) else f"{mean:.4g}"
