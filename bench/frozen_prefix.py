"""`freeze` with the frozen first blocks' output computed once (training/prefix.py) against running them
every epoch: the same fine-tune twice in one process, seconds per epoch of each and their ratio.

    OMP_NUM_THREADS=1 python bench/frozen_prefix.py --source chgnet:0.3.0 --train-last 1 --epochs 3 \\
        --out bench/results/frozen_prefix_chgnet.json

The fused run's ``prefix_s`` (computing the frozen blocks' state once, before the first epoch) is reported
apart from its epochs. Validation loss per epoch of both runs is printed beside: they train the same model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mattransfer.data.registry import DataSources
from mattransfer.data.splits import make_split
from mattransfer.finetune import METHODS, param_groups
from mattransfer.models.model import load_source
from mattransfer.training import job as job_module
from mattransfer.training.job import dataset, train_and_test
from mattransfer.training.prefix import PrefixStore, frozen_blocks
from mattransfer.training.trainer import TrainingOptions

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="chgnet:0.3.0")
    parser.add_argument("--train-last", type=int, default=1)
    parser.add_argument("--target", default="phonons")
    parser.add_argument("--n", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = DataSources.from_yaml(ROOT / "configs" / "shared-data.yaml").load(args.target)
    split = make_split(table.ids, args.n, 0, dataset=table.name)
    source = load_source(args.source)
    used = table.subset([*split.train, *split.val, *split.test])
    data = dataset(source, used)
    options_cls, prepare = METHODS["freeze"]
    training = TrainingOptions(max_epochs=args.epochs, patience=1000)
    prefix_s: list[float] = []

    def timed_prefix(*a, **k) -> PrefixStore:
        start = time.perf_counter()
        store = PrefixStore(*a, **k)
        prefix_s.append(time.perf_counter() - start)
        return store

    job_module.PrefixStore = timed_prefix
    rows = {}
    for name, blocks in (("every_epoch", lambda model: 0), ("once", frozen_blocks)):
        job_module.frozen_blocks = blocks
        torch.manual_seed(0)
        model = prepare(load_source(args.source), options_cls(train_last=args.train_last))
        fitted, metrics = train_and_test(model, data, split, training, param_groups(model, None, training.lr),
                                         seed=0, device=torch.device("cpu"), progress=False)
        rows[name] = {"epoch_s": fitted.seconds / fitted.epochs_run, "epochs": fitted.epochs_run,
                      "val_loss": [round(h["val_loss"], 6) for h in fitted.history], "test_mae": metrics["test"]["mae"]}
    record = {"source": args.source, "train_last": args.train_last, "target": args.target, "n": args.n,
              "n_train": len(split.train), "n_val": len(split.val), "threads": 1, **rows,
              "prefix_s": prefix_s[0], "ratio_epoch_s": rows["every_epoch"]["epoch_s"] / rows["once"]["epoch_s"]}
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
