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
from mattransfer.report import uncertainty as un
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
    f"Every cell's gain carries a {100 * un.CONFIDENCE:.0f} % confidence interval: with the tasks' "
    "`test_predictions.csv`, a paired bootstrap over the test structures (`scipy.stats.bootstrap`, "
    f"{un.N_RESAMPLES} resamples, percentile; one resample index for the transfer and the scratch errors of "
    "every seed), which measures test-set noise for one seed too; without predictions and with ≥2 seeds, the "
    "t interval of the mean per-seed gain; else none (untested). A difference is called (helps / hurts) only "
    "when its CI excludes zero, else it is within noise. n_test is the number of test structures. "
    "Over seeds: a two-sided paired t-test (`scipy.stats.ttest_rel`) of TL vs scratch test MAE (n/a with 1 seed), "
    f"and a Wilcoxon signed-rank test from {un.WILCOXON_MIN_PAIRS} seeds. Helps / hurts counts are per method and "
    "also given after Benjamini–Hochberg control of the false discovery rate "
    "(`scipy.stats.false_discovery_control`) over each method's tested cells, each cell's p from a paired "
    f"t-test over test structures (else over seeds). Scratch runs whose R² is ≥ {un.R2_DROP} below the same "
    "target's scratch at the next smaller size (or its other seeds) are flagged as broken and no gain is "
    f"computed against them. Statements call a difference significant at p < {ALPHA}."
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
    broken = un.broken_baselines(results)
    _broken_baselines(doc, broken)
    rows1 = an.finetune_rows(results, 1)
    paired1 = un.usable(transfer_gain(rows1), broken)
    cells1 = _cells(paired1, [*an.PAIR, "method", "finetune_size"], study_dir)
    baselines1 = ys.baseline_rows(results, 1)
    answers = [
        *_part1(doc, rows1, cells1, baselines1),
        *_versus_baselines(doc, rows1, baselines1),
        *_transferability(doc, rows1, read_scores(study_dir)),
        *_universal(doc, rows1, paired1, study_dir),
        *_relatedness(doc, cells1, an.load_relatedness(study_dir)),
        *_part2(doc, an.finetune_rows(results, 2), cells1, paired1, broken, study_dir),
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


def _gain_ci(gain: float, low: float, high: float) -> str:
    """A gain with its CI: "+12.0 % [+3.1, +20.2]"; no CI: "+12.0 % (no CI)"."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{_pct(gain)} (no CI)"
    return f"{_pct(gain)} [{100 * low:+.1f}, {100 * high:+.1f}]"


def _pp_ci(change: float, low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{_pp(change)} (no CI)"
    return f"{_pp(change)} [{100 * low:+.1f}, {100 * high:+.1f}]"


def _q(q_value: float) -> str:
    return f"{q_value:.2g}" if np.isfinite(q_value) else "n/a"


def _mae_n(mae: str, unit: str, n_test: float) -> str:
    """An MAE with its test-set size."""
    return f"{mae} {unit} (n_test {_n(n_test)})" if np.isfinite(n_test) else f"{mae} {unit}"


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
        return "not in this study"
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


def _cells(paired: pd.DataFrame, keys: list[str], study_dir: Path) -> pd.DataFrame:
    """``gain_cells`` with CIs, calls and BH q-values."""
    return un.with_intervals(an.gain_cells(paired, keys), paired, keys, study_dir)


def _broken_baselines(doc: _Document, broken: pd.DataFrame) -> None:
    if broken.empty:
        return
    doc.heading("Scratch baselines flagged as broken", 3)
    doc.text(f"These scratch runs have a test R² at least {un.R2_DROP} below their reference; no transfer gain is "
             "computed against them (their fine-tunes appear in the figures, not in the gain tables).")
    doc.table(pd.DataFrame({
        "target": broken["target"], "fine-tune n": broken["finetune_size"].map(_n), "seed": broken["seed"],
        "test MAE": [f"{m:.4g} {u}" for m, u in zip(broken["test_mae"], broken["unit"])],
        "R²": broken["test_r2"].map("{:.2f}".format),
        "reference": [f"{w} (R² {r:.2f})" for w, r in zip(broken["reference"], broken["reference_r2"])],
    }))


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
        figure = heatmap_figure(panels, title=title, colorbar_label="transfer gain (%)",
                                fmt="{:+.0f}", cmap="RdBu", vmin=-limit, vmax=limit)
        doc.figure(figure, f"part1_gain_{method}",
                   f"{title}: (MAE_scratch − MAE_TL) / MAE_scratch, mean over seeds; blue: transfer helps, "
                   "red: it hurts; grey: not run. Whether a cell's difference is beyond noise: the cell table.")


def _best_sources(doc: _Document, cells: pd.DataFrame, names: list[str]) -> str:
    doc.heading("Which source helps each target most", 3)
    best = an.best_sources(cells)
    lines, summary = [], []
    for target in [n for n in names if n in set(best["target"])]:
        rows = list(best[best["target"] == target].itertuples())
        lines.append(f"**{target}**: " + "; ".join(
            f"with {r.method}, {r.source} helps most ({_pct(r.gain_mean)})" if r.gain_mean > 0
            else f"with {r.method}, no source helps (least harmful: {r.source}, {_pct(r.gain_mean)})" for r in rows))
        summary.append(f"{target} ← " + ", ".join(
            f"{r.source} ({r.method} {_pct(r.gain_mean)})" if r.gain_mean > 0
            else f"least harmful {r.source} ({r.method} {_pct(r.gain_mean)})" for r in rows))
    sizes = ", ".join(_n(s) for s in sorted(cells["finetune_size"].unique()))
    doc.text(f"Gain averaged over the fine-tune sizes ({sizes}) and seeds:")
    doc.bullets(lines)
    return ("Best source per target (where every source hurts: the least harmful; gain averaged over fine-tune "
            "sizes, whether each cell is beyond noise in Part 1): " + "; ".join(summary) + ".")


def _negative_cells(doc: _Document, cells: pd.DataFrame) -> str:
    doc.heading("Where transfer helps and where it hurts", 3)
    lines = [_count_sentence(row) for row in un.method_counts(cells, ALPHA).itertuples()]
    doc.bullets(lines)
    negative = an.negative_cells(cells)
    if len(negative):
        doc.text("Cells with a negative mean gain, worst first; gain with its "
                 f"{100 * un.CONFIDENCE:.0f} % CI, called \"hurts\" only when the CI excludes zero:")
        doc.table(pd.DataFrame({
            "source → target": [_pair(s, t) for s, t in zip(negative["source"], negative["target"])],
            "method": negative["method"],
            "fine-tune n": negative["finetune_size"].map(_n),
            "gain": [_gain_ci(*v) for v in zip(negative["gain_mean"], negative["gain_low"], negative["gain_high"])],
            "call": negative["call"],
            "MAE TL": [_mae_n(_pm(m, s), u, n) for m, s, u, n in
                       zip(negative["mae_mean"], negative["mae_std"], negative["unit"], negative["n_test"])],
            "MAE scratch": [f"{m:.4g} {u}" for m, u in zip(negative["scratch_mean"], negative["unit"])],
            "p (paired t, seeds)": [_p(p, n) for p, n in zip(negative["p_value"], negative["n_seeds"])],
            "q (BH)": negative["q_value"].map(_q),
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
            f"FDR control at {ALPHA:g} over {row.fdr_tested} tested cells, {row.helps_fdr} help and "
            f"{row.hurts_fdr} hurt.")


def _universal(doc: _Document, rows: pd.DataFrame, paired: pd.DataFrame, study_dir: Path) -> list[str]:
    """Does a package's universal pre-trained model beat the best pre-training on one of the study's properties?"""
    universal = an.universal_sources(rows)
    if not universal:
        return []
    doc.heading("Universal vs property-specific pre-training", 3)
    both = an.universal_vs_specific(paired, universal)
    if both.empty:
        doc.text(f"No (target, method, size) cell has both a universal source ({', '.join(sorted(universal))}) and a"
                 " property-specific one fine-tuned: nothing to compare.")
        return ["Universal vs property-specific pre-training: no cell has both."]
    keys = ["target", "method", "finetune_size"]
    cells = un.with_intervals(an.gain_cells(both, keys), both, keys, study_dir)
    cells = cells.merge(both.groupby(keys, as_index=False)[["universal", "specific"]].first(), on=keys)
    doc.text("Per target, method and fine-tune size: the universal source and the property-specific source with "
             "the lowest mean test MAE, and the universal one's gain over it, (MAE_specific − MAE_universal) / "
             f"MAE_specific, with its {100 * un.CONFIDENCE:.0f} % CI (paired over test structures and seeds). Both "
             "are picked by their test MAE, so each side is its best case.")
    doc.table(pd.DataFrame({
        "target": cells["target"], "method": cells["method"], "fine-tune n": cells["finetune_size"].map(_n),
        "universal": [f"{u}: {_mae_n(_pm(m, sd), unit, n)}" for u, m, sd, unit, n in
                      zip(cells["universal"], cells["mae_mean"], cells["mae_std"], cells["unit"], cells["n_test"])],
        "property-specific": [f"{sp}: {m:.4g} {unit}" for sp, m, unit in
                              zip(cells["specific"], cells["scratch_mean"], cells["unit"])],
        "universal's gain": [_gain_ci(*v) for v in zip(cells["gain_mean"], cells["gain_low"], cells["gain_high"])],
        "call": cells["call"].replace({"helps": "universal better", "hurts": "specific better"}),
    }))
    counts = []
    for method, group in cells.groupby("method"):
        calls = group["call"].value_counts()
        counts.append(f"with {method}, the universal model is better in {calls.get('helps', 0)}, the property-specific "
                      f"pre-training in {calls.get('hurts', 0)}, within noise in {calls.get('within noise', 0)} and "
                      f"untested in {calls.get('untested', 0)} of {len(group)} cells")
    return ["Universal vs property-specific pre-training (best of each per cell): " + "; ".join(counts) + "."]


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


def _part2(doc: _Document, rows: pd.DataFrame, cells1: pd.DataFrame, paired1: pd.DataFrame, broken: pd.DataFrame,
           study_dir: Path) -> list[str]:
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
               f"{title} (mean ± std over seeds); dashed: scratch on the same subsets and seeds.")
    paired = transfer_gain(rows)  # each fine-tune against the scratch run of its own size and seed
    left_out = sorted(set(paired.loc[paired["scratch_hash"].isin(broken["task_hash"]), "target"]))
    if left_out:
        doc.text(f"Left out: the Part 2 curves of {', '.join(left_out)}, whose scratch baseline is flagged as "
                 "broken (see Tasks); their MAEs are in the figure.")
    paired = un.usable(paired, broken)
    cells = _cells(paired, [*an.PAIR, "method", "pretrain_size"], study_dir)
    growth = an.scaling_growth(cells)
    if growth.empty:
        doc.text("No usable scratch baselines paired with the Part 2 runs: gains cannot be computed.")
        return ["Data vs physics: not answered (Part 2 has no usable scratch baselines)."]
    gain = cells.set_index([*an.PAIR, "method", "pretrain_size"])
    change = [un.paired_gain_change(paired[(paired["source"] == g.source) & (paired["target"] == g.target)
                                           & (paired["method"] == g.method)],
                                    "pretrain_size", g.smallest, g.largest, study_dir) for g in growth.itertuples()]
    growth = growth.assign(change=[c[0] for c in change], change_low=[c[1] for c in change],
                           change_high=[c[2] for c in change])

    def at(g, size: str) -> str:
        cell = gain.loc[(g.source, g.target, g.method, getattr(g, size))]
        return _gain_ci(cell["gain_mean"], cell["gain_low"], cell["gain_high"])
    doc.table(pd.DataFrame({
        "source → target": [_pair(s, t) for s, t in zip(growth["source"], growth["target"])],
        "method": growth["method"],
        "pre-training samples": [f"{_n(a)} → {_n(b)}" for a, b in zip(growth["smallest"], growth["largest"])],
        "gain at smallest": [at(g, "smallest") for g in growth.itertuples()],
        "gain at largest": [at(g, "largest") for g in growth.itertuples()],
        "change": [_pp_ci(*v) for v in zip(growth["change"], growth["change_low"], growth["change_high"])],
        "n_test": [_n(gain.loc[(g.source, g.target, g.method, g.largest), "n_test"]) for g in growth.itertuples()],
    }))
    lines = [_data_vs_physics(g, cells1, paired1, float(rows["finetune_size"].median()), study_dir)
             for g in growth.itertuples()]
    doc.bullets(lines)
    return ["Data vs physics, like for like per target: " + " ".join(lines)]


def _data_vs_physics(growth, cells1: pd.DataFrame, paired1: pd.DataFrame, finetune_size: float,
                     study_dir: Path) -> str:
    """For one Part 2 curve: the gain change from its smallest to its largest pre-training set, against
    Part 1's best-minus-worst source spread on the same target with the same method, both with CIs."""
    target, method = growth.target, growth.method
    data = (f"**{target}** ({method}): {growth.source} pre-trained on {_n(growth.smallest)} → {_n(growth.largest)} "
            f"samples changed the gain by {_pp_ci(growth.change, growth.change_low, growth.change_high)}")
    comparable = cells1[(cells1["target"] == target) & (cells1["method"] == method)]
    if comparable["source"].nunique() < 2:
        return data + f"; Part 1 has fewer than two sources for {target} with {method}: no source spread to compare."
    size = min(comparable["finetune_size"].unique(), key=lambda s: abs(s - finetune_size))
    at_size = comparable[comparable["finetune_size"] == size]
    best = at_size.loc[at_size["gain_mean"].idxmax(), "source"]
    worst = at_size.loc[at_size["gain_mean"].idxmin(), "source"]
    cell = paired1[(paired1["target"] == target) & (paired1["method"] == method) & (paired1["finetune_size"] == size)]
    spread, low, high, _ = un.paired_gain_change(cell, "source", worst, best, study_dir)
    pretrain = _sizes(cell.loc[cell["source"].isin([best, worst]), "pretrain_size"].unique())
    physics = (f"in Part 1 (pre-training {pretrain} samples, fine-tune n = {_n(size)}, nearest to Part 2's "
               f"{_n(finetune_size)}) the best source ({best}) minus the worst ({worst}) is {_pp_ci(spread, low, high)}"
               " (both picked on these results, so an upper estimate)")
    return f"{data}; {physics}: {_larger(growth.change_low, growth.change_high, low, high)}."


def _larger(data_low: float, data_high: float, spread_low: float, spread_high: float) -> str:
    """Which moved the gain more, called only when the CIs of the two magnitudes do not overlap."""
    if not all(np.isfinite([data_low, data_high, spread_low, spread_high])):
        return "without CIs the two are not compared"
    # the smallest and largest size of the data effect its CI allows (0 when it straddles zero)
    data_min = 0.0 if data_low <= 0 <= data_high else min(abs(data_low), abs(data_high))
    data_max = max(abs(data_low), abs(data_high))
    if data_min > spread_high:
        return "more pre-training data moved the gain more than the choice of source"
    if spread_low > data_max:
        return "the choice of source moved the gain more than more pre-training data"
    return "the two overlap within their CIs: neither is called larger"


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
        rows.groupby("target", as_index=False).agg(unit=("unit", "first"), n_test=("n_test", "max")), on="target")
    doc.table(pd.DataFrame({
        "source → target": [_pair(s, t) for s, t in zip(wide["source"], wide["target"])],
        "fine-tune n": wide["finetune_size"].map(_n),
        **{f"MAE {m}": wide[m].fillna("—") for m in METHOD_COLORS if m in wide.columns},
        "unit": wide["unit"],
        "n_test": wide["n_test"].map(_n),
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
    scratch_best = int((wide["best"] == an.SCRATCH).sum())
    return [f"Whole network vs head: full fine-tuning beat heads in {wins} of {len(full)} (pair, size) cells "
            f"(mean MAE); scratch had the lowest mean MAE of all methods in {scratch_best} of {len(wide)}. "
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
    doc.text("The best λ is picked on the test MAE, so its advantage over λ = 0 is optimistic. Every MAE here is on "
             f"{target}'s fixed test set (n_test {_n(transfer['n_test'].max())}).")
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
