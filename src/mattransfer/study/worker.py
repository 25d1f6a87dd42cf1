"""What a worker process runs: one task, from its prepared dataset to result.json or error.json.

The result is written by the worker itself, so that a task finished is recorded even when the
main process dies. Loaded datasets stay in memory across the tasks a process runs.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

from mattransfer.data.splits import Split, fixed_test_ids, make_split
from mattransfer.errors import ConfigError
from mattransfer.fileio import file_sha256
from mattransfer.models.model import TransferModel, read_checkpoint
from mattransfer.study.data import FEATURES_FILE, PreparedData, load_prepared
from mattransfer.study.layout import StudyDir
from mattransfer.study.spec import StudySpec
from mattransfer.study.tasks import Task
from mattransfer.training.baselines import SOURCE_PREFIX, head_predictions, score_split
from mattransfer.training.job import Dataset, Job, execute, resolve_device, run_log
from mattransfer.training.latents import cached_latents

log = logging.getLogger(__name__)

_LOADED: dict[Path, tuple[Dataset, torch.Tensor | None]] = {}
# Torch's random state belongs to the process: tasks sharing one (threads of a Dask worker) run one
# at a time, so that a task's seed alone decides its result.
_ONE_TASK_AT_A_TIME = threading.Lock()


def set_torch_threads(threads: int) -> None:
    """Intra-op threads of this worker (workers × threads ≈ cores)."""
    torch.set_num_threads(threads)


def init_pool_worker(threads: int) -> None:
    """Initializer of a local pool worker: torch threads, and exit when the main process is gone.

    A pool worker outlives a main process killed with -9, waiting on its task queue forever.
    """
    set_torch_threads(threads)
    threading.Thread(target=_exit_with_main_process, daemon=True).start()


def _exit_with_main_process() -> None:
    main = multiprocessing.parent_process()
    while main.is_alive():
        time.sleep(1.0)
    os._exit(1)


def run_task(task: Task, spec: StudySpec, data: dict[str, PreparedData], study_dir: Path) -> str:
    """Run ``task``; record its result or its error (with the traceback). Returns the status."""
    study = StudyDir(study_dir)
    task_dir = study.task_dir(task.hash)
    task_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _ONE_TASK_AT_A_TIME, run_log(task_dir):
            result = _train(task, spec, data[task.data_key], study)
    except Exception as exc:
        study.write_error(task.hash, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return "failed"
    study.write_result(task.hash, result)
    return "done"


def _load(data: PreparedData) -> tuple[Dataset, torch.Tensor | None]:
    if data.path not in _LOADED:
        _LOADED[data.path] = load_prepared(data)
    return _LOADED[data.path]


def _train(task: Task, spec: StudySpec, data: PreparedData, study: StudyDir) -> dict:
    start = time.perf_counter()
    dataset, labels = _load(data)
    ids = data.split_ids() or dataset.table.ids
    if task.kind == "zero-shot":  # trains on nothing: the fixed test set alone
        split = Split((), (), tuple(fixed_test_ids(ids, spec.test_fraction, spec.test_seed)), spec.test_fraction,
                      spec.test_seed)
    else:
        split = make_split(ids, task.size, task.seed, dataset=task.dataset, test_fraction=spec.test_fraction,
                           val_fraction=spec.val_fraction, test_seed=spec.test_seed)
    task_dir = study.task_dir(task.hash)
    split.to_json(task_dir / "split.json")
    if task.kind == "baseline":
        return {**_feature_baseline(task, dataset, data, split, _source(task, study)),
                "wall_seconds": time.perf_counter() - start}
    outcome = execute(job_of(task, spec), dataset, split, source=_source(task, study), device=resolve_device(spec.device),
                      run_dir=task_dir, progress=False, compile=spec.compile,
                      bravais_labels=labels if task.aux_weight else None)
    checkpoint = {}
    if task.kind == "pretrain":
        outcome.model.cpu().save(study.checkpoint(task.hash), task=task.to_json())
        checkpoint = {"checkpoint_sha256": file_sha256(study.checkpoint(task.hash))}
    return {**outcome.summary, "task": task.describe(), **checkpoint, "wall_seconds": time.perf_counter() - start}


def _feature_baseline(task: Task, dataset: Dataset, data: PreparedData, split: Split,
                      source: TransferModel | None) -> dict:
    """A feature baseline's result, in the fine-tunes' schema: its n_train is train + val, n_val 0, no epochs.
    With a ``source`` (its pre-training), that model's prediction of every row is one more feature."""
    features = pd.read_parquet(data.path / FEATURES_FILE)
    if source is not None:  # the pre-training shares the study's encoder, so it reads the prepared inputs
        source.eval()
        latent = (cached_latents(source, dataset.keys, dataset.inputs) if dataset.keys is not None
                  else source.embed(dataset.inputs))
        predictions = pd.Series(head_predictions(source, latent), index=dataset.table.ids)
        features[f"{SOURCE_PREFIX}{task.source}"] = predictions.reindex(features.index)
    y = pd.Series(dataset.table.y, index=dataset.table.ids)
    scores = score_split(features, y, split, task.runs or task.method, task.seed)
    test = {k: scores[k] for k in ("mae", "rmse", "r2")}
    log.info("%s: test MAE %.4g %s (%d features, fit %.1f s)", task.describe(), test["mae"], data.unit,
             features.shape[1], scores["fit_s"])
    return {"description": task.describe(), "task": task.describe(), "dataset": task.dataset, "target": data.target,
            "unit": data.unit, "method": task.method, "n_train": scores["n_train"], "n_val": 0,
            "n_test": scores["n"], "n_features": features.shape[1], "epochs_run": None, "best_epoch": None,
            "fit_seconds": scores["fit_s"], "test": test}


def _source(task: Task, study: StudyDir) -> TransferModel | None:
    """The pre-training a transfer fine-tune starts from (only tensors and plain types are unpickled),
    or the package's pre-trained model it names."""
    if task.pretrained:
        return TransferModel.from_pretrained(task.pretrained)
    return TransferModel.load(study.checkpoint(task.pretrain)) if task.pretrain else None


def job_of(task: Task, spec: StudySpec) -> Job:
    """The `Job` a study task describes. Materials recur across datasets: a study allows test structures
    its source trained on and counts them per task for the report."""
    return Job(
        model=spec.model, graphs=spec.graphs, training=spec.pretrain if task.kind == "pretrain" else spec.finetune,
        seed=task.seed, method=None if task.kind == "pretrain" else task.runs or task.method, options=task.options,
        allow_test_overlap=True, bravais_weight=task.aux_weight, description=task.describe(),
    )


def checkpoint_problem(path: Path, result: dict | None) -> str | None:
    """What is wrong with a finished pre-training's checkpoint (missing, or not the file its result
    recorded), or None. Results from before checksums were recorded are checked by reading the file."""
    if not path.is_file():
        return "is missing"
    if result and "checkpoint_sha256" in result:
        return None if file_sha256(path) == result["checkpoint_sha256"] else "does not match its recorded checksum"
    try:
        read_checkpoint(path)
    except ConfigError as exc:
        return f"is unreadable ({exc})"
    return None
