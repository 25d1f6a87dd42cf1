"""Part 2's report section: fine-tune MAE and gain against pre-training size, set against Part 1's spread
between the best and the worst source of the same target (data vs physics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mattransfer.report import analysis as an
from mattransfer.report import text as tx
from mattransfer.report import uncertainty as un
from mattransfer.report.figures import curves_figure
from mattransfer.report.parts.base import Context, gain_cells, register_section
from mattransfer.study.results import transfer_gain


@register_section("part2", "Part 2 — data vs physics")
def write(doc: tx.Document, context: Context) -> list[str]:
    return _part2(doc, context.rows("part2"), context.cells("part1"), context.paired("part1"), context.broken,
                  context.study_dir)


def _part2(doc: tx.Document, rows: pd.DataFrame, cells1: pd.DataFrame, paired1: pd.DataFrame, broken: pd.DataFrame,
           study_dir: Path) -> list[str]:
    if rows.empty:
        doc.text("No finished Part 2 fine-tunes.")
        return ["Data vs physics: not answered (Part 2 has no finished fine-tunes)."]
    stats = an.scratch_per_source(an.mae_stats(rows, [*an.PAIR, "method", "pretrain_size"]))
    panel = stats["source"] + " → " + stats["target"]
    transfer = stats["method"] != an.SCRATCH
    curves = tx.curves(stats[transfer], panel=panel[transfer], series=stats.loc[transfer, "method"], x="pretrain_size")
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
    cells = gain_cells(paired, [*an.PAIR, "method", "pretrain_size"], study_dir)
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
        return tx.gain_ci(cell["gain_mean"], cell["gain_low"], cell["gain_high"])
    doc.table(pd.DataFrame({
        "source → target": [tx.pair(s, t) for s, t in zip(growth["source"], growth["target"])],
        "method": growth["method"],
        "pre-training samples": [f"{tx.n(a)} → {tx.n(b)}" for a, b in zip(growth["smallest"], growth["largest"])],
        "gain at smallest": [at(g, "smallest") for g in growth.itertuples()],
        "gain at largest": [at(g, "largest") for g in growth.itertuples()],
        "change": [tx.pp_ci(*v) for v in zip(growth["change"], growth["change_low"], growth["change_high"])],
        "n_test": [tx.n(gain.loc[(g.source, g.target, g.method, g.largest), "n_test"]) for g in growth.itertuples()],
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
    data = (f"**{target}** ({method}): {growth.source} pre-trained on {tx.n(growth.smallest)} → "
            f"{tx.n(growth.largest)} samples changed the gain by "
            f"{tx.pp_ci(growth.change, growth.change_low, growth.change_high)}")
    comparable = cells1[(cells1["target"] == target) & (cells1["method"] == method)]
    if comparable["source"].nunique() < 2:
        return data + f"; Part 1 has fewer than two sources for {target} with {method}: no source spread to compare."
    size = min(comparable["finetune_size"].unique(), key=lambda s: abs(s - finetune_size))
    at_size = comparable[comparable["finetune_size"] == size]
    best = at_size.loc[at_size["gain_mean"].idxmax(), "source"]
    worst = at_size.loc[at_size["gain_mean"].idxmin(), "source"]
    cell = paired1[(paired1["target"] == target) & (paired1["method"] == method) & (paired1["finetune_size"] == size)]
    spread, low, high, _ = un.paired_gain_change(cell, "source", worst, best, study_dir)
    pretrain = tx.sizes(cell.loc[cell["source"].isin([best, worst]), "pretrain_size"].unique())
    physics = (f"in Part 1 (pre-training {pretrain} samples, fine-tune n = {tx.n(size)}, nearest to Part 2's "
               f"{tx.n(finetune_size)}) the best source ({best}) minus the worst ({worst}) is "
               f"{tx.pp_ci(spread, low, high)} (both picked on these results, so an upper estimate)")
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
