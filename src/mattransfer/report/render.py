"""``write_report``: a study's Markdown and HTML report, its figures, and the answers in words.

Each part's section draws its figures and states what the numbers say; its headline goes to the
"Answers" section at the top. A part without finished tasks gets a line saying so, not a figure.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from markdown_it import MarkdownIt
from matplotlib.figure import Figure

from mattransfer.data.registry import STUDY_KEYS
from mattransfer.report import analysis as an
from mattransfer.report import yardsticks as ys
from mattransfer.report.figures import METHOD_COLORS, curves_figure, heatmap_figure, save, scatter_figure
from mattransfer.study.results import transfer_gain
from mattransfer.study.transferability import read_scores

DATASET_AXES = ("dataset", "dataset")
ALPHA = 0.05  # significance level of every test the report states in words
GAIN_COLOR_LIMIT = 100.0  # % — colours saturate here so one disastrous cell does not wash out the rest

STATISTICS_NOTE = (
    "Transfer gain = (MAE_scratch − MAE_TL) / MAE_scratch, where the scratch model is trained on the very same "
    "fine-tune subset (same target, size and seed); a cell's gain is the mean of its per-seed gains. "
    "Paired test per cell: a two-sided paired t-test (`scipy.stats.ttest_rel`) of TL vs scratch test MAE over "
    "seeds, each seed a pair on one shared subset and the fixed test set; with one seed it is n/a (1 seed). "
    "A Wilcoxon signed-rank test cannot reach p < 0.05 with fewer than 6 seed pairs, and per-test-sample errors "
    "are not in the results table, so the t-test it is; with 2–3 seeds its power is low, so read the p-values "
    f"as indicative. Statements call a difference significant at p < {ALPHA}."
)


def write_report(study_dir: Path) -> Path:
    """Write ``study_dir/report/report.md`` and ``report.html`` from the study's results; return the Markdown path.

    Reads ``results.parquet`` (else ``results.csv``) and, when present, ``relatedness.csv``.
    Figures go to ``report/figures/*.png`` (linked from the Markdown, embedded in the HTML).
    """
    study_dir = Path(study_dir)
    results = an.load_results(study_dir)
    doc = _Document(study_dir / "report")
    doc.prepare()
    _tasks(doc, results, an.planned_tasks(study_dir))
    rows1 = an.finetune_rows(results, 1)
    cells1 = an.gain_cells(transfer_gain(rows1), [*an.PAIR, "method", "finetune_size"])
    baselines1 = ys.baseline_rows(results, 1)
    answers = [
        *_part1(doc, rows1, cells1, baselines1),
        *_versus_baselines(doc, rows1, baselines1),
        *_transferability(doc, rows1, read_scores(study_dir)),
        *_relatedness(doc, cells1, an.load_relatedness(study_dir)),
        *_part2(doc, an.finetune_rows(results, 2), cells1),
        *_part3(doc, an.finetune_rows(results, 3)),
        *_part4(doc, an.finetune_rows(results, 4)),
    ]
    title = f"Transfer study report: {study_dir.resolve().name}"
    markdown = "\n".join([f"# {title}", "", "## Answers", "", *[f"- {a}" for a in answers], "", *doc.lines])
    md_path = doc.root / "report.md"
    md_path.write_text(markdown)
    (doc.root / "report.html").write_text(_html(markdown, doc.root, title))
    return md_path


@dataclass
class _Document:
    """Markdown lines, the figures they link (``figures/*.png``) and the tables they link (``*.csv``)."""

    root: Path
    lines: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        (self.root / "figures").mkdir(parents=True, exist_ok=True)
        # a part that lost its rows since the last report must not keep its old figure
        for old in (self.root / "figures").glob("*.png"):
            old.unlink()

    def heading(self, text: str, level: int = 2) -> None:
        self.lines += ["#" * level + " " + text, ""]

    def text(self, *paragraphs: str) -> None:
        for paragraph in paragraphs:
            self.lines += [paragraph, ""]

    def bullets(self, items: list[str]) -> None:
        self.lines += [f"- {item}" for item in items] + [""]

    def table(self, frame: pd.DataFrame) -> None:
        cells = [[str(v).replace("|", "\\|") for v in row] for row in frame.itertuples(index=False)]
        self.lines += ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * frame.shape[1],
                       *["| " + " | ".join(row) + " |" for row in cells], ""]

    def figure(self, figure: Figure, name: str, caption: str) -> None:
        save(figure, self.root / "figures" / f"{name}.png")
        self.lines += [f"![{caption}](figures/{name}.png)", "", f"*{caption}*", ""]

    def csv(self, frame: pd.DataFrame, name: str, what: str) -> None:
        frame.to_csv(self.root / f"{name}.csv", index=False)
        self.text(f"All {what}: [{name}.csv]({name}.csv).")


# --- formatting -------------------------------------------------------------------------------------------

def _pct(fraction: float) -> str:
    return f"{100 * fraction:+.1f} %"


def _pp(fraction: float) -> str:
    return f"{100 * fraction:+.1f} pp"


def _p(p_value: float, n_seeds: int) -> str:
    if n_seeds < 2:
        return "n/a (1 seed)"
    return f"{p_value:.2g}" if np.isfinite(p_value) else "n/a"


def _significantly(rows: pd.DataFrame, n_seeds: str) -> str:
    """How many of ``rows`` are significant (paired test, ≥2 seeds), or that none could be tested."""
    tested = rows[n_seeds] >= 2
    if len(rows) and not tested.any():
        return "no paired test with 1 seed"
    return f"{int((tested & (rows['p_value'] < ALPHA)).sum())} significantly"


def _pm(mean: float, std: float) -> str:
    return f"{mean:.4g} ± {std:.2g}" if np.isfinite(std) else f"{mean:.4g}"


def _n(size: float) -> str:
    return f"{size:,.0f}"


def _sizes(sizes: pd.Series) -> str:
    return ", ".join(_n(v) for v in sorted(sizes))


def _size_panel(sizes: pd.Series) -> pd.Series:
    return sizes.map(lambda size: f"fine-tune n = {_n(size)}")


def _pair(source: str, target: str) -> str:
    return f"{source} → {target}"


def _state(tasks: int, failed: int, not_run: int) -> str:
    if tasks == 0:
        return "missing (no tasks)"
    left = [f"{n} {what}" for n, what in ((not_run, "not run yet"), (failed, "failed")) if n]
    return f"incomplete: {', '.join(left)}" if left else "all tasks done"


def _order(names: set[str]) -> list[str]:
    """The study's dataset order, then any other names alphabetically."""
    return [k for k in STUDY_KEYS if k in names] + sorted(names - set(STUDY_KEYS))


def _matrix(frame: pd.DataFrame, value: str, names: list[str],
            labels: tuple[str, str] = ("source (pre-trained on)", "target (fine-tuned on)")) -> pd.DataFrame:
    """source × target matrix of ``value`` over every dataset (the diagonal and untested pairs NaN)."""
    matrix = frame.pivot_table(index="source", columns="target", values=value, aggfunc="mean")
    return matrix.reindex(index=names, columns=names).rename_axis(index=labels[0], columns=labels[1])


def _curves(stats: pd.DataFrame, *, panel: pd.Series, series: pd.Series, x: str) -> pd.DataFrame:
    """``stats`` in the shape ``curves_figure`` reads."""
    return stats.assign(panel=panel, series=series, x=stats[x])


# --- sections ---------------------------------------------------------------------------------------------

def _tasks(doc: _Document, results: pd.DataFrame, planned: dict[int, int] | None) -> None:
    doc.heading("Tasks")
    status = an.task_status(results, planned)
    status["part"] = status["part"].map(an.PARTS)
    status["state"] = [_state(*counts) for counts in zip(status["tasks"], status["failed"], status["not_run"])]
    doc.table(status.rename(columns={"not_run": "not run yet"}))
    errors = an.error_summary(results)
    if len(errors):
        doc.text("Failed tasks by error (last line of each error):")
        doc.table(errors)
    caps = results.loc[results["cap_note"] != "", "cap_note"].value_counts()
    if len(caps):
        doc.text("Sizes capped at what the data holds:")
        doc.bullets([f"{note} ({count} tasks)" for note, count in caps.items()])
    doc.text(STATISTICS_NOTE)


def _part1(doc: _Document, rows: pd.DataFrame, cells: pd.DataFrame,
           baselines: pd.DataFrame | None = None) -> list[str]:
    doc.heading(an.PARTS[1])
    if rows.empty:
        doc.text("No finished Part 1 fine-tunes.")
        return ["Best source per target: not answered (Part 1 has no finished fine-tunes)."]
    names = _order(set(rows["source"]) - {""} | set(rows["target"]))
    _learning_curves(doc, rows, names, baselines)
    if cells.empty:
        doc.text("No scratch baselines paired with the transfer runs: transfer gains cannot be computed.")
        return ["Best source per target: not answered (Part 1 has no scratch baselines)."]
    _gain_heatmaps(doc, cells, names)
    answers = [_best_sources(doc, cells, names), _negative_cells(doc, cells)]
    doc.csv(cells, "part1_gain_cells", "Part 1 cells (gain, MAE, paired-test p)")
    _test_in_source(doc, rows)
    return answers


def _test_in_source(doc: _Document, rows: pd.DataFrame) -> None:
    seen = an.test_in_source(rows)
    if seen.empty:
        return
    doc.heading("Test materials the source was pre-trained on", 3)
    doc.text("Per cell, how many of the target's test materials were in the source's pre-training set: the"
             " same structure (a different property of it was learnt), and the same reduced formula.")
    doc.table(pd.DataFrame({
        "source → target": seen["source"] + " → " + seen["target"], "test n": seen["n_test"].map(_n),
        "same structure": seen["test_same_structure"].map(_n), "same formula": seen["test_same_formula"].map(_n),
    }))


def _learning_curves(doc: _Document, rows: pd.DataFrame, names: list[str],
                     baselines: pd.DataFrame | None = None) -> None:
    references = sorted(set(baselines["method"])) if baselines is not None else []
    stats = an.mae_stats(pd.concat([rows, baselines]) if references else rows,
                         ["target", "source", "method", "finetune_size"])
    rank = {name: i for i, name in enumerate(names)}
    stats = stats.sort_values("target", key=lambda col: col.map(rank), kind="stable")  # panels in dataset order
    plain = [an.SCRATCH, *references]  # reference lines: models that do not transfer
    versus = " and ".join(["scratch", *[f"{m} (features)" for m in references]])
    for method in sorted(set(stats["method"]) - set(plain)):
        data = stats[stats["method"].isin([method, *plain])]
        series = data["source"].where(~data["method"].isin(plain), data["method"])
        curves = _curves(data, panel="target: " + data["target"], series=series, x="finetune_size")
        title = f"Part 1 — learning curves, {method} fine-tuning vs {versus}"
        figure = curves_figure(curves, title=title, xlabel="fine-tune samples", order=[*plain, *names])
        doc.figure(figure, f"part1_learning_{method}",
                   f"{title}: test MAE (mean ± std over seeds) per target, one line per pre-training source.")


def _gain_heatmaps(doc: _Document, cells: pd.DataFrame, names: list[str]) -> None:
    limit = min(GAIN_COLOR_LIMIT, 100 * cells["gain_mean"].abs().max())
    for method, by_method in cells.groupby("method"):
        panels = {f"fine-tune n = {_n(size)}": 100 * _matrix(group, "gain_mean", names)
                  for size, group in by_method.groupby("finetune_size")}
        title = f"Part 1 — transfer gain (%), {method} fine-tuning"
        figure = heatmap_figure(panels, title=title, colorbar_label="gain (%) = (MAE_scratch − MAE_TL) / MAE_scratch",
                                fmt="{:+.0f}", cmap="RdBu", vmin=-limit, vmax=limit)
        doc.figure(figure, f"part1_gain_{method}",
                   f"{title}, mean over seeds; blue: transfer helps, red: it hurts; grey: not run.")


def _best_sources(doc: _Document, cells: pd.DataFrame, names: list[str]) -> str:
    doc.heading("Which source helps each target most", 3)
    best = an.best_sources(cells)
    lines, summary = [], []
    for target in [n for n in names if n in set(best["target"])]:
        rows = list(best[best["target"] == target].itertuples())
        lines.append(f"**{target}**: " + "; ".join(
            f"with {r.method}, {r.source} helps most ({_pct(r.gain_mean)})" if r.gain_mean > 0
            else f"with {r.method}, no source helps (least harmful: {r.source}, {_pct(r.gain_mean)})" for r in rows))
        summary.append(f"{target} ← " + ", ".join(f"{r.source} ({r.method} {_pct(r.gain_mean)})" for r in rows))
    sizes = ", ".join(_n(s) for s in sorted(cells["finetune_size"].unique()))
    doc.text(f"Gain averaged over the fine-tune sizes ({sizes}) and seeds:")
    doc.bullets(lines)
    return "Best source per target (gain averaged over fine-tune sizes): " + "; ".join(summary) + "."


def _negative_cells(doc: _Document, cells: pd.DataFrame) -> str:
    doc.heading("Where transfer hurts", 3)
    negative = an.negative_cells(cells)
    helped = cells[cells["gain_mean"] > 0]
    summary = (f"Transfer helped in {len(helped)} of {len(cells)} cells ({_significantly(helped, 'n_seeds')}) "
               f"and hurt in {len(negative)} ({_significantly(negative, 'n_seeds')}).")
    doc.text(summary)
    if len(negative):
        doc.table(pd.DataFrame({
            "source → target": [_pair(s, t) for s, t in zip(negative["source"], negative["target"])],
            "method": negative["method"],
            "fine-tune n": negative["finetune_size"].map(_n),
            "gain": negative["gain_mean"].map(_pct),
            "MAE TL": [f"{_pm(m, s)} {u}"
                       for m, s, u in zip(negative["mae_mean"], negative["mae_std"], negative["unit"])],
            "MAE scratch": [f"{m:.4g} {u}" for m, u in zip(negative["scratch_mean"], negative["unit"])],
            "p (paired t)": [_p(p, n) for p, n in zip(negative["p_value"], negative["n_seeds"])],
        }))
    return summary + (" Negative cells are listed in Part 1." if len(negative) else "")


def _versus_baselines(doc: _Document, rows: pd.DataFrame, baselines: pd.DataFrame) -> list[str]:
    """Per target and size: did any transfer beat the best model that does not transfer, and by how much."""
    doc.heading("Transfer against the best model without transfer", 3)
    table = ys.versus_baselines(rows, baselines)
    if table.empty:
        doc.text("No transfer runs with scratch or feature-baseline rows to compare.")
        return ["Transfer vs the best non-transfer model: not answered (no Part 1 transfer or reference rows)."]
    if baselines.empty:
        doc.text("No feature-baseline rows (part1.baselines is off, or none finished): scratch is the only reference.")
    references = [c.removeprefix("mae_") for c in table.columns if c.startswith("mae_") and c not in
                  ("mae_mean_tl", "mae_std_tl", "mae_mean_ref", "mae_std_ref")]
    doc.text("Per target and fine-tune size, the transfer run (source and method) with the lowest test MAE against"
             " the lowest of the models that do not transfer — scratch, and the feature baselines (trees on matminer"
             " features) trained on the same subsets (train + val ids) and tested on the same test sets. Margin ="
             " (MAE_best_reference − MAE_best_TL) / MAE_best_reference: positive when transfer wins. Both sides are"
             " the best of several models on the test set, so a small margin is within selection noise; p is the"
             " paired t-test over seeds of the two picked models.")
    doc.table(pd.DataFrame({
        "target": table["target"], "fine-tune n": table["finetune_size"].map(_n),
        **{f"MAE {m}": [f"{v:.4g}" for v in table[f"mae_{m}"]] for m in references},
        "best transfer": [f"{s} ({m}) {_pm(v, e)}" for s, m, v, e in
                          zip(table["tl_source"], table["tl_method"], table["mae_mean_tl"], table["mae_std_tl"])],
        "best without transfer": [f"{m} {_pm(v, e)}" for m, v, e in
                                  zip(table["ref_method"], table["mae_mean_ref"], table["mae_std_ref"])],
        "margin": table["margin"].map(_pct), "unit": table["unit"],
        "p (paired t)": [_p(p, min(a, b)) for p, a, b in zip(table["p_value"], table["n_seeds_tl"], table["n_seeds_ref"])],
    }))
    doc.csv(table, "part1_versus_baselines", "Part 1 best transfer vs best non-transfer model per target and size")
    won = table[table["margin"] > 0]
    lines = []
    for target, group in table.groupby("target", sort=False):
        wins = group[group["margin"] > 0]
        sizes = ", ".join(f"n = {_n(r.finetune_size)} ({_pct(r.margin)})" for r in wins.itertuples())
        lines.append(f"{target}: transfer beats the best non-transfer model at {sizes}" if len(wins) else
                     f"{target}: no transfer beats the best non-transfer model at any size (best margin"
                     f" {_pct(group['margin'].max())}, at n = {_n(group.loc[group['margin'].idxmax(), 'finetune_size'])})")
    doc.bullets(lines)
    return [f"Transfer vs the best non-transfer model (scratch or feature baselines): transfer wins in {len(won)} of"
            f" {len(table)} (target, size) cells; " + "; ".join(lines) + "."]


def _transferability(doc: _Document, rows: pd.DataFrame, scores: pd.DataFrame | None) -> list[str]:
    """How well each transferability score, computed before fine-tuning, ranks the measured gains."""
    doc.heading("Transferability scores against the measured gains", 3)
    if scores is None or scores.empty:
        doc.text("No transferability.csv in the study directory (part1.scores off, or the study ran before it"
                 " existed: run it again to add the scores).")
        return ["Transferability scores vs gains: not answered (no transferability.csv)."]
    cells = ys.score_gain_cells(scores, transfer_gain(rows))
    correlation = ys.score_gain_correlation(cells)
    if correlation.empty:
        doc.text("No Part 1 cell has both a score and a measured gain.")
        return ["Transferability scores vs gains: not answered (no cell with both a score and a gain)."]
    doc.text("Each score is computed from the source's frozen encoder features on the fine-tune subset (train + val"
             " ids) before any fine-tuning: LogME (log evidence per sample of Bayesian linear regression) and"
             " krr_cv (minus the 5-fold cross-validated MAE of RBF kernel ridge, in target std units). Score and"
             " gain are means over seeds per (source, target, size), centred on their mean over the sources of the"
             " same target and size (both shift with the subset), then rank-correlated (Spearman) per target and"
             " pooled over targets. ρ > 0: the score ranks sources as the fine-tunes do.")
    doc.table(pd.DataFrame({
        "score": correlation["score"], "method": correlation["method"], "target": correlation["target"],
        "cells": correlation["n_cells"], "Spearman ρ": correlation["spearman_rho"].map(lambda r: f"{r:+.2f}"),
        "p": correlation["p_value"].map(lambda p: f"{p:.2g}"),
    }))
    doc.csv(cells, "part1_score_gain_cells", "Part 1 cells with their transferability scores and gains")
    points = cells.assign(panel=cells["score"] + " vs gain, " + cells["method"], x=cells["value_centred"],
                          y=100 * cells["gain_centred"], series=cells["target"])
    doc.figure(scatter_figure(points, title="Part 1 — transferability score vs measured transfer gain",
                              xlabel="score − mean over sources", ylabel="gain − mean over sources (pp)"),
               "part1_score_vs_gain", "Each point a (source, target, size) cell, means over seeds, centred per"
                                      " (target, size); colour: target.")
    pooled = correlation[correlation["target"] == "all"]
    return ["Transferability scores vs gains (pooled Spearman ρ over Part 1 cells): " + "; ".join(
        f"{r.score} with {r.method}: ρ = {r.spearman_rho:+.2f} (p = {r.p_value:.2g}, {r.n_cells} cells)"
        for r in pooled.itertuples()) + "."]


def _relatedness(doc: _Document, cells: pd.DataFrame, relatedness: pd.DataFrame | None) -> list[str]:
    doc.heading("Property relatedness and material overlap", 3)
    if relatedness is None:
        doc.text("No relatedness.csv in the study directory: the relatedness hypothesis is not tested.")
        return ["Relatedness vs transfer: not answered (no relatedness.csv)."]
    doc.text("Relatedness of two properties = |Spearman ρ| of their targets over the materials both datasets hold "
             "(a material = reduced formula + space group; NaN below 5 shared materials).")
    names = _order(set(relatedness["source"]) | set(relatedness["target"]))
    shared = _matrix(relatedness, "n_shared", names, DATASET_AXES)
    doc.figure(heatmap_figure({"": shared}, title="Material overlap between datasets",
                              colorbar_label="materials in both datasets", fmt="{:,.0f}", cmap="Greens",
                              vmin=0, vmax=max(1.0, float(np.nanmax(shared.to_numpy()))), log=True),
               "overlap", "Materials present in both datasets (reduced formula + space group); log colour scale.")
    doc.figure(heatmap_figure({"": _matrix(relatedness, "spearman_rho", names, DATASET_AXES)},
                              title="Rank correlation of the targets on shared materials",
                              colorbar_label="Spearman ρ", fmt="{:+.2f}", cmap="RdBu", vmin=-1, vmax=1),
               "relatedness", "Spearman ρ of two datasets' targets over their shared materials; relatedness = |ρ|.")
    doc.text(_overlap_sentence(relatedness))
    if cells.empty:
        doc.text("No Part 1 transfer gains: the relatedness hypothesis is not tested.")
        return ["Relatedness vs transfer: not answered (no Part 1 transfer gains)."]
    lines = [_relatedness_sentence(row) for row in an.relatedness_test(cells, relatedness).itertuples()]
    doc.bullets(lines)
    return [f"Relatedness vs transfer: {line}" for line in lines]


def _overlap_sentence(relatedness: pd.DataFrame) -> str:
    unordered = relatedness[relatedness["source"] < relatedness["target"]].sort_values("n_shared", ascending=False)
    top = ", ".join(f"{r.source}–{r.target} ({r.n_shared:,})" for r in unordered.head(3).itertuples())
    none = int((unordered["n_shared"] == 0).sum())
    disjoint = f"{none} of {len(unordered)} dataset pairs share none" if none else "every dataset pair shares some"
    return f"Materials recur across datasets: the largest overlaps (shared materials) are {top}; {disjoint}."


def _relatedness_sentence(row) -> str:
    if not np.isfinite(row.spearman_rho):
        return f"with {row.method}, too few pairs with a relatedness value ({row.n_pairs}) for a rank correlation."
    if row.p_value >= ALPHA:
        verdict = "no significant rank correlation, so the data do not support that related properties transfer better"
    elif row.spearman_rho > 0:
        verdict = "more related properties transfer better: the hypothesis holds"
    else:
        verdict = "more related properties transfer worse: the hypothesis is contradicted"
    return (f"with {row.method} fine-tuning, Spearman ρ = {row.spearman_rho:+.2f} between a pair's transfer gain "
            f"(mean over fine-tune sizes) and its property relatedness (p = {row.p_value:.2g}, n = {row.n_pairs} "
            f"pairs): {verdict}.")


def _part2(doc: _Document, rows: pd.DataFrame, cells1: pd.DataFrame) -> list[str]:
    doc.heading(an.PARTS[2])
    if rows.empty:
        doc.text("No finished Part 2 fine-tunes.")
        return ["Data vs physics: not answered (Part 2 has no finished fine-tunes)."]
    stats = an.scratch_per_source(an.mae_stats(rows, [*an.PAIR, "method", "pretrain_size"]))
    panel = stats["source"] + " → " + stats["target"]
    transfer = stats["method"] != an.SCRATCH
    curves = _curves(stats[transfer], panel=panel[transfer], series=stats.loc[transfer, "method"], x="pretrain_size")
    title = "Part 2 — fine-tune MAE vs pre-training size"
    baseline = stats[~transfer].assign(panel=panel[~transfer])
    doc.figure(curves_figure(curves, title=title, xlabel="pre-training samples", baseline=baseline), "part2_scaling",
               f"{title} (mean ± std over seeds); dashed: scratch on the same subsets.")
    cells = an.gain_cells(transfer_gain(rows), [*an.PAIR, "method", "pretrain_size"])
    growth = an.scaling_growth(cells)
    if growth.empty:
        doc.text("No scratch baselines paired with the Part 2 runs: gains cannot be computed.")
        return ["Data vs physics: not answered (Part 2 has no scratch baselines)."]
    doc.table(pd.DataFrame({
        "source → target": [_pair(s, t) for s, t in zip(growth["source"], growth["target"])],
        "method": growth["method"],
        "pre-training samples": [f"{_n(a)} → {_n(b)}" for a, b in zip(growth["smallest"], growth["largest"])],
        "gain at smallest": growth["gain_smallest"].map(_pct), "gain at largest": growth["gain_largest"].map(_pct),
        "change": growth["growth"].map(_pp),
    }))
    answer = _data_vs_physics(growth, cells1, finetune_size=float(rows["finetune_size"].median()))
    doc.text(answer)
    return [f"Data vs physics: {answer}"]


def _data_vs_physics(growth: pd.DataFrame, cells1: pd.DataFrame, finetune_size: float) -> str:
    """Gain change from more pre-training data (Part 2) against the gain spread across sources (Part 1)."""
    data = (f"Growing the pre-training set from {_n(growth['smallest'].min())} to {_n(growth['largest'].max())} "
            f"samples changed the transfer gain by {_pp(growth['growth'].mean())} on average over {len(growth)} curves "
            f"(from {_pp(growth['growth'].min())} to {_pp(growth['growth'].max())}).")
    comparable = cells1[cells1["method"].isin(growth["method"])]
    if comparable.empty:
        return data + " Part 1 has no comparable cells, so the source choice cannot be compared."
    size = min(comparable["finetune_size"].unique(), key=lambda s: abs(s - finetune_size))
    spread = an.source_spread(comparable, size)["spread"].mean()
    physics = (f"In Part 1 at fine-tune n = {_n(size)} (nearest to Part 2's {_n(finetune_size)}), picking the best "
               f"rather than the worst source changes the gain by {100 * spread:.1f} pp on average over targets.")
    verdict = ("More pre-training data moved the gain more than the choice of source property: over the range "
               "tested, the amount of data matters more than the physics."
               if abs(growth["growth"].mean()) > spread else
               "The choice of source property moved the gain more than more pre-training data did: over the range "
               "tested, physical relatedness matters more than the amount of data.")
    return " ".join([data, physics, verdict])


def _part3(doc: _Document, rows: pd.DataFrame) -> list[str]:
    doc.heading(an.PARTS[3])
    if rows.empty:
        doc.text("No finished Part 3 fine-tunes.")
        return ["Whole network vs head: not answered (Part 3 has no finished fine-tunes)."]
    stats = an.scratch_per_source(an.mae_stats(rows, [*an.PAIR, "method", "finetune_size"]))
    stats = stats.sort_values([*an.PAIR, "method"])
    title = "Part 3 — fine-tuning methods vs scratch"
    curves = _curves(stats, panel=stats["source"] + " → " + stats["target"], series=stats["method"], x="finetune_size")
    doc.figure(curves_figure(curves, title=title, xlabel="fine-tune samples"), "part3_methods",
               f"{title}: test MAE (mean ± std over seeds) per pair.")
    transfer = rows[rows["method"] != an.SCRATCH]
    versus = an.paired_difference(transfer, [*an.PAIR, "finetune_size"], "method", "heads")
    full = versus[versus["method"] == "full"].drop(columns="method")
    table = stats.assign(mae=[_pm(m, s) for m, s in zip(stats["mae_mean"], stats["mae_std"])])
    wide = table.pivot_table(index=[*an.PAIR, "finetune_size"], columns="method", values="mae", aggfunc="first")
    winner = stats.loc[stats.groupby([*an.PAIR, "finetune_size"])["mae_mean"].idxmin()]
    wide = wide.join(winner.set_index([*an.PAIR, "finetune_size"])["method"].rename("best")).reset_index()
    wide = wide.merge(full, on=[*an.PAIR, "finetune_size"], how="left").merge(
        stats.groupby("target", as_index=False)["unit"].first(), on="target")
    doc.table(pd.DataFrame({
        "source → target": [_pair(s, t) for s, t in zip(wide["source"], wide["target"])],
        "fine-tune n": wide["finetune_size"].map(_n),
        **{f"MAE {m}": wide[m].fillna("—") for m in METHOD_COLORS if m in wide.columns},
        "unit": wide["unit"],
        "best": wide["best"],
        "full − heads": [_pm(m, s) if np.isfinite(m) else "—" for m, s in zip(wide["diff_mean"], wide["diff_std"])],
        "p (paired t)": [_p(p, n) if np.isfinite(m) else "—"
                         for p, n, m in zip(wide["p_value"], wide["n_pairs"].fillna(0), wide["diff_mean"])],
    }))
    if full.empty:
        doc.text("Part 3 has no seed on which both full and heads finished: they cannot be compared.")
        return ["Whole network vs head: not answered (no paired full and heads runs in Part 3)."]
    lines = [_full_vs_heads(pair, group) for pair, group in full.groupby(an.PAIR)]
    doc.bullets(lines)
    wins = int((full["diff_mean"] < 0).sum())
    return [f"Whole network vs head: full fine-tuning beat heads in {wins} of {len(full)} (pair, size) cells. "
            + " ".join(lines)]


def _full_vs_heads(pair: tuple[str, str], group: pd.DataFrame) -> str:
    full_wins = group.loc[group["diff_mean"] < 0, "finetune_size"]
    heads_wins = group.loc[group["diff_mean"] >= 0, "finetune_size"]
    parts = [f"full beats heads at n = {_sizes(full_wins)}" if len(full_wins) else "full never beats heads",
             f"heads wins at n = {_sizes(heads_wins)}" if len(heads_wins) else "heads never wins"]
    significant = group[(group["p_value"] < ALPHA) & (group["n_pairs"] >= 2)]
    tail = f" (significant at n = {_sizes(significant['finetune_size'])})" if len(significant) else ""
    return f"**{_pair(*pair)}**: " + "; ".join(parts) + tail + "."


def _part4(doc: _Document, rows: pd.DataFrame) -> list[str]:
    doc.heading(an.PARTS[4])
    transfer = rows[rows["method"] != an.SCRATCH]
    if transfer.empty:
        doc.text("No finished Part 4 fine-tunes.")
        return ["Structure bias: not answered (Part 4 has no finished fine-tunes)."]
    source = ", ".join(sorted(set(transfer["source"])))
    target = ", ".join(sorted(set(transfer["target"])))
    stats = an.mae_stats(transfer, ["finetune_size", "method", "aux_lambda"]).sort_values(["finetune_size", "method"])
    baseline = an.mae_stats(rows[rows["method"] == an.SCRATCH], ["finetune_size"])
    title = f"Part 4 — {target} fine-tune MAE vs auxiliary weight λ (pre-trained on {source})"
    curves = _curves(stats, panel=_size_panel(stats["finetune_size"]), series=stats["method"], x="aux_lambda")
    doc.figure(curves_figure(curves, title=title, xlabel="λ (Bravais-lattice cross-entropy weight)",
                             xscale="symlog", baseline=baseline.assign(panel=_size_panel(baseline["finetune_size"]))),
               "part4_lambda", f"{title}; λ = 0 is plain pre-training; dashed: scratch.")
    effect = an.lambda_effect(rows)
    doc.text("The best λ is picked on the test MAE, so its advantage over λ = 0 is optimistic.")
    lines = [_lambda_sentence(row) for row in effect.itertuples()]
    doc.bullets(lines)
    helped = effect[effect["diff_mean"] < 0]
    return [f"Structure bias: a λ > 0 beat plain pre-training in {len(helped)} of {len(effect)} (fine-tune size, "
            f"method) cells ({_significantly(helped, 'n_pairs')}). " + " ".join(lines)]


def _lambda_sentence(row) -> str:
    where = f"n = {_n(row.finetune_size)}, {row.method}"
    if not np.isfinite(row.mae_plain):
        return f"{where}: no finished λ = 0 run to compare with."
    if row.aux_lambda == 0:
        return (f"{where}: plain pre-training (λ = 0) is best (MAE {row.mae_plain:.4g} {row.unit}); "
                "no λ > 0 lowered the MAE.")
    if not np.isfinite(row.diff_mean):
        paired = "no seed has both runs, so no paired difference"
    elif row.n_pairs < 2:
        paired = f"difference {row.diff_mean:.4g} {row.unit} (1 seed, no paired test)"
    else:
        verdict = "significant" if row.p_value < ALPHA else "within seed noise"
        paired = (f"difference {_pm(row.diff_mean, row.diff_std)} {row.unit} over {row.n_pairs:.0f} seeds "
                  f"(p = {row.p_value:.2g}): {verdict}")
    return f"{where}: best λ = {row.aux_lambda:g}, MAE {row.mae_mean:.4g} vs {row.mae_plain:.4g} at λ = 0; {paired}."


# --- HTML -------------------------------------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
img {{ max-width: 100%; }}
</style></head>
<body>
{body}
</body></html>
"""


def _html(markdown: str, root: Path, title: str) -> str:
    """The Markdown as one self-contained page: figures embedded as base64 PNG."""
    body = MarkdownIt("commonmark").enable("table").render(markdown)
    def embed(match: re.Match) -> str:
        data = base64.b64encode((root / match.group(1)).read_bytes()).decode()
        return f'src="data:image/png;base64,{data}"'
    return _PAGE.format(title=html.escape(title), body=re.sub(r'src="(figures/[^"]+\.png)"', embed, body))
