"""How a frozen pre-trained encoder's atom vectors are best pooled: kernel ridge on each pooling's features.

For each ``--poolings`` spec, the source's encoder (frozen, eval mode) turns the ``n`` samples of a fine-tune
(``make_split``: the same rows as ``mattransfer train`` with that seed, train + val together) and the fixed
test set into crystal vectors; features are standardised on the training rows, the target on its mean and
std, and an RBF kernel ridge is tuned by 5-fold cross-validation (MAE) on the training rows over the grid
below. The test MAE tells how much of the target a head can reach from those features, with no MLP
training in the way. Numbers are one run (one split seed) unless ``--seeds`` gives more.

    OMP_NUM_THREADS=1 python bench/pooling_krr.py --source chgnet:0.3.0 --dataset phonons --n 800 \\
        --poolings mean mean+max+min+std sum

It prints one line per (pooling, seed) and writes ``bench/results/pooling_krr_<source>_<dataset>_<n>.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV
from sklearn.preprocessing import StandardScaler

from mattransfer.data.registry import DataSources
from mattransfer.data.splits import make_split
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.models.model import load_source

SHARED_SOURCES = Path(__file__).parents[1] / "configs" / "shared-data.yaml"
RESULTS_DIR = Path(__file__).parent / "results"
GRID = {"alpha": [1e-3, 1e-2, 1e-1], "gamma": [3e-4, 1e-3, 3e-3, 1e-2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="chgnet:0.3.0")
    parser.add_argument("--dataset", default="phonons")
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--poolings", nargs="+", default=["mean", "mean+max+min+std"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    table = DataSources.from_yaml(SHARED_SOURCES).load(args.dataset)
    model = load_source(args.source)
    y_of = dict(zip(table.ids, table.y))
    results = []
    for seed in args.seeds:
        split = make_split(table.ids, args.n, seed, dataset=table.name)
        train, test = [*split.train, *split.val], list(split.test)
        used = table.subset(train + test)
        inputs = cached_inputs(used, model.encoder.featurizer(), progress=False)
        y_train, y_test = np.array([y_of[i] for i in train]), np.array([y_of[i] for i in test])
        for pooling in args.poolings:
            features = model.embed(inputs, pooling=pooling).double().numpy()
            rows = inputs.positions(train + test).numpy()  # the store keeps the table's order
            x_train, x_test = features[rows[:len(train)]], features[rows[len(train):]]
            scaler = StandardScaler().fit(x_train)
            mean, std = y_train.mean(), y_train.std()
            search = GridSearchCV(KernelRidge(kernel="rbf"), GRID, cv=5, scoring="neg_mean_absolute_error")
            search.fit(scaler.transform(x_train), (y_train - mean) / std)
            predicted = search.predict(scaler.transform(x_test)) * std + mean
            mae = float(np.abs(predicted - y_test).mean())
            results.append({"pooling": pooling, "seed": seed, "test_mae": mae, "n_test": len(test),
                            "best": search.best_params_})
            print(f"{pooling:>20} seed {seed}: kernel ridge test MAE {mae:.1f} {table.unit} (n_test {len(test)},"
                  f" {search.best_params_})", flush=True)
    path = RESULTS_DIR / f"pooling_krr_{args.source.replace(':', '-')}_{args.dataset}_{args.n}.json"
    path.write_text(json.dumps({"command": shlex.join(["python", *sys.argv]), "unit": table.unit,
                                "grid": GRID, "results": results}, indent=2))
    print(f"-> {path}")


if __name__ == "__main__":
    main()
