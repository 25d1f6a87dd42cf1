"""Transferability scores of every Part 1 transfer cell, computed before (and independently of) its fine-tune.

For each (source, target, fine-tune size, seed) of Part 1 — a study pre-training or a package's pre-trained
model — the scores of `training.transferability.SCORES` of the source's frozen encoder features on the very
subset the fine-tune trains on (its train + val ids; never test ids). They go to ``transferability.csv``,
one row per cell and score; cells already there are not computed again, so a rerun adds only new cells. The
report correlates them with the measured transfer gain. Encoder outputs go through the latent cache.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import pandas as pd

from mattransfer.data.splits import make_split
from mattransfer.fileio import write_atomic
from mattransfer.models.model import TransferModel
from mattransfer.study.data import PreparedData, load_prepared
from mattransfer.study.layout import StudyDir
from mattransfer.study.tasks import Plan, Task
from mattransfer.training.latents import cached_latents
from mattransfer.training.transferability import SCORES

if TYPE_CHECKING:  # the spec imports the study parts, which import this module
    from mattransfer.study.spec import StudySpec

log = logging.getLogger(__name__)

FILE = "transferability.csv"
COLUMNS = ["source", "target", "finetune_size", "seed", "source_id", "score", "value", "n", "seconds"]
CELL = ["source_id", "target", "finetune_size", "seed"]


def _source_id(task: Task) -> str:
    """What the scored encoder is: the pre-training task's hash, or the package model's name."""
    return task.pretrained or task.pretrain or ""


def score_cells(spec: StudySpec, plan: Plan, study: StudyDir, data: dict[str, PreparedData],
                scores: Sequence[str]) -> pd.DataFrame:
    """Scores of every Part 1 transfer cell whose source is ready, added to ``transferability.csv``; the table."""
    path = study.root / FILE
    known = pd.read_csv(path, dtype={"source_id": str}) if path.exists() else pd.DataFrame(columns=COLUMNS)
    done = set(zip(known["source_id"], known["target"], known["finetune_size"], known["seed"], known["score"]))
    cells: dict[tuple, Task] = {}
    for task in plan.in_part(1):
        if task.kind == "finetune" and task.method != "scratch":
            source = _source_id(task)
            ready = task.pretrained or study.is_done(task.pretrain)
            if ready and any((source, task.dataset, task.size, task.seed, s) not in done for s in scores):
                cells.setdefault((source, task.dataset, task.size, task.seed), task)
    rows, models = [], {}
    for (source, target, size, seed), task in sorted(cells.items(), key=lambda item: item[0]):
        if source not in models:
            models = {source: _encoder(task, study)}  # one source's model in memory at a time
        prepared = data[task.data_key]
        dataset, _ = load_prepared(prepared)
        split = make_split(prepared.split_ids() or dataset.table.ids, size, seed, dataset=target,
                           test_fraction=spec.test_fraction, val_fraction=spec.val_fraction, test_seed=spec.test_seed)
        ids = [*split.train, *split.val]
        rows_of = dataset.inputs.positions(ids)
        keys = [dataset.keys[k] for k in rows_of.tolist()]
        start = time.perf_counter()
        features = cached_latents(models[source], keys, dataset.inputs.subset(rows_of)).double().cpu().numpy()
        y = dataset.table.y[rows_of.numpy()]
        for name in scores:
            if (source, target, size, seed, name) in done:
                continue
            value = SCORES[name](features, y)
            rows.append({"source": task.source, "target": target, "finetune_size": size, "seed": seed,
                         "source_id": source, "score": name, "value": value, "n": len(ids),
                         "seconds": round(time.perf_counter() - start, 3)})
    if rows:
        added = pd.DataFrame(rows, columns=COLUMNS)
        # concatenating an empty frame is deprecated in pandas (and would decide the columns' types)
        known = added if known.empty else pd.concat([known.astype({"value": float}), added], ignore_index=True)
        write_atomic(path, known.to_csv(index=False))
        log.info("transferability: %d scores of %d cells added to %s", len(rows), len(cells), path)
    return known


def _encoder(task: Task, study: StudyDir) -> TransferModel:
    """The source's frozen model (only tensors and plain types are unpickled from a checkpoint)."""
    if task.pretrained:
        return TransferModel.from_pretrained(task.pretrained)
    return TransferModel.load(study.checkpoint(task.pretrain))


def read_scores(study_dir: Path) -> pd.DataFrame | None:
    """``transferability.csv`` of a study directory, or None without one."""
    path = Path(study_dir) / FILE
    return pd.read_csv(path, dtype={"source_id": str}) if path.is_file() else None
