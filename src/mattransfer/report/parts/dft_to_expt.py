"""The DFT → experiment section: the DFT rows removed for the experimental test set, learning curves on the
experimental test set (scratch, each transfer method and the feature baselines, alone and with the DFT model's
prediction as a feature), the DFT model on its own DFT test set and, without fine-tuning, on the experimental
one (zero-shot), and each of them against scratch, paired by seed."""

from __future__ import annotations

import json

import pandas as pd

from mattransfer.report import analysis as an
from mattransfer.report import text as tx
from mattransfer.report.figures import curves_figure
from mattransfer.report.parts.base import Context, register_section
from mattransfer.study.layout import StudyDir
from mattransfer.training.baselines import MODELS as BASELINE_MODELS

PART = "dft_to_expt"


@register_section(PART, "DFT → experiment")
def write(doc: tx.Document, context: Context) -> list[str]:
    doc.text(*_exclusions(context.study_dir))
    results = context.results
    done = results[(results["part"] == context.number(PART)) & (results["status"] == "done")]
    zero = an.zero_shot_stats(results, context.number(PART))
    answers = [f"DFT → experiment: the DFT model ({r.source}) without fine-tuning (zero-shot) on {r.target}'s test "
               f"set (n_test {tx.n(r.n_test)}): MAE {tx.pm(r.mae_mean, r.mae_std)} {r.unit} over {r.n_seeds} seed(s)."
               for r in zero.itertuples()]
    doc.text(*answers)
    baselines = done[done["kind"] == "baseline"]  # on the features alone, or with the DFT prediction too
    rows = pd.concat([context.rows(PART), baselines])
    if rows.empty:
        doc.text("No finished DFT → experiment fine-tunes.")
        return [*answers, "DFT → experiment: not answered (no finished fine-tunes)."]
    target, unit, n_test = rows["target"].iloc[0], rows["unit"].iloc[0], rows["n_test"].max()
    stats = an.mae_stats(rows, ["method", "finetune_size"])
    title = "DFT → experiment"
    curves = tx.curves(stats, panel=pd.Series(target, index=stats.index), series=stats["method"], x="finetune_size")
    lines = zero[zero["target"] == target].assign(panel=target, label="DFT model, zero-shot")
    doc.figure(curves_figure(curves, title=title, xlabel="experimental samples (train + val)", baseline=lines),
               "dft_to_expt_curves", f"{title}: {target} test MAE (mean ± std over seeds) against the experimental "
               "samples; scratch: no pre-training; dotted: the DFT model without fine-tuning.")
    own = an.mae_stats(done[done["kind"] == "pretrain"], ["target", "pretrain_size"])
    doc.text(*[f"The DFT model ({r.target}, {tx.n(r.pretrain_size)} samples) on its own DFT test set: MAE "
               f"{tx.pm(r.mae_mean, r.mae_std)} {r.unit} over {r.n_seeds} seed(s)." for r in own.itertuples()])
    wide = stats.assign(mae=[tx.pm(m, s) for m, s in zip(stats["mae_mean"], stats["mae_std"])]).pivot_table(
        index="finetune_size", columns="method", values="mae", aggfunc="first")
    methods = [an.SCRATCH, *sorted(set(wide.columns) - {an.SCRATCH})]
    doc.table(pd.DataFrame({"experimental n": wide.index.map(tx.n),
                            **{f"MAE {m}": wide[m].fillna("—").to_numpy() for m in methods if m in wide.columns}}))
    versus = an.paired_difference(rows, ["finetune_size"], "method", an.SCRATCH)
    lines = [f"n = {tx.n(r.finetune_size)}, {r.method}: MAE − scratch {tx.pm(r.diff_mean, r.diff_std)} {unit} "
             f"(p = {tx.p(r.p_value, r.n_pairs)}, {r.n_pairs:.0f} seeds)" for r in versus.itertuples()]
    doc.text(f"Every MAE is on {target}'s fixed test set (n_test {tx.n(n_test)}), whose compositions the DFT "
             "pre-training never saw; transfer minus scratch is paired by seed (the same subset), p: paired t-test.")
    doc.bullets(lines)
    transfers = versus[~versus["method"].isin(BASELINE_MODELS)]  # the DFT model's knowledge used, one way or another
    largest = transfers[transfers["finetune_size"] == transfers["finetune_size"].max()]
    if largest.empty:
        return [*answers, "DFT → experiment: no seed has both a transfer and a scratch run."]
    best = largest.loc[largest["diff_mean"].idxmin()]
    return [*answers, f"DFT → experiment ({target}, n_test {tx.n(n_test)}): at the largest experimental set "
            f"(n = {tx.n(best.finetune_size)}) the best transfer, {best.method}, differs from scratch by "
            f"{tx.pm(best.diff_mean, best.diff_std)} {unit} MAE (p = {tx.p(best.p_value, best.n_pairs)}; picked on the "
            "test set)."]


def _exclusions(study_dir) -> list[str]:
    """What the study's data preparation removed from each DFT set for the experimental test set."""
    path = StudyDir(study_dir).exclusions_file
    if not path.is_file():
        return []
    return [f"The DFT pre-training data {e['source']} ({tx.n(e['rows'])} rows) lost {tx.n(e['removed'])} rows whose "
            f"composition is that of one of the {tx.n(e['target_test_rows'])} rows of {e['target']}'s fixed test "
            f"set; it was pre-trained on the {tx.n(e['kept'])} left." for e in json.loads(path.read_text()).values()]
