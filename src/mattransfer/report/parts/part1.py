"""Part 1's report section: learning curves and gain heatmaps per method, the best source of each target,
where transfer helps and hurts, transfer against the feature baselines, the transferability scores, the
universal models, and property relatedness."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mattransfer.report import analysis as an
from mattransfer.report import text as tx
from mattransfer.report import uncertainty as un
from mattransfer.report import yardsticks as ys
from mattransfer.report.figures import curves_figure, heatmap_figure, scatter_figure
from mattransfer.report.parts.base import Context, register_section
from mattransfer.study.results import transfer_gain
from mattransfer.study.transferability import read_scores


@register_section("part1", "Part 1 — relations between datasets")
def write(doc: tx.Document, context: Context) -> list[str]:
    rows, cells = context.rows("part1"), context.cells("part1")
    baselines = ys.baseline_rows(context.results, context.number("part1"))
    answers = [
        *_part1(doc, rows, cells, baselines),
        *_versus_baselines(doc, rows, baselines),
        *_transferability(doc, rows, read_scores(context.study_dir)),
        *_universal(doc, context),
        *_relatedness(doc, cells, an.load_relatedness(context.study_dir)),
    ]
    _zero_shot(doc, an.zero_shot_stats(context.results, context.number("part1")), rows)
    return answers


def _part1(doc: tx.Document, rows: pd.DataFrame, cells: pd.DataFrame,
           baselines: pd.DataFrame | None = None) -> list[str]:
    if rows.empty:
        doc.text("No finished Part 1 fine-tunes.")
        return ["Best source per target: not answered (Part 1 has no finished fine-tunes)."]
    names = tx.order(set(rows["source"]) - {""} | set(rows["target"]))
    _learning_curves(doc, rows, names, baselines)
    if cells.empty:
        doc.text("No scratch baselines paired with the transfer runs: transfer gains cannot be computed.")
        return ["Best source per target: not answered (Part 1 has no scratch baselines)."]
    _gain_heatmaps(doc, cells, names)
    answers = [_best_sources(doc, cells, names), _negative_cells(doc, cells)]
    doc.csv(cells, "part1_gain_cells", "Part 1 cells (gain, MAE, paired-test p)")
    _test_in_source(doc, rows)
    return answers


def _zero_shot(doc: tx.Document, zero: pd.DataFrame, rows: pd.DataFrame) -> None:
    """Each source's model as it is on the targets of its unit (``part1.zero_shot``), beside scratch on the
    target at its largest fine-tune size."""
    if zero.empty:
        return
    doc.heading("Sources without fine-tuning (zero-shot)", 3)
    scratch = an.mae_stats(rows[rows["method"] == an.SCRATCH], ["target", "finetune_size"])
    largest = scratch.sort_values("finetune_size").groupby("target").last()
    doc.text("Each pre-trained source's model, head and all, tested as it is on the fixed test set of every target"
             " whose property has its unit (mean ± std over seeds); scratch: the target's own model at its largest"
             " fine-tune size.")
    doc.table(pd.DataFrame({
        "source → target": zero["source"] + " → " + zero["target"], "test n": zero["n_test"].map(tx.n),
        "MAE zero-shot": [tx.pm(m, s) for m, s in zip(zero["mae_mean"], zero["mae_std"])],
        "seeds": zero["n_seeds"],
        "MAE scratch": [f"{tx.pm(largest.at[t, 'mae_mean'], largest.at[t, 'mae_std'])} (n = "
                        f"{tx.n(largest.at[t, 'finetune_size'])})" if t in largest.index else "—"
                        for t in zero["target"]],
    }))


def _test_in_source(doc: tx.Document, rows: pd.DataFrame) -> None:
    seen = an.test_in_source(rows)
    if seen.empty:
        return
    doc.heading("Test materials the source was pre-trained on", 3)
    doc.text("Per cell, how many of the target's test materials were in the source's pre-training set: the"
             " same structure (a different property of it was learnt), and the same reduced formula.")
    doc.table(pd.DataFrame({
        "source → target": seen["source"] + " → " + seen["target"], "test n": seen["n_test"].map(tx.n),
        "same structure": seen["test_same_structure"].map(tx.n), "same formula": seen["test_same_formula"].map(tx.n),
    }))


def _learning_curves(doc: tx.Document, rows: pd.DataFrame, names: list[str],
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
        curves = tx.curves(data, panel="target: " + data["target"], series=series, x="finetune_size")
        title = f"Part 1 — learning curves, {method} fine-tuning vs {versus}"
        figure = curves_figure(curves, title=title, xlabel="fine-tune samples", order=[*plain, *names])
        doc.figure(figure, f"part1_learning_{method}",
                   f"{title}: test MAE (mean ± std over seeds) per target, one line per pre-training source.")


def _gain_heatmaps(doc: tx.Document, cells: pd.DataFrame, names: list[str]) -> None:
    limit = min(tx.GAIN_COLOR_LIMIT, 100 * cells["gain_mean"].abs().max())
    for method, by_method in cells.groupby("method"):
        panels = {f"fine-tune n = {tx.n(size)}": 100 * tx.matrix(group, "gain_mean", names)
                  for size, group in by_method.groupby("finetune_size")}
        title = f"Part 1 — transfer gain (%), {method} fine-tuning"
        figure = heatmap_figure(panels, title=title, colorbar_label="transfer gain (%)",
                                fmt="{:+.0f}", cmap="RdBu", vmin=-limit, vmax=limit)
        doc.figure(figure, f"part1_gain_{method}",
                   f"{title}: (MAE_scratch − MAE_TL) / MAE_scratch, mean over seeds; blue: transfer helps, "
                   "red: it hurts; grey: not run. Whether a cell's difference is beyond noise: the cell table.")


def _best_sources(doc: tx.Document, cells: pd.DataFrame, names: list[str]) -> str:
    doc.heading("Which source helps each target most", 3)
    best = an.best_sources(cells)
    lines, summary = [], []
    for target in [n for n in names if n in set(best["target"])]:
        rows = list(best[best["target"] == target].itertuples())
        lines.append(f"**{target}**: " + "; ".join(
            f"with {r.method}, {r.source} helps most ({tx.pct(r.gain_mean)})" if r.gain_mean > 0
            else f"with {r.method}, no source helps (least harmful: {r.source}, {tx.pct(r.gain_mean)})" for r in rows))
        summary.append(f"{target} ← " + ", ".join(
            f"{r.source} ({r.method} {tx.pct(r.gain_mean)})" if r.gain_mean > 0
            else f"least harmful {r.source} ({r.method} {tx.pct(r.gain_mean)})" for r in rows))
    sizes = ", ".join(tx.n(s) for s in sorted(cells["finetune_size"].unique()))
    doc.text(f"Gain averaged over the fine-tune sizes ({sizes}) and seeds:")
    doc.bullets(lines)
    return ("Best source per target (where every source hurts: the least harmful; gain averaged over fine-tune "
            "sizes, whether each cell is beyond noise in Part 1): " + "; ".join(summary) + ".")


def _negative_cells(doc: tx.Document, cells: pd.DataFrame) -> str:
    doc.heading("Where transfer helps and where it hurts", 3)
    lines = [_count_sentence(row) for row in un.method_counts(cells, tx.ALPHA).itertuples()]
    doc.bullets(lines)
    negative = an.negative_cells(cells)
    if len(negative):
        doc.text("Cells with a negative mean gain, worst first; gain with its "
                 f"{100 * un.CONFIDENCE:.0f} % CI, called \"hurts\" only when the CI excludes zero:")
        doc.table(pd.DataFrame({
            "source → target": [tx.pair(s, t) for s, t in zip(negative["source"], negative["target"])],
            "method": negative["method"],
            "fine-tune n": negative["finetune_size"].map(tx.n),
            "gain": [tx.gain_ci(*v) for v in zip(negative["gain_mean"], negative["gain_low"], negative["gain_high"])],
            "call": negative["call"],
            "MAE TL": [tx.mae_n(tx.pm(m, s), u, n) for m, s, u, n in
                       zip(negative["mae_mean"], negative["mae_std"], negative["unit"], negative["n_test"])],
            "MAE scratch": [f"{m:.4g} {u}" for m, u in zip(negative["scratch_mean"], negative["unit"])],
            "p (paired t, seeds)": [tx.p(p, n) for p, n in zip(negative["p_value"], negative["n_seeds"])],
            "q (BH)": negative["q_value"].map(tx.q),
        }))
    return "Transfer vs scratch per method: " + " ".join(lines) + (" Negative cells are listed in Part 1."
                                                                   if len(negative) else "")


def _count_sentence(row) -> str:
    """One method's helps / hurts counts: by CI, and after FDR control."""
    if row.tested == 0:
        return (f"with {row.method}: {row.cells} cells, none with a confidence interval (one seed and no test "
                f"predictions), so no cell is called helped or hurt; as uncalled point estimates, the gain is "
                f"positive in {row.positive} and negative in {row.negative}.")
    return (f"with {row.method}: of {row.cells} cells, {row.tested} with a CI; transfer helps in {row.helps} and "
            f"hurts in {row.hurts} (CI excludes 0), {row.within_noise} within noise; after Benjamini–Hochberg "
            f"FDR control at {tx.ALPHA:g} over {row.fdr_tested} tested cells, {row.helps_fdr} help and "
            f"{row.hurts_fdr} hurt.")


def _universal(doc: tx.Document, context: Context) -> list[str]:
    """Does a package's universal pre-trained model beat the best pre-training on one of the study's properties?

    A cell where some of either side's planned fine-tunes have no result yet is provisional, as its best of
    that side may change."""
    universal = an.universal_sources(context.rows("part1"))
    if not universal:
        return []
    paired, study_dir = context.paired("part1"), context.study_dir
    pending = an.transfers_without_result(study_dir, context.results, context.number("part1"))
    doc.heading("Universal vs property-specific pre-training", 3)
    both = pd.concat([an.universal_vs_specific(paired, universal),
                      an.universal_vs_specific(paired, universal, any_method=True)])
    if both.empty:
        doc.text(f"No (target, method, size) cell has both a universal source ({', '.join(sorted(universal))}) and a"
                 " property-specific one fine-tuned: nothing to compare.")
        return ["Universal vs property-specific pre-training: no cell has both."]
    keys = ["target", "method", "finetune_size"]
    cells = un.with_intervals(an.gain_cells(both, keys), both, keys, study_dir)
    cells = cells.merge(both.groupby(keys, as_index=False)[["universal", "specific"]].first(), on=keys)
    not_run = [_without_result(pending, *cell) for cell in zip(*(cells[k] for k in keys))]
    doc.text("Per target, method and fine-tune size: the universal source and the property-specific source with "
             "the lowest mean test MAE, and the universal one's gain over it, (MAE_specific − MAE_universal) / "
             f"MAE_specific, with its {100 * un.CONFIDENCE:.0f} % CI (paired over test structures and seeds); rows "
             f"\"{an.ANY_METHOD}\" compare the best (source, method) of each side. Both sides are picked by their test "
             "MAE, so each is its best case.")
    doc.table(pd.DataFrame({
        "target": cells["target"], "method": cells["method"], "fine-tune n": cells["finetune_size"].map(tx.n),
        "universal": [f"{u}: {tx.mae_n(tx.pm(m, sd), unit, n)}" for u, m, sd, unit, n in
                      zip(cells["universal"], cells["mae_mean"], cells["mae_std"], cells["unit"], cells["n_test"])],
        "property-specific": [f"{sp}: {m:.4g} {unit}" for sp, m, unit in
                              zip(cells["specific"], cells["scratch_mean"], cells["unit"])],
        "universal's gain": [tx.gain_ci(*v) for v in zip(cells["gain_mean"], cells["gain_low"], cells["gain_high"])],
        "call": cells["call"].replace({"helps": "universal better", "hurts": "specific better"}),
        "without a result": [f"universal {u}, specific {sp}" if u or sp else "" for u, sp in not_run],
    }))
    provisional = pd.Series([any(n) for n in not_run], index=cells.index)
    if provisional.any():
        doc.text("\"Without a result\": fine-tunes of the cell's candidates on each side not run yet (or failed); "
                 "those cells are provisional, as the best of a side may change.")
    counts = []
    for method, group in cells.groupby("method"):
        calls = group["call"].value_counts()
        open_cells = int(provisional[group.index].sum())
        counts.append(f"with {method}, the universal model is better in {calls.get('helps', 0)}, the property-specific "
                      f"pre-training in {calls.get('hurts', 0)}, within noise in {calls.get('within noise', 0)} and "
                      f"untested in {calls.get('untested', 0)} of {len(group)} cells"
                      + (f" ({open_cells} provisional: fine-tunes without a result)" if open_cells else ""))
    return ["Universal vs property-specific pre-training (best of each per cell): " + "; ".join(counts) + "."]


def _without_result(pending: pd.DataFrame, target: str, method: str, size: int) -> tuple[int, int]:
    """(universal, property-specific) fine-tunes of a comparison cell without a result; `ANY_METHOD` counts
    every method."""
    cell = pending[(pending["target"] == target) & (pending["finetune_size"] == size)]
    if method != an.ANY_METHOD:
        cell = cell[cell["method"] == method]
    return int(cell["universal"].sum()), int((~cell["universal"]).sum())


def _versus_baselines(doc: tx.Document, rows: pd.DataFrame, baselines: pd.DataFrame) -> list[str]:
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
        "target": table["target"], "fine-tune n": table["finetune_size"].map(tx.n),
        **{f"MAE {m}": [f"{v:.4g}" for v in table[f"mae_{m}"]] for m in references},
        "best transfer": [f"{s} ({m}) {tx.pm(v, e)}" for s, m, v, e in
                          zip(table["tl_source"], table["tl_method"], table["mae_mean_tl"], table["mae_std_tl"])],
        "best without transfer": [f"{m} {tx.pm(v, e)}" for m, v, e in
                                  zip(table["ref_method"], table["mae_mean_ref"], table["mae_std_ref"])],
        "margin": table["margin"].map(tx.pct), "unit": table["unit"],
        "p (paired t)": [tx.p(p, min(a, b))
                         for p, a, b in zip(table["p_value"], table["n_seeds_tl"], table["n_seeds_ref"])],
    }))
    doc.csv(table, "part1_versus_baselines", "Part 1 best transfer vs best non-transfer model per target and size")
    won = table[table["margin"] > 0]
    lines = []
    for target, group in table.groupby("target", sort=False):
        wins = group[group["margin"] > 0]
        sizes = ", ".join(f"n = {tx.n(r.finetune_size)} ({tx.pct(r.margin)})" for r in wins.itertuples())
        lines.append(f"{target}: transfer beats the best non-transfer model at {sizes}" if len(wins) else
                     f"{target}: no transfer beats the best non-transfer model at any size (best margin"
                     f" {tx.pct(group['margin'].max())},"
                     f" at n = {tx.n(group.loc[group['margin'].idxmax(), 'finetune_size'])})")
    doc.bullets(lines)
    return [f"Transfer vs the best non-transfer model (scratch or feature baselines): transfer wins in {len(won)} of"
            f" {len(table)} (target, size) cells; " + "; ".join(lines) + "."]


def _transferability(doc: tx.Document, rows: pd.DataFrame, scores: pd.DataFrame | None) -> list[str]:
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


def _relatedness(doc: tx.Document, cells: pd.DataFrame, relatedness: pd.DataFrame | None) -> list[str]:
    doc.heading("Property relatedness and material overlap", 3)
    if relatedness is None:
        doc.text("No relatedness.csv in the study directory: the relatedness hypothesis is not tested.")
        return ["Relatedness vs transfer: not answered (no relatedness.csv)."]
    doc.text("Relatedness of two properties = |Spearman ρ| of their targets over the materials both datasets hold "
             "(a material = reduced formula + space group; NaN below 5 shared materials).")
    names = tx.order(set(relatedness["source"]) | set(relatedness["target"]))
    shared = tx.matrix(relatedness, "n_shared", names, tx.DATASET_AXES)
    doc.figure(heatmap_figure({"": shared}, title="Material overlap between datasets",
                              colorbar_label="materials in both datasets", fmt="{:,.0f}", cmap="Greens",
                              vmin=0, vmax=max(1.0, float(np.nanmax(shared.to_numpy()))), log=True),
               "overlap", "Materials present in both datasets (reduced formula + space group); log colour scale.")
    doc.figure(heatmap_figure({"": tx.matrix(relatedness, "spearman_rho", names, tx.DATASET_AXES)},
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
    if row.p_value >= tx.ALPHA:
        verdict = "no significant rank correlation, so the data do not support that related properties transfer better"
    elif row.spearman_rho > 0:
        verdict = "more related properties transfer better: the hypothesis holds"
    else:
        verdict = "more related properties transfer worse: the hypothesis is contradicted"
    return (f"with {row.method} fine-tuning, Spearman ρ = {row.spearman_rho:+.2f} between a pair's transfer gain "
            f"(mean over fine-tune sizes) and its property relatedness (p = {row.p_value:.2g}, n = {row.n_pairs} "
            f"pairs): {verdict}.")
