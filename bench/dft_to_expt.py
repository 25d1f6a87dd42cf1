"""DFT → experiment with a composition encoder (the ElemNet transfer experiment, Jha et al. 2019), on the
fixed 10 % test set of ``expt_gap_comp`` (matbench_expt_gap, test_seed 0), which the DFT pre-training never
saw (``data.exclude_formulas_of: [expt_gap_comp]`` in configs/pretrain_bandgap_comp_*.yaml):

- ``dft-own``: the pre-trained model on its own DFT test set (its metrics.json);
- ``zero-shot``: the DFT model as it is on the experimental test set (``mattransfer eval``);
- ``scratch``: the same architecture trained on experimental data only;
- ``full``, ``heads``, ``freeze-k`` (all but the last k encoder blocks frozen): the DFT model fine-tuned.

Each training is ``mattransfer train`` on an options file written into
``<runs-dir>/<encoder>/<method>_n<n>_s<seed>/``, run in this process (``cli.main``: one import of torch
and pymatgen for the whole grid, which on a shared CPU is minutes). Rows already in the CSV are skipped,
so the command resumes. Columns:

    encoder,method,n,seed,n_train,n_val,n_test,test_mae,test_rmse,test_r2,best_epoch,wall_s

``n`` is the experimental sample count asked for (``all``: the whole non-test pool, 90:10 train:val).
``summarize`` writes ``summary.csv``: mean ± std over seeds, n_test, the mean validation MAE (``val_mae_mean``, what
``markdown``'s row 4 is chosen by), the MAE of the seeds' mean prediction
(``ensemble_mae``: the seed ensemble), and a paired Wilcoxon test of each transfer method against scratch on
the per-sample absolute test errors (averaged over seeds).

    OMP_NUM_THREADS=1 python bench/dft_to_expt.py --encoder magpie-mlp \\
        --pretrained runs/pretrain_bandgap_comp_magpie-mlp/model.ckpt --sizes 100 300 1000 all --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy.stats import wilcoxon

from mattransfer.cli import main

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["encoder", "method", "n", "seed", "n_train", "n_val", "n_test", "test_mae", "test_rmse", "test_r2",
           "best_epoch", "wall_s"]
OUT = ROOT / "docs" / "results" / "dft-to-expt"


def method_options(method: str, checkpoint: Path) -> dict:
    """The ``finetune`` section of ``method`` (``freeze-k``: all encoder blocks but the last k frozen)."""
    if method.startswith("freeze-"):
        return {"method": "freeze", "read_from": str(checkpoint), "config": {"train_last": int(method.split("-")[1])}}
    return {"method": method, "read_from": str(checkpoint)}


def train_row(args: argparse.Namespace, method: str, n: str, seed: int) -> dict:
    run_dir = args.runs_dir.resolve() / args.encoder / f"{method}_n{n}_s{seed}"
    data = {"dataset": "expt_gap_comp", **({} if n == "all" else {"n_samples": int(n)})}
    options = {"seed": seed, "device": "cpu", "threads": 1, "output_dir": str(run_dir),
               "data_sources": str(args.data_sources.resolve()), "data": data,
               "training": json.loads(args.training), "finetune": method_options(method, args.pretrained)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "options.yaml").write_text(yaml.safe_dump(options, sort_keys=False))
    start = time.perf_counter()
    if main(["-q", "--threads", "1", "train", str(run_dir / "options.yaml")]) != 0:
        raise SystemExit(f"{run_dir}: mattransfer train failed (see its train.log)")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"encoder": args.encoder, "method": method, "n": n, "seed": seed, "n_train": metrics["n_train"],
            "n_val": metrics["n_val"], "n_test": metrics["n_test"], "test_mae": metrics["test"]["mae"],
            "test_rmse": metrics["test"]["rmse"], "test_r2": metrics["test"]["r2"],
            "best_epoch": metrics["best_epoch"], "wall_s": round(time.perf_counter() - start, 1)}


def fixed_rows(args: argparse.Namespace) -> list[dict]:
    """The DFT model on its own test set and, zero-shot, on the experimental test set."""
    pretrain = json.loads((args.pretrained.parent / "metrics.json").read_text())
    own = {"encoder": args.encoder, "method": "dft-own", "n": pretrain["n_train"], "seed": 0,
           "n_train": pretrain["n_train"], "n_val": pretrain["n_val"], "n_test": pretrain["n_test"],
           "test_mae": pretrain["test"]["mae"], "test_rmse": pretrain["test"]["rmse"], "test_r2": pretrain["test"]["r2"],
           "best_epoch": pretrain["best_epoch"], "wall_s": round(pretrain["wall_seconds"], 1)}
    predictions = args.runs_dir.resolve() / args.encoder / "zero-shot_predictions.csv"
    predictions.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["-q", "eval", str(args.pretrained), "--data", "expt_gap_comp", "--data-sources",
                     str(args.data_sources), "--allow-other-target", "--predictions", str(predictions)])
    if code != 0:
        raise SystemExit("mattransfer eval of the DFT model failed")
    scored = json.loads(printed.getvalue())
    zero = {"encoder": args.encoder, "method": "zero-shot", "n": 0, "seed": 0, "n_train": 0, "n_val": 0,
            "n_test": len(pd.read_csv(predictions)), "test_mae": scored["mae"],
            "test_rmse": scored["rmse"], "test_r2": scored["r2"], "best_epoch": "", "wall_s": round(time.perf_counter() - start, 1)}
    return [own, zero]


def errors_by_id(run_dir: Path) -> pd.Series:
    frame = pd.read_csv(run_dir / "test_predictions.csv", dtype={"id": str})
    return (frame["y_pred"] - frame["y_true"]).abs().set_axis(frame["id"])


def ensemble_mae(run_dirs: list[Path]) -> float:
    """MAE of the mean prediction of several runs on the same test set (a seed ensemble)."""
    frames = [pd.read_csv(d / "test_predictions.csv", dtype={"id": str}).set_index("id") for d in run_dirs]
    mean = pd.concat([f["y_pred"] for f in frames], axis=1).mean(1)
    return float((mean - frames[0]["y_true"].loc[mean.index]).abs().mean())


def summarize(rows: pd.DataFrame, runs_dir: Path, out: Path) -> pd.DataFrame:
    """Mean ± std over seeds per (encoder, method, n), the seed ensemble's MAE, and a paired test against
    scratch at the same n."""
    summary = []
    trained = rows[~rows["method"].isin(["dft-own", "zero-shot"])]
    for (encoder, method, n), group in rows.groupby(["encoder", "method", "n"], sort=False):
        entry = {"encoder": encoder, "method": method, "n": n, "n_samples": int((group["n_train"] + group["n_val"]).mean()),
                 "n_seeds": len(group),
                 "mae_mean": group["test_mae"].mean(), "mae_std": group["test_mae"].std(ddof=1) if len(group) > 1 else 0.0,
                 "n_test": int(group["n_test"].iloc[0]), "val_mae_mean": "", "ensemble_mae": "", "delta_vs_scratch": "", "p_vs_scratch": ""}
        if method not in ("dft-own", "zero-shot"):
            dirs = [runs_dir / encoder / f"{method}_n{n}_s{s}" for s in group["seed"]]
            entry["val_mae_mean"] = float(np.mean([json.loads((d / "metrics.json").read_text())["val"]["mae"] for d in dirs]))
            if len(group) > 1:
                entry["ensemble_mae"] = ensemble_mae(dirs)
        scratch = trained[(trained["encoder"] == encoder) & (trained["method"] == "scratch") & (trained["n"] == n)]
        if method not in ("scratch", "dft-own", "zero-shot") and len(scratch):
            seeds = sorted(set(group["seed"]) & set(scratch["seed"]))
            ours = pd.concat([errors_by_id(runs_dir / encoder / f"{method}_n{n}_s{s}") for s in seeds], axis=1).mean(1)
            base = pd.concat([errors_by_id(runs_dir / encoder / f"scratch_n{n}_s{s}") for s in seeds], axis=1).mean(1)
            entry["delta_vs_scratch"] = float(ours.mean() - base.mean())
            entry["p_vs_scratch"] = float(wilcoxon(ours.to_numpy(), base.loc[ours.index].to_numpy()).pvalue)
        summary.append(entry)
    frame = pd.DataFrame(summary)
    frame.to_csv(out, index=False, float_format="%.4g")
    return frame


def markdown(summary: pd.DataFrame) -> str:
    """The four-row table (at the whole experimental pool) per encoder, then every method at every size."""
    def cell(row) -> str:
        spread = f" ± {row.mae_std:.3f}" if row.n_seeds > 1 else ""
        return f"{row.mae_mean:.3f}{spread}"

    def number(value) -> str:  # "" where the summary has none (the DFT model's rows, single runs)
        return "" if value in ("", None) or pd.isna(value) else f"{float(value):.3f}"

    def paired(row) -> str:
        return "" if row.p_vs_scratch in ("", None) or pd.isna(row.p_vs_scratch) else \
            f"{float(row.delta_vs_scratch):+.3f} (p = {float(row.p_vs_scratch):.2g})"

    lines = ["| encoder | 1. scratch on experiment | 2. DFT model, its own DFT test | 3. DFT model zero-shot on experiment"
             " | 4. transfer (lowest validation MAE of the methods below) |", "|---|---|---|---|---|"]
    for encoder, rows in summary.groupby("encoder", sort=False):
        def at(method: str, n: str = "all"):
            found = rows[(rows["method"] == method) & (rows["n"].astype(str) == n)]
            return found.iloc[0] if len(found) else None

        own = rows[rows["method"] == "dft-own"].iloc[0] if (rows["method"] == "dft-own").any() else None
        zero = at("zero-shot", "0")
        transfers = rows[(~rows["method"].isin(["scratch", "dft-own", "zero-shot"])) & (rows["n"].astype(str) == "all")]
        # chosen by validation MAE (the 414 validation compositions), not by the test MAE it reports
        best = transfers.sort_values("val_mae_mean").iloc[0] if len(transfers) else None
        scratch = at("scratch")
        lines.append(
            f"| {encoder} | {cell(scratch) + f' (n_test {scratch.n_test}, {scratch.n_seeds} seeds)' if scratch is not None else '–'}"
            f" | {f'{own.mae_mean:.3f} (n_test {own.n_test}, one run)' if own is not None else '–'}"
            f" | {f'{zero.mae_mean:.3f} (n_test {zero.n_test})' if zero is not None else '–'}"
            f" | {f'{best.method}: {cell(best)} ({best.n_seeds} seeds); vs scratch {paired(best)}' if best is not None else '–'} |")
    lines += ["", "Test MAE (eV) on expt_gap_comp's fixed test set, mean ± std over seeds; validation MAE: mean over the"
              " seeds on each run's validation split (what row 4 and the kept model are chosen by); the seed ensemble: the MAE of the"
              " seeds' mean prediction; the last column: transfer − scratch on the per-sample errors averaged over seeds,"
              " paired Wilcoxon p.", "",
              "| encoder | method | n asked | samples (train + val) | seeds | validation MAE | test MAE (eV) |"
              " seed ensemble's MAE | n_test | vs scratch |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = {n: k for k, n in enumerate(["0", "100", "300", "1000", "2000", "all"])}
    trained = summary[~summary["method"].isin(["dft-own"])].copy()
    trained["order"] = [order.get(str(n), 9) for n in trained["n"]]
    for row in trained.sort_values(["encoder", "order", "method"]).itertuples():
        lines.append(f"| {row.encoder} | {row.method} | {row.n} | {row.n_samples} | {row.n_seeds} | {number(row.val_mae_mean)} |"
                     f" {cell(row)} | {number(row.ensemble_mae)} | {row.n_test} | {paired(row)} |")
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, path: Path) -> None:
    """Test MAE against experimental training size, one panel per encoder; the zero-shot DFT model as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encoders = list(dict.fromkeys(summary["encoder"]))
    methods = sorted(set(summary["method"]) - {"dft-own", "zero-shot"})
    colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 2))  # one colour a method in every panel
    fig, axes = plt.subplots(1, len(encoders), figsize=(5 * len(encoders), 4), squeeze=False, sharey=True, sharex=True)
    for ax, encoder in zip(axes[0], encoders):
        rows = summary[summary["encoder"] == encoder]
        curves = rows[~rows["method"].isin(["dft-own", "zero-shot"])].copy()
        for method, group in curves.groupby("method"):
            group = group.sort_values("n_samples")
            ax.errorbar(group["n_samples"], group["mae_mean"], yerr=group["mae_std"], marker="o", capsize=3, label=method,
                        color=colors[method])
        zero = rows[rows["method"] == "zero-shot"]
        if len(zero):
            ax.axhline(float(zero["mae_mean"].iloc[0]), color="grey", linestyle="--", label="DFT model, zero-shot")
        ax.set_xscale("log")
        ax.set_xlabel("experimental samples (train + validation)")
        ax.set_title(encoder)
    axes[0][0].set_ylabel("test MAE on expt_gap_comp's fixed test set (eV)")
    for ax in axes[0]:  # each panel its own methods
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def append(out: Path, rows: list[dict]) -> None:
    with out.open("a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if f.tell() == 0:
            writer.writeheader()
        writer.writerows(rows)


def main_driver() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", required=True, help="a name for the CSV rows, e.g. elemnet")
    parser.add_argument("--pretrained", type=Path, required=True, help="model.ckpt of the DFT pre-training")
    parser.add_argument("--methods", nargs="+", default=["zero-shot", "scratch", "full", "heads", "freeze-1", "freeze-2",
                                                         "freeze-4"], help="zero-shot: the DFT model's rows (dft-own too)")
    parser.add_argument("--sizes", nargs="+", default=["100", "300", "1000", "all"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--training", default='{"lr": 0.001, "batch_size": 64, "max_epochs": 150, "patience": 20}')
    parser.add_argument("--data-sources", type=Path, default=ROOT / "configs" / "shared-data.yaml")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "dft-to-expt")
    parser.add_argument("--out", type=Path, default=OUT / "runs.csv")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = pd.read_csv(args.out, dtype={"n": str}) if args.out.exists() else pd.DataFrame(columns=COLUMNS)
    done = {(r.encoder, r.method, str(r.n), int(r.seed)) for r in rows.itertuples()}
    if "zero-shot" in args.methods and (args.encoder, "zero-shot", "0", 0) not in done:
        append(args.out, fixed_rows(args))
    for size in args.sizes:  # small sizes first: the learning curve fills in from the cheap end
        for seed in args.seeds:
            for method in args.methods:
                if method != "zero-shot" and (args.encoder, method, size, seed) not in done:
                    append(args.out, [train_row(args, method, size, seed)])  # each row when done: resumable
    rows = pd.read_csv(args.out, dtype={"n": str})
    summary = summarize(rows, args.runs_dir.resolve(), args.out.parent / "summary.csv")
    plot(summary, args.out.parent / "learning_curves.png")
    (args.out.parent / "table.md").write_text(markdown(summary))
    print(summary.to_string())


if __name__ == "__main__":
    main_driver()
