"""Part 4's report section: fine-tune MAE against the weight λ of the Bravais-lattice loss in pre-training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mattransfer.report import analysis as an
from mattransfer.report import text as tx
from mattransfer.report.figures import curves_figure
from mattransfer.report.parts.base import Context, register_section


@register_section("part4", "Part 4 — structure-biased pre-training")
def write(doc: tx.Document, context: Context) -> list[str]:
    return _part4(doc, context.rows("part4"))


def _part4(doc: tx.Document, rows: pd.DataFrame) -> list[str]:
    transfer = rows[rows["method"] != an.SCRATCH]
    if transfer.empty:
        doc.text("No finished Part 4 fine-tunes.")
        return ["Structure bias: not answered (Part 4 has no finished fine-tunes)."]
    source = ", ".join(sorted(set(transfer["source"])))
    target = ", ".join(sorted(set(transfer["target"])))
    stats = an.mae_stats(transfer, ["finetune_size", "method", "aux_lambda"]).sort_values(["finetune_size", "method"])
    baseline = an.mae_stats(rows[rows["method"] == an.SCRATCH], ["finetune_size"])
    title = f"Part 4 — {target} fine-tune MAE vs auxiliary weight λ (pre-trained on {source})"
    curves = tx.curves(stats, panel=tx.size_panel(stats["finetune_size"]), series=stats["method"], x="aux_lambda")
    doc.figure(curves_figure(curves, title=title, xlabel="λ (Bravais-lattice cross-entropy weight)",
                             xscale="symlog", baseline=baseline.assign(panel=tx.size_panel(baseline["finetune_size"]))),
               "part4_lambda", f"{title}; λ = 0 is plain pre-training; dashed: scratch.")
    effect = an.lambda_effect(rows)
    doc.text("The best λ is picked on the test MAE, so its advantage over λ = 0 is optimistic. Every MAE here is on "
             f"{target}'s fixed test set (n_test {tx.n(transfer['n_test'].max())}).")
    lines = [_lambda_sentence(row) for row in effect.itertuples()]
    doc.bullets(lines)
    helped = effect[effect["diff_mean"] < 0]
    return [f"Structure bias: a λ > 0 beat plain pre-training in {len(helped)} of {len(effect)} (fine-tune size, "
            f"method) cells ({tx.significantly(helped, 'n_pairs')}). " + " ".join(lines)]


def _lambda_sentence(row) -> str:
    where = f"n = {tx.n(row.finetune_size)}, {row.method}"
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
        verdict = "significant" if row.p_value < tx.ALPHA else "within seed noise"
        paired = (f"difference {tx.pm(row.diff_mean, row.diff_std)} {row.unit} over {row.n_pairs:.0f} seeds "
                  f"(p = {row.p_value:.2g}): {verdict}")
    return f"{where}: best λ = {row.aux_lambda:g}, MAE {row.mae_mean:.4g} vs {row.mae_plain:.4g} at λ = 0; {paired}."
