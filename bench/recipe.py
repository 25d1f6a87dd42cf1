"""Which training recipe for the in-house CGCNN encoder: scratch runs on the real data, one per
(target, n_samples, seed, recipe), collected into ``bench/results/recipe_runs.csv``.

Each run is an ordinary ``mattransfer train`` on a written options file; a run whose
``metrics.json`` exists is not trained again, so the script resumes where it was stopped and
regenerates the table from the run directories. Only one training runs at a time (one thread):
the numbers are test errors, not timings, but a busy machine would make the table slow to rebuild.

    python bench/recipe.py --runs /work/h3-runs --recipes default cosine --targets phonons dielectric \\
        --n 800 --seeds 0 --max-epochs 300
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "recipe_runs.csv"

# Each recipe is what it changes against today's defaults (TrainConfig(): cgcnn 64×3, 40 gaussians, element
# vectors from Magpie properties, atom descriptors, mean+max+min+std readout, head [64], lr 1e-3, batch 32,
# 500 epochs, patience 50, L1 on standardised targets, predictions clipped to the training range). "v1" is the
# default until session 10 ("v1+pool4+elem-magpie+desc" is today's); runs recorded before clipping became the
# default are "v1+noclip+<change>".
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "v1": {"model": {"encoder": {"name": "cgcnn", "pooling": "mean", "elements": "learned", "atom_descriptors": False}}},
    "noclip": {"training": {"clip_to_train_range": False}},
    "cosine": {"training": {"schedule": "cosine", "warmup_epochs": 10}},
    # the whole cosine decay, with no early stop (patience above any max_epochs): the best-validation
    # epoch is still restored, but the low-rate end of the schedule is always reached
    "cosine-nostop": {"training": {"schedule": "cosine", "warmup_epochs": 10, "patience": 1000}},
    "plateau": {"training": {"schedule": "plateau"}},
    "wd1e-2": {"training": {"weight_decay": 0.01}},
    "wd1e-1": {"training": {"weight_decay": 0.1}},
    "log": {"training": {"target_transform": "log"}},
    "wide128": {"model": {"encoder": {"name": "cgcnn", "hidden": 128}, "head": {"hidden": [128]}}},
    "narrow32": {"model": {"encoder": {"name": "cgcnn", "hidden": 32}, "head": {"hidden": [32]}}},
    "deep5": {"model": {"encoder": {"name": "cgcnn", "n_layers": 5}}},
    "batch16": {"training": {"batch_size": 16}},
    "batch64": {"training": {"batch_size": 64}},
    "lr3e-3": {"training": {"lr": 0.003}},
    "patience100": {"training": {"patience": 100}},
    # the crystal's vector from four reductions over atoms: targets set by extremes (the lightest atom,
    # the stiffest bond) are invisible to a mean
    "pool4": {"model": {"encoder": {"name": "cgcnn", "pooling": "mean+max+min+std"}}},
    # element vectors from the elements' Magpie properties: a rare element borrows from similar ones
    "elem-magpie": {"model": {"encoder": {"name": "cgcnn", "elements": "magpie"}}},
    "elem-both": {"model": {"encoder": {"name": "cgcnn", "elements": "learned+magpie"}}},
    # the readout also pools each atom's raw descriptors (element properties, nearest-neighbour distance)
    "desc": {"model": {"encoder": {"name": "cgcnn", "atom_descriptors": True}}},
    "norm": {"model": {"head": {"input_norm": True}}},  # the head standardises its input features
    # early stopping on 10 validation structures (n 100) picks noisy epochs: validate a moving average of
    # the weights (horizon ~100 steps: 33 epochs at n 100, 4 at n 800), or validate on twice as many
    "ema99": {"training": {"ema_decay": 0.99}},
    "val20": {"data": {"val_fraction": 0.2}},
}
# Targets whose values are all strictly positive (and heavy-tailed): the ones `log` applies to.
# expt_gap, bandgap (metals at 0) and gvrh (already a log10, 19 rows at 0) are not.
POSITIVE = {"dielectric", "piezo", "phonons"}
COLUMNS = ["target", "n", "seed", "recipe", "max_epochs", "test_mae", "test_median_ae", "n_test", "train_mae", "val_mae",
           "best_epoch", "epochs_run", "wall_s", "unit", "run_dir"]


def merged(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``change`` applied key by key (nested mappings merged, other values replaced)."""
    out = dict(base)
    for key, value in change.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def recipe(name: str) -> dict[str, Any]:
    """A recipe by name; ``a+b`` combines the changes of ``a`` and ``b``."""
    options: dict[str, Any] = {}
    for part in name.split("+"):
        options = merged(options, RECIPES[part])
    return options


def options_for(target: str, n: int, seed: int, name: str, max_epochs: int | None, compile: bool,
                run_dir: Path) -> dict[str, Any]:
    options = merged({
        "seed": seed, "threads": 1, "device": "cpu", "compile": compile, "output_dir": str(run_dir),
        "data_sources": str(ROOT / "configs" / "shared-data.yaml"),
        "data": {"dataset": target, "n_samples": n},
    }, recipe(name))
    if max_epochs is not None:
        options["training"] = {**options.get("training", {}), "max_epochs": max_epochs}
    return options


def run_one(options: dict[str, Any], run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "options.yaml"
    path.write_text(yaml.safe_dump(options, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    subprocess.run([sys.executable, "-m", "mattransfer.cli", "--threads", "1", "train", str(path)],
                   env=env, check=False, stdout=subprocess.DEVNULL, stderr=open(run_dir / "stderr.txt", "w"))


def row(run_dir: Path, target: str, n: int, seed: int, name: str, max_epochs: int | None) -> dict[str, Any] | None:
    """The CSV row of a finished run; None when it has no metrics (not run, or failed)."""
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    # The median absolute error beside the mean: one extrapolated structure (a hydride's 3,285 cm^-1
    # phonon peak predicted at up to 14,000) can be half of a 127-structure test MAE.
    test = pd.read_csv(run_dir / "test_predictions.csv")
    return {
        "target": target, "n": n, "seed": seed, "recipe": name, "max_epochs": max_epochs or 500,
        "test_mae": m["test"]["mae"],
        "test_median_ae": float((test.y_pred - test.y_true).abs().median()), "n_test": m["n_test"], "train_mae": m["train"]["mae"], "val_mae": m["val"]["mae"],
        "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"], "wall_s": round(m["wall_seconds"], 1),
        "unit": m["unit"], "run_dir": run_dir.name,
    }


def collect(runs: Path) -> list[dict[str, Any]]:
    """Every finished run under ``runs`` (the run directory's options say what it was)."""
    rows = []
    for options_file in sorted(runs.glob("*/options.yaml")):
        o = yaml.safe_load(options_file.read_text())
        name = options_file.parent.name.split("__")[3]
        max_epochs = (o.get("training") or {}).get("max_epochs")
        found = row(options_file.parent, o["data"]["dataset"], o["data"]["n_samples"], o["seed"], name, max_epochs)
        if found:
            rows.append(found)
    return rows


def table(frame: pd.DataFrame) -> str:
    """Markdown: per target, n, recipe and epoch cap, test MAE mean ± std over seeds (sample std), with
    the seeds, n_test, and the train MAE and best epoch averaged over seeds."""
    lines = ["| target | n | recipe | max epochs | test MAE | test median AE | seeds | n_test | train MAE | best epoch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups = frame.groupby(["target", "n", "recipe", "max_epochs"], sort=True)
    for (target, n, name, max_epochs), g in groups:
        spread = (lambda column: f" ± {column.std():.3g}" if len(g) > 1 else "")
        lines.append(f"| {target} | {n} | {name} | {max_epochs} | {g.test_mae.mean():.3g}{spread(g.test_mae)} |"
                     f" {g.test_median_ae.mean():.3g}{spread(g.test_median_ae)} | {len(g)} |"
                     f" {g.n_test.iloc[0]} | {g.train_mae.mean():.3g} | {g.best_epoch.mean():.0f} |")
    return "\n".join(lines)


def compare(frame: pd.DataFrame, base: str, other: str) -> str:
    """Markdown: per target and n, ``other`` against ``base`` on the seeds both ran (the same samples and test
    set per seed): test MAE mean ± std, the change of the means, and on how many seeds ``other`` is lower."""
    wide = frame[frame.recipe.isin([base, other])].pivot_table(index=["target", "n", "seed"], columns="recipe",
                                                               values="test_mae").dropna()
    lines = [f"| target | n | seeds | {base} | {other} | change | {other} lower |", "|---|---|---|---|---|---|---|"]
    for (target, n), g in wide.groupby(level=["target", "n"]):
        a, b = g[base], g[other]
        lines.append(f"| {target} | {n} | {len(g)} | {a.mean():.3g} ± {a.std():.2g} | {b.mean():.3g} ± {b.std():.2g} |"
                     f" {100 * (b.mean() / a.mean() - 1):+.0f} % | {(b < a).sum()} of {len(g)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="where run directories go (outside git)")
    parser.add_argument("--recipes", nargs="+", default=["default"], help=f"names, or a+b: {', '.join(RECIPES)}")
    parser.add_argument("--targets", nargs="+", default=["phonons", "dielectric"])
    parser.add_argument("--n", nargs="+", type=int, default=[800])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max-epochs", type=int, help="cap for screening (default: the recipe's, 500)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder (same results, faster)")
    parser.add_argument("--collect-only", action="store_true", help="only rebuild the CSV from finished runs")
    parser.add_argument("--table", action="store_true", help="print the markdown table of every finished run")
    parser.add_argument("--compare", nargs=2, metavar=("BASE", "OTHER"),
                        help="print OTHER against BASE per target and n, on the seeds both ran")
    args = parser.parse_args()
    if not args.collect_only:
        for name in args.recipes:
            for target in args.targets:
                for n in args.n:
                    if "log" in name.split("+") and target not in POSITIVE:
                        continue
                    for seed in args.seeds:
                        run_dir = args.runs / f"{target}__{n}__{seed}__{name}__e{args.max_epochs or 500}"
                        if (run_dir / "metrics.json").is_file():
                            continue
                        print(f"{run_dir.name} ...", flush=True)
                        run_one(options_for(target, n, seed, name, args.max_epochs, args.compile, run_dir), run_dir)
                        found = row(run_dir, target, n, seed, name, args.max_epochs)
                        print(f"  test MAE {found['test_mae']:.4g}" if found else "  FAILED (see stderr.txt)", flush=True)
    # runs of earlier machines stay: a row is replaced only by a run of the same target, n, seed, recipe and cap
    found = collect(args.runs)
    identity = ("target", "n", "seed", "recipe", "max_epochs")
    new = {tuple(str(r[k]) for k in identity) for r in found}
    # kept rows stay text, so rewriting the file leaves their digits as they were
    kept = list(csv.DictReader(RESULTS.open())) if RESULTS.is_file() else []
    rows = [r for r in kept if tuple(r[k] for k in identity) not in new] + found
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} runs in {RESULTS}")
    if args.table:
        print(table(pd.read_csv(RESULTS)))
    if args.compare:
        print(compare(pd.read_csv(RESULTS), *args.compare))


if __name__ == "__main__":
    main()
