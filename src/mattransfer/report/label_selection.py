"""The label-selection simulation's report: sample-efficiency curves, labels to match random choice, and
whether the ensemble deviation predicts the actual error.

Reads a simulation directory (`mattransfer.study.label_selection`) and writes ``report.md``,
``results.csv`` (one row per iteration), ``calibration.csv`` (binned deviation vs actual error) and the
figures into the report directory. Every number in ``report.md`` is in those CSV files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
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


def paired_difference(results: pd.DataFrame) -> pd.DataFrame:
    """Deviation minus random test MAE of the same seed (same first picks) at the same labelled count:
    mean and std over seeds, per target and labelled count. Negative: choosing by deviation did better."""
    wide = results.pivot_table(index=["target", "seed", "n_labelled"], columns="strategy", values="test_mae_ensemble")
    if not set(STRATEGIES) <= set(wide.columns):
        return pd.DataFrame(columns=["target", "n_labelled", "diff_mean", "diff_std", "n_seeds"])
    diff = (wide["deviation"] - wide["random"]).dropna().rename("diff").reset_index()
    return diff.groupby(["target", "n_labelled"])["diff"].agg(diff_mean="mean", diff_std="std",
                                                             n_seeds="count").reset_index()


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
                                                       final["mae_mean"]),
                     # where random choice's own mean curve first gets there: on a flat curve both arrive early
                     "random_first_reaches": first_crossing(random["n_labelled"].to_numpy(),
                                                            random["mae_mean"].to_numpy(), final["mae_mean"])})
    return pd.DataFrame(rows)


def first_crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """The first x at which the piecewise-linear curve (x, y) falls to ``level``; NaN if it never does."""
    if len(y) and y[0] <= level:
        return float(x[0])
    for k in range(1, len(y)):
        if y[k] <= level:
            return float(x[k - 1] + (x[k] - x[k - 1]) * (y[k - 1] - level) / (y[k - 1] - y[k]))
    return float("nan")


def rank_correlation(results: pd.DataFrame, calibration: pd.DataFrame) -> pd.DataFrame:
    """Spearman ρ between deviation and actual error on the pool. Per target, strategy and labelled count:
    mean and std over seeds of each chain's ρ (one pool, one p-value each; ``p_max`` the largest);
    ``n_labelled == "all"``: every (seed, iteration) pool pooled into one ρ (its p is optimistic, since a
    structure recurs across iterations and seeds)."""
    grouped = results.groupby(["target", "strategy", "n_labelled"])
    rows = grouped.agg(n_pool=("n_pool", "mean"), rho_mean=("spearman_rho", "mean"), rho_std=("spearman_rho", "std"),
                       p_max=("spearman_p", "max"), n_seeds=("seed", "count")).reset_index()
    pooled = []
    for (target, strategy), group in calibration.groupby(["target", "strategy"]):
        rho, p = spearmanr(group["deviation"], group["abs_error"])
        pooled.append({"target": target, "strategy": strategy, "n_labelled": "all", "n_pool": len(group),
                       "rho_mean": rho, "p_max": p})
    return pd.concat([rows, pd.DataFrame(pooled)], ignore_index=True)


def calibration_bins(calibration: pd.DataFrame, n_bins: int = N_BINS) -> pd.DataFrame:
    """Pool structures in deviation deciles per target and strategy (all seeds and iterations): mean
    deviation and mean actual absolute error of the ensemble mean per bin. The random strategy's pool is
    an unbiased sample; the deviation strategy's has its most uncertain structures taken out."""
    rows = []
    for (target, strategy), group in calibration.groupby(["target", "strategy"]):
        bins = pd.qcut(group["deviation"].rank(method="first"), n_bins, labels=False)
        for b, part in group.groupby(bins):
            rows.append({"target": target, "strategy": strategy, "unit": part["unit"].iloc[0], "bin": int(b),
                         "n": len(part), "deviation_mean": part["deviation"].mean(),
                         "abs_error_mean": part["abs_error"].mean(),
                         "abs_error_sem": part["abs_error"].std() / np.sqrt(len(part))})
    return pd.DataFrame(rows)


def calibration_figure(bins: pd.DataFrame) -> Figure:
    targets = list(dict.fromkeys(bins["target"]))
    figure, axes = _grid(len(targets), panel_size=(4.2, 3.6))
    colors = series_colors(STRATEGIES)
    for ax, target in zip(axes, targets):
        data = bins[bins["target"] == target]
        for strategy, line in data.groupby("strategy"):
            ax.errorbar(line["deviation_mean"], line["abs_error_mean"], yerr=line["abs_error_sem"], marker="o",
                        color=colors[strategy], capsize=3, label=f"{strategy} strategy's pool")
        top = max(data["deviation_mean"].max(), data["abs_error_mean"].max()) * 1.1
        ax.plot([0, top], [0, top], "k--", lw=1, label="error = deviation")
        unit = _unit(data["unit"].iloc[0])
        ax.set_xlabel(f"ensemble deviation ({unit})")
        ax.set_ylabel(f"actual |error| of the mean ({unit})")
        ax.set_title(target)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("Deviation vs actual error on the pool (deciles)")
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
    save(curves_figure(stats, title="Test MAE vs labels (mean ± std over seeds)",
                       xlabel="labelled samples", xscale="linear",
                       order=["deviation", "random", "deviation, one member", "random, one member"]),
         report_dir / "efficiency.png")
    bins = calibration_bins(calibration)
    write_atomic(report_dir / "calibration.csv", bins.to_csv(index=False))
    save(calibration_figure(bins), report_dir / "calibration.png")
    match = labels_to_match(results)
    correlation = rank_correlation(results, calibration)
    write_atomic(report_dir / "spearman.csv", correlation.to_csv(index=False))
    write_atomic(report_dir / "paired.csv", paired_difference(results).to_csv(index=False))
    pretrained = _pretrained_runs(sim_dir, report_dir)
    setting = _setting(yaml.safe_load((sim_dir / "spec.yaml").read_text()))
    text = _markdown(results, stats, match, correlation, bins, pretrained, setting, command)
    write_atomic(report_dir / "report.md", text)
    return report_dir / "report.md"


def _pretrained_runs(sim_dir: Path, report_dir: Path) -> list[tuple[str, dict]]:
    """The metrics of each pre-training the simulation started from (``metrics.json`` beside the
    checkpoint, when there), copied into the report directory so that the report's numbers are there."""
    spec = yaml.safe_load((sim_dir / "spec.yaml").read_text())
    runs = []
    for checkpoint in dict.fromkeys(t["read_from"] for t in spec["targets"]):
        metrics = Path(checkpoint).parent / "metrics.json"
        if metrics.exists():
            name = f"pretrained-{Path(checkpoint).parent.name}.json"
            write_atomic(report_dir / name, metrics.read_text())
            runs.append((name, json.loads(metrics.read_text())))
    return runs


def _setting(spec: dict) -> str:
    """The simulation's settings in one paragraph, from its spec."""
    sel = spec["selection"]
    levels = "; ".join(f"{t['dataset']}: lo {t['lo'] if t.get('lo') is not None else sel['lo']}, "
                       f"hi {t['hi'] if t.get('hi') is not None else sel['hi']}" for t in spec["targets"])
    return (f"Setting: {sel['ensemble']['size']} members fine-tuned with `{sel['ensemble']['method']}` "
            f"(lr {sel['training']['lr']}, at most {sel['training']['max_epochs']} epochs, patience "
            f"{sel['training']['patience']}, each validating on its own {sel['val_fraction']:.0%} of the labelled set); "
            f"first {sel['init_pick']} labels at random (the same for both strategies of a seed), then at most "
            f"{sel['max_pick']} per iteration; trust levels ({sel['levels']}) {levels}; candidates lie strictly "
            f"between lo and hi; a chain stops when no candidate is left or at {spec['budget']} labels.")


def _markdown(results: pd.DataFrame, stats: pd.DataFrame, match: pd.DataFrame, correlation: pd.DataFrame,
              bins: pd.DataFrame, pretrained: list[tuple[str, dict]], setting: str, command: str | None) -> str:
    lines = ["# Choosing what to label: ensemble deviation vs random choice", ""]
    if command:
        lines += ["Made with:", "", "```bash", command, "```", ""]
    lines += [setting, ""]
    for name, m in pretrained:
        lines += [f"Pre-trained model (`{name}`): {m['dataset']}, {m['n_train']} train / {m['n_val']} val, "
                  f"best epoch {m['best_epoch']} of {m['epochs_run']}, test MAE {m['test']['mae']:.3g} {m['unit']} "
                  f"(R² {m['test']['r2']:.3f}, n_test = {m['n_test']}), {m['wall_seconds']:.0f} s wall.", ""]
    seeds = sorted(results["seed"].unique())
    lines += [f"Seeds: {', '.join(map(str, seeds))}. Test MAE on each dataset's fixed 10 % test set (never in the "
              "pool, the labelled set or validation), of the ensemble mean unless noted. Numbers: `results.csv` "
              "(one row per iteration), `paired.csv`, `spearman.csv`, `calibration.csv`.", "",
              "![test MAE vs labels](efficiency.png)", ""]
    lines += ["## Test MAE vs labels", ""]
    paired = paired_difference(results).set_index(["target", "n_labelled"])
    for target, group in stats[~stats["series"].str.contains("member")].groupby("target"):
        wide = group.pivot_table(index="x", columns="strategy", values=["mae_mean", "mae_std"], dropna=False)
        unit = group["unit"].iloc[0]
        present = [s for s in STRATEGIES if ("mae_mean", s) in wide.columns]
        rows = results[results["target"] == target]
        seen = rows["test_in_pretraining"].iloc[0] if "test_in_pretraining" in rows else None
        seen = "not recorded" if seen is None or pd.isna(seen) else f"{int(seen)}"
        lines += [f"**{target}** ({unit}, n_test = {rows['n_test'].iloc[0]}, test structures in the pre-training's "
                  f"train/val: {seen}; last column: deviation − random of the same seed, mean ± std over seeds)", "",
                  "| labels | " + " | ".join(present) + " | deviation − random |", "|---:|" + "---:|" * (len(present) + 1)]
        for x, row in wide.iterrows():
            cells = [_pm(row[("mae_mean", s)], row[("mae_std", s)]) for s in present]
            key = (target, x)
            cells.append(_pm(paired.loc[key, "diff_mean"], paired.loc[key, "diff_std"], 3) if key in paired.index else "—")
            lines.append(f"| {int(x)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Labels to match random choice", "",
              "| target | random: labels | random: MAE | random: first reaches it | deviation: labels to reach it | deviation: final labels | deviation: final MAE |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for _, row in match.iterrows():
        reached = f"{row['labels_to_match']:.0f}" if np.isfinite(row["labels_to_match"]) else "not reached"
        lines.append(f"| {row['target']} | {row['random_labels']} | {_pm(row['random_mae'], row['random_mae_std'])} "
                     f"{row['unit']} | {row['random_first_reaches']:.0f} | {reached} | {row['deviation_final_labels']} | "
                     f"{_pm(row['deviation_final_mae'], row['deviation_final_mae_std'])} |")
    lines += [""] + [_verdict(row) for _, row in match.iterrows()]
    lines += ["", "## Does the deviation predict the error?", "",
              "Spearman ρ between a pool structure's ensemble deviation and the actual absolute error of the "
              "ensemble mean there: per labelled count, the mean ± std over seeds of each pool's ρ and the largest "
              "of their p-values; last row, all pools pooled (`spearman.csv`).", ""]
    for target, group in correlation.groupby("target"):
        wide = group.pivot_table(index="n_labelled", columns="strategy", values=["rho_mean", "rho_std", "p_max"],
                                 aggfunc="first", dropna=False)
        present = [s for s in STRATEGIES if ("rho_mean", s) in wide.columns]
        lines += [f"**{target}**", "", "| labels | " + " | ".join(f"{s}: ρ | {s}: p (max)" for s in present) + " |",
                  "|---:|" + "---:|---:|" * len(present)]
        order = sorted(wide.index, key=lambda v: (v == "all", v if v != "all" else 0))
        for n in order:
            cells = [f"{_pm(wide.loc[n, ('rho_mean', s)], wide.loc[n, ('rho_std', s)], 3)} | {_p(wide.loc[n, ('p_max', s)])}"
                     for s in present]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        lines.append("")
    for target, group in bins[bins["strategy"] == "random"].groupby("target"):
        ratio = (group["abs_error_mean"] * group["n"]).sum() / (group["deviation_mean"] * group["n"]).sum()
        increases = int((np.diff(group.sort_values("bin")["abs_error_mean"]) > 0).sum())
        lines.append(f"- **{target}**: on the random strategy's pools the actual error of the ensemble mean averages "
                     f"{ratio:.1f}× the deviation; from one deviation decile to the next the mean error rises "
                     f"{increases} times of {len(group) - 1} (`calibration.csv`, figure below).")
    lines += ["", "![calibration](calibration.png)", "", "## Wall time", "",
              "| target | strategy | iterations | fit s (sum) | wall s (sum) |", "|---|---|---:|---:|---:|"]
    for (target, strategy), group in results.groupby(["target", "strategy"]):
        lines.append(f"| {target} | {strategy} | {len(group)} | {group['fit_seconds'].sum():.0f} | "
                     f"{group['wall_seconds'].sum():.0f} |")
    lines += ["", "Stop reasons of the chains: " + ", ".join(
        f"{t}/{s}: {', '.join(sorted(set(g['stop'].dropna())))}" for (t, s), g in results.groupby(["target", "strategy"])), ""]
    return "\n".join(lines)


def _verdict(row: pd.Series) -> str:
    """One sentence per target: did choosing by deviation save labels over random choice?"""
    target, unit, budget = row["target"], row["unit"], row["random_labels"]
    if not np.isfinite(row["labels_to_match"]):
        return (f"- **{target}**: selection by deviation does **not** beat random choice: it never reached random "
                f"choice's mean test MAE at {budget} labels ({row['random_mae']:.4g} {unit}); it ended at "
                f"{row['deviation_final_mae']:.4g} {unit} with {row['deviation_final_labels']} labels.")
    saved = 1 - row["labels_to_match"] / budget
    if saved <= 0:
        return (f"- **{target}**: no saving: selection by deviation needed {row['labels_to_match']:.0f} labels to reach "
                f"random choice's mean test MAE at {budget} labels ({row['random_mae']:.4g} {unit}).")
    flat = (f" Random choice's own mean curve first got there at {row['random_first_reaches']:.0f} labels: the curves "
            "flatten, so the saving says more about the plateau than about the selection."
            if row["random_first_reaches"] < budget else "")
    return (f"- **{target}**: selection by deviation reached random choice's mean test MAE at {budget} labels "
            f"({row['random_mae']:.4g} {unit}) with {row['labels_to_match']:.0f} labels ({saved:.0%} fewer), on the mean "
            f"curves over seeds; compare the ± std in the table before calling it a gain.{flat}")


def _p(p: float) -> str:
    """A p-value; one that underflows double precision is written as the bound it is."""
    return "< 1e-300" if p == 0 else f"{p:.2g}"


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if not np.isfinite(mean):
        return "—"
    return f"{mean:.{digits}g} ± {std:.2g}" if np.isfinite(std) else f"{mean:.{digits}g}"
