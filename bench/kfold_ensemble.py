"""k-fold ensembles of a small training against one model (issue 9 §4): at 100 samples the default 90/10 split
validates on 10 structures, so early stopping picks its epoch almost at random. A k-fold ensemble trains k
models on the same samples, each validating on another fold (every sample is validated on once), and
predicts their mean.

Per (target, n, seed), on the samples and fixed test set `mattransfer train` draws for that seed:
- ``single``: one model on the default split (today's recipe, what `bench/recipe.py`'s ``default`` runs);
- ``kfold``: ``--members`` models, member k validating on fold k of the samples (scikit-learn's ``KFold``,
  shuffled with the seed) and training on the rest, with seed 1000·seed + k; the test prediction is their mean;
- ``seeds``: ``--members`` models on the default split with seeds 1000·seed + k, their mean: what averaging
  alone gives, without the other validation folds.

Each model is an ordinary run (`training.run.run` with the split given, as `mattransfer matbench` runs its
folds) in ``<runs>/<target>__<n>__<seed>__<kind>/<member>/``; finished members are not trained again, so the
command resumes. One row per (target, n, seed, kind) goes to ``--out``:

    target,n,seed,kind,members,test_mae,member_mae,n_test,unit,wall_s

``member_mae`` is the members' mean test MAE (for ``single`` the same as ``test_mae``); ``wall_s`` sums the
members' runs. Example (the committed results, docs/results/recipe/README.md):

    OMP_NUM_THREADS=1 python bench/kfold_ensemble.py --runs ../runs/kfold --targets phonons dielectric gvrh \\
        expt_gap piezo --n 100 --seeds 0 1 2 --members 5 --max-epochs 300 --out bench/results/kfold_runs.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe import ROOT, options_for  # noqa: E402  (bench/recipe.py: the options of a `default` run)

from mattransfer.config import TrainConfig  # noqa: E402
from mattransfer.data.registry import DataSources  # noqa: E402
from mattransfer.data.splits import Split  # noqa: E402
from mattransfer.threads import set_threads  # noqa: E402
from mattransfer.training.run import prepare_table, run  # noqa: E402

COLUMNS = ["target", "n", "seed", "kind", "members", "test_mae", "member_mae", "n_test", "unit", "wall_s"]


def member_splits(split: Split, kind: str, members: int, seed: int) -> list[tuple[int, Split]]:
    """(seed, split) of each member: the default split itself, or k folds of its train + val samples."""
    if kind == "single":
        return [(seed, split)]
    if kind == "seeds":
        return [(1000 * seed + k, split) for k in range(members)]
    samples = np.array([*split.train, *split.val])
    folds = KFold(members, shuffle=True, random_state=seed).split(samples)
    return [(1000 * seed + k, Split(train=tuple(samples[train]), val=tuple(samples[val]), test=split.test))
            for k, (train, val) in enumerate(folds)]


def ensemble_row(target: str, n: int, seed: int, kind: str, args: argparse.Namespace) -> dict:
    """Train the members not yet trained; the row of their mean prediction."""
    cell = args.runs / f"{target}__{n}__{seed}__{kind}"
    options = options_for(target, n, seed, "default", args.max_epochs, False, cell)
    sources = DataSources.from_yaml(Path(options["data_sources"]))
    table, split = prepare_table(TrainConfig.model_validate(options).data, sources, seed)
    predictions, metrics = [], []
    for k, (member_seed, member_split) in enumerate(member_splits(split, kind, args.members, seed)):
        member_dir = cell / str(k)
        if not (member_dir / "metrics.json").is_file():
            config = TrainConfig.model_validate({**options, "seed": member_seed, "output_dir": str(member_dir)})
            run(config, progress=False, prepared=(table, member_split))
        metrics.append(json.loads((member_dir / "metrics.json").read_text()))
        predictions.append(pd.read_csv(member_dir / "test_predictions.csv").set_index("id").loc[list(split.test)])
    mean = np.mean([p.y_pred.to_numpy() for p in predictions], axis=0)
    return {"target": target, "n": n, "seed": seed, "kind": kind, "members": len(predictions),
            "test_mae": float(np.abs(mean - predictions[0].y_true.to_numpy()).mean()),
            "member_mae": float(np.mean([m["test"]["mae"] for m in metrics])), "n_test": len(split.test),
            "unit": metrics[0]["unit"], "wall_s": round(sum(m["wall_seconds"] for m in metrics), 1)}


def compare(frame: pd.DataFrame) -> str:
    """Markdown: per target and n, each ensemble against ``single`` on the seeds all ran."""
    wide = frame.pivot_table(index=["target", "n", "seed"], columns="kind", values="test_mae").dropna()
    kinds = [k for k in ("kfold", "seeds") if k in wide]
    lines = ["| target | n | seeds | single | " + " | ".join(f"{k} | change | lower" for k in kinds) + " |",
             "|---|---|---|---|" + "---|---|---|" * len(kinds)]
    for (target, n), g in wide.groupby(level=["target", "n"]):
        a = g["single"]
        cells = [f"{g[k].mean():.3g} ± {g[k].std():.2g} | {100 * (g[k].mean() / a.mean() - 1):+.0f} % |"
                 f" {(g[k] < a).sum()} of {len(g)}" for k in kinds]
        lines.append(f"| {target} | {n} | {len(g)} | {a.mean():.3g} ± {a.std():.2g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="where run directories go (outside git)")
    parser.add_argument("--targets", nargs="+", default=["phonons", "dielectric"])
    parser.add_argument("--n", nargs="+", type=int, default=[100])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--kinds", nargs="+", default=["single", "kfold", "seeds"], choices=["single", "kfold", "seeds"])
    parser.add_argument("--max-epochs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kfold_runs.csv")
    args = parser.parse_args()
    set_threads(1)
    done = set()
    if args.out.is_file():
        done = {(r["target"], r["n"], r["seed"], r["kind"]) for r in csv.DictReader(args.out.open())}
    for target in args.targets:
        for n in args.n:
            for seed in args.seeds:
                for kind in args.kinds:
                    if (target, str(n), str(seed), kind) in done:
                        continue
                    found = ensemble_row(target, n, seed, kind, args)
                    print(f"{target} n {n} seed {seed} {kind}: test MAE {found['test_mae']:.4g}"
                          f" (members {found['member_mae']:.4g}, {found['wall_s']:.0f} s)", flush=True)
                    new = not args.out.is_file()
                    with args.out.open("a", newline="") as handle:
                        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
                        if new:
                            writer.writeheader()
                        writer.writerow(found)
    print(compare(pd.read_csv(args.out)))


if __name__ == "__main__":
    main()
