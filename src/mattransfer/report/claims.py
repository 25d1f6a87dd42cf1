"""README sentences generated from committed results, and the check that they still match.

A README passage that quotes a study's numbers sits between two markers naming the committed
results directory it comes from and what it states::

    <!-- claims docs/results/paper-seed0 summary -->
    ...generated text...
    <!-- /claims -->

``check`` regenerates every passage from the files under that directory and reports each one whose
text differs; ``update`` rewrites them. So a number in such a passage is always one a committed
file holds, computed the way the report computes it::

    python -m mattransfer.report.claims README.md            # check (exit 1 on a mismatch)
    python -m mattransfer.report.claims README.md --write    # regenerate the passages
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable

import pandas as pd

from mattransfer.report import analysis as an
from mattransfer.report import uncertainty as un
from mattransfer.report import yardsticks as ys
from mattransfer.study.results import transfer_gain

BLOCK = re.compile(r"<!-- claims (?P<dir>\S+) (?P<kind>\w+) -->\n(?P<text>.*?)<!-- /claims -->", re.S)
COMMAND = "python -m mattransfer.report.claims README.md --write"


def _pct(fraction: float) -> str:
    return f"{100 * fraction:+.1f} %"


def _n(value: float) -> str:
    return f"{value:,.0f}"


def summary(results_dir: Path) -> str:
    """What the study's committed results table says, per method and with its limits stated."""
    results = an.load_results(results_dir)
    name = results_dir.name
    done, failed = (int((results.drop_duplicates("task_hash")["status"] == s).sum()) for s in ("done", "failed"))
    seeds = sorted(results["seed"].dropna().unique())
    predictions = un.has_predictions(results_dir)
    broken = un.broken_baselines(results)
    rows1 = an.finetune_rows(results, 1)
    paired = un.usable(transfer_gain(rows1), broken)
    keys = [*an.PAIR, "method", "finetune_size"]
    cells = un.with_intervals(an.gain_cells(paired, keys), paired, keys, results_dir)
    counts = un.method_counts(cells)
    per_method = "; ".join(
        f"`{r.method}` {r.helps} helped and {r.hurts} hurt of {r.cells} cells ({r.tested} with a CI, "
        f"{r.helps_fdr} and {r.hurts_fdr} after FDR control)" if r.tested else
        f"`{r.method}` had a positive gain in {r.positive} of {r.cells} cells" for r in counts.itertuples())
    pairs = an.pair_gains(cells)
    full = pairs[pairs["method"] == "full"].nlargest(2, "gain_mean")
    top = ", ".join(f"{r.target} ← {r.source} {_pct(r.gain_mean)}" for r in full.itertuples())
    report = "report.md" if (results_dir / "report.md").is_file() else "report/report.md"  # as committed
    text = [
        f"**On the real data** ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}, {done} trainings, {failed} failed; "
        f"[report](docs/results/{name}/{report}), results table `docs/results/{name}/results.csv`; "
        f"this paragraph is generated from them by `{COMMAND}`).",
        "Single runs without confidence intervals: the tasks' test predictions are not committed, so no cell is "
        "called helped or hurt." if not predictions and len(seeds) < 2 else
        "Each cell's gain has a confidence interval (see the report).",
        f"Per method: {per_method}.",
        f"The largest mean gains over fine-tune sizes with `full` were {top}." if top else "",
        _versus_baselines(rows1, ys.baseline_rows(results, 1)),
        _relatedness(cells, an.load_relatedness(results_dir)),
        _part3(an.finetune_rows(results, 3)),
        _part2(an.finetune_rows(results, 2), rows1, broken),
    ]
    return " ".join(t for t in text if t) + "\n"


def _versus_baselines(rows: pd.DataFrame, baselines: pd.DataFrame) -> str:
    if baselines.empty:
        return ""
    table = ys.versus_baselines(rows, baselines)
    won = table[table["margin"] > 0]
    never = sorted(set(table["target"]) - set(won["target"]))
    return (f"The best transfer run beat the best model without transfer (scratch or a feature baseline, same "
            f"subsets and test sets; both picked on the test set) in {len(won)} of {len(table)} (target, size) "
            "cells" + (f", never on {', '.join(never)}." if never else "."))


def _relatedness(cells: pd.DataFrame, relatedness: pd.DataFrame | None) -> str:
    if relatedness is None or cells.empty:
        return ""
    test = an.relatedness_test(cells, relatedness)
    if test.empty:
        return ""
    words = "; ".join(f"`{r.method}` Spearman ρ = {r.spearman_rho:+.2f}, p = {r.p_value:.2g}, {r.n_pairs} pairs"
                      for r in test.itertuples())
    return f"The pair gains show no significant rank correlation with property relatedness ({words})." \
        if (test["p_value"] >= 0.05).all() else f"Rank correlation of pair gain with property relatedness: {words}."


def _part3(rows: pd.DataFrame) -> str:
    if rows.empty:
        return ""
    stats = an.mae_stats(rows, ["source", "target", "method", "finetune_size"])
    stats = an.scratch_per_source(stats)
    cell = [*an.PAIR, "finetune_size"]
    best = stats.loc[stats.groupby(cell)["mae_mean"].idxmin(), "method"]
    wide = stats.pivot_table(index=cell, columns="method", values="mae_mean")
    full_wins = int((wide["full"] < wide["heads"]).sum())
    return (f"In Part 3 `full` had a lower test MAE than `heads` in {full_wins} of {len(wide)} (pair, size) cells, "
            f"but scratch had the lowest MAE of all methods in {int((best == an.SCRATCH).sum())} of them.")


def _part2(rows: pd.DataFrame, rows1: pd.DataFrame, broken: pd.DataFrame) -> str:
    scratch = rows[rows["method"] == an.SCRATCH]
    flagged = broken[broken["task_hash"].isin(scratch["task_hash"])]
    sentences = []
    for r in flagged.itertuples():
        transfer = rows[(rows["target"] == r.target) & (rows["method"] != an.SCRATCH)].sort_values("pretrain_size")
        reference = rows1[(rows1["target"] == r.target) & (rows1["method"] == an.SCRATCH)].sort_values("finetune_size")
        curve = ", ".join(f"{_n(t.pretrain_size)}: {t.test_mae:.1f}" for t in transfer.itertuples())
        source = ", ".join(sorted(set(transfer["source"])))
        sentences.append(
            f"Part 2's scratch baseline of {r.target} at {_n(r.finetune_size)} samples is flagged as broken "
            f"(R² {r.test_r2:.2f}, against {r.reference_r2:.2f} for the {r.reference}), so no gain is computed "
            f"against it; {source} → {r.target} `{transfer['method'].iloc[0]}` reached test MAE (by pre-training "
            f"samples) {curve} {r.unit}, against scratch's {reference['test_mae'].iloc[-1]:.1f} at "
            f"{_n(reference['finetune_size'].iloc[-1])} samples (n_test {_n(transfer['n_test'].max())}).")
    return " ".join(sentences)


def accuracy(results_dir: Path) -> str:
    """Markdown table rows: the eform pre-training and phonons at 800 (scratch, eform → phonons) of the study."""
    results = an.load_results(results_dir)
    done = results[(results["status"] == "done") & (results["part"] == 1)].drop_duplicates("task_hash")
    pretrain = done[(done["kind"] == "pretrain") & (done["target"] == "eform")].iloc[0]
    phonons = done[(done["target"] == "phonons") & (done["finetune_size"] == 800)]
    rows = ["| what | number |", "|---|---|", f"| pre-train on eform, {_n(pretrain.pretrain_size)} samples ({pretrain.n_train}/{pretrain.n_val}), "
            f"`v1` CGCNN | test MAE {pretrain.test_mae:.3f} {pretrain.unit}, R² {pretrain.test_r2:.3f} "
            f"(n_test {_n(pretrain.n_test)}) |"]
    for label, run in [("phonons at 800 samples, scratch", phonons[phonons["method"] == an.SCRATCH]),
                       ("… eform → phonons, `full`", phonons[(phonons["source"] == "eform") & (phonons["method"] == "full")]),
                       ("… eform → phonons, `heads`", phonons[(phonons["source"] == "eform") & (phonons["method"] == "heads")])]:
        r = run.iloc[0]
        rows.append(f"| {label} ({r.n_train}/{r.n_val}) | test MAE {r.test_mae:.1f} {r.unit}, R² {r.test_r2:.2f} "
                    f"(n_test {_n(r.n_test)}) |")
    return "\n".join(rows) + "\n"


KINDS: dict[str, Callable[[Path], str]] = {"summary": summary, "accuracy": accuracy}


def _render(match: re.Match, root: Path) -> str:
    kind = match["kind"]
    if kind not in KINDS:
        raise ValueError(f"<!-- claims {match['dir']} {kind} -->: unknown kind; known: {', '.join(KINDS)}")
    return KINDS[kind](root / match["dir"])


def check(text: str, root: Path) -> list[str]:
    """One line per generated passage of ``text`` whose numbers differ from its committed results."""
    problems = []
    for match in BLOCK.finditer(text):
        expected = _render(match, root)
        if match["text"] != expected:
            problems.append(f"<!-- claims {match['dir']} {match['kind']} --> differs from what {match['dir']} holds;"
                            f" run `{COMMAND}`.\n  README:    {match['text'].strip()}\n  committed: {expected.strip()}")
    return problems


def update(text: str, root: Path) -> str:
    """``text`` with every generated passage regenerated from its committed results."""
    return BLOCK.sub(lambda m: f"<!-- claims {m['dir']} {m['kind']} -->\n{_render(m, root)}<!-- /claims -->", text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("readme", type=Path)
    parser.add_argument("--write", action="store_true", help="regenerate the passages instead of checking them")
    args = parser.parse_args(argv)
    text, root = args.readme.read_text(), args.readme.resolve().parent
    if args.write:
        args.readme.write_text(update(text, root))
        return 0
    problems = check(text, root)
    print("\n".join(problems) or "every generated passage matches its committed results")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
