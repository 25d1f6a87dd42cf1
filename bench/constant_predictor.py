"""Reference for bench/results/baselines.txt: test MAE of predicting the training mean (the fine-tune subset's n labels)
per dataset, n and seed, on the fixed test set. Run: PYTHONPATH=src python bench/constant_predictor.py"""

import numpy as np

from mattransfer.data.registry import DataSources
from mattransfer.data.splits import make_split

sources = DataSources.from_yaml("configs/shared-data.yaml")
for key in ("phonons", "dielectric"):
    table = sources.load(key); y = dict(zip(table.ids, table.y))
    for n in (100, 800):
        maes = []
        for seed in (0, 1, 2):
            split = make_split(table.ids, n, seed)
            mean = np.mean([y[i] for i in (*split.train, *split.val)])
            maes.append(np.mean([abs(y[i] - mean) for i in split.test]))
        print(f"{key} n={n}: constant (training mean) test MAE {np.mean(maes):.4g} ± {np.std(maes, ddof=1):.2g}, n_test {len(split.test)}")
