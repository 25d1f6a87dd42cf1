"""How many phonons / expt_gap test structures were in the bandgap pre-training's train/val data.

The checkpoint of runs/pretrain_bandgap predates the training records that checkpoints now carry, so
the simulation could not count it; this recounts it from the pre-training's split.json. Run from the
repository root after `mattransfer train configs/pretrain_bandgap.yaml`:

    .venv/bin/python docs/results/label-selection/test_overlap.py > docs/results/label-selection/test_overlap.json
"""
import json

from mattransfer.data.registry import DataSources
from mattransfer.data.splits import Split, fixed_test_ids, test_overlap, training_record

sources = DataSources.from_yaml("configs/shared-data.yaml")
record = training_record(sources.load("bandgap"), Split.from_json("runs/pretrain_bandgap/split.json"))
counts = {}
for key in ("phonons", "expt_gap"):
    table = sources.load(key)
    counts[key] = test_overlap([record], table, fixed_test_ids(table.ids))
print(json.dumps(counts, indent=2))
