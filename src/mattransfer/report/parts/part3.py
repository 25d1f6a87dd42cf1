"""Part 3's report section: fine-tuning methods against scratch per pair, and full against heads."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mattransfer.report import analysis as an
from mattransfer.report import text as tx
from mattransfer.report.figures import METHOD_COLORS, curves_figure
from mattransfer.report.parts.base import Context, register_section


@register_section("part3", "Part 3 — whole network vs head")
def write(doc: tx.Document, context: Context) -> list[str]:
    return _part3(doc, context.rows("part3"))


def _part3(doc: tx.Document, rows: pd.DataFrame) -> list[str]:
    if rows.empty:
        doc.text("No finished Part 3 fine-tunes.")
        return ["Whole network vs head: not answered (Part 3 has no finished fine-tunes)."]
    stats = an.scratch_per_source(an.mae_stats(rows, [*an.PAIR, "method", "finetune_size"]))
    stats = stats.sort_values([*an.PAIR, "method"])
    title = "Part 3 — fine-tuning methods vs scratch"
    curves = tx.curves(stats, panel=stats["source"] + " → " + stats["target"], series=stats["method"],
                       x="finetune_size")
    doc.figure(curves_figure(curves, title=title, xlabel="fine-tune samples"), "part3_methods",
               f"{title}: test MAE (mean ± std over seeds) per pair.")
    transfer = rows[rows["method"] != an.SCRATCH]
    versus = an.paired_difference(transfer, [*an.PAIR, "finetune_size"], "method", "heads")
    full = versus[versus["method"] == "full"].drop(columns="method")
    table = stats.assign(mae=[tx.pm(m, s) for m, s in zip(stats["mae_mean"], stats["mae_std"])])
    wide = table.pivot_table(index=[*an.PAIR, "finetune_size"], columns="method", values="mae", aggfunc="first")
    winner = stats.loc[stats.groupby([*an.PAIR, "finetune_size"])["mae_mean"].idxmin()]
    wide = wide.join(winner.set_index([*an.PAIR, "finetune_size"])["method"].rename("best")).reset_index()
    wide = wide.merge(full, on=[*an.PAIR, "finetune_size"], how="left").merge(
        rows.groupby("target", as_index=False).agg(unit=("unit", "first"), n_test=("n_test", "max")), on="target")
    doc.table(pd.DataFrame({
        "source → target": [tx.pair(s, t) for s, t in zip(wide["source"], wide["target"])],
        "fine-tune n": wide["finetune_size"].map(tx.n),
        **{f"MAE {m}": wide[m].fillna("—") for m in METHOD_COLORS if m in wide.columns},
        "unit": wide["unit"],
        "n_test": wide["n_test"].map(tx.n),
        "best": wide["best"],
        "full − heads": [tx.pm(m, s) if np.isfinite(m) else "—"
                         for m, s in zip(wide["diff_mean"], wide["diff_std"])],
        "p (paired t)": [tx.p(p, n) if np.isfinite(m) else "—"
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
    parts = [f"full beats heads at n = {tx.sizes(full_wins)}" if len(full_wins) else "full never beats heads",
             f"heads wins at n = {tx.sizes(heads_wins)}" if len(heads_wins) else "heads never wins"]
    significant = group[(group["p_value"] < tx.ALPHA) & (group["n_pairs"] >= 2)]
    tail = f" (significant at n = {tx.sizes(significant['finetune_size'])})" if len(significant) else ""
    return f"**{tx.pair(*pair)}**: " + "; ".join(parts) + tail + "."
