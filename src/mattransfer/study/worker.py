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

import torch

from mattransfer.data.splits import make_split
from mattransfer.data.symmetry import BRAVAIS
from mattransfer.errors import ConfigError
from mattransfer.fileio import file_sha256
from mattransfer.finetune import METHODS, param_groups
from mattransfer.models.model import TransferModel, read_checkpoint
from mattransfer.study.data import PreparedData, load_prepared
from mattransfer.study.layout import StudyDir
from mattransfer.study.spec import StudySpec
from mattransfer.study.tasks import Task
from mattransfer.training.run import Dataset, check_test_overlap, resolve_device, run_log, train_and_test
from mattransfer.training.trainer import TrainingOptions

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
            result = _train(task, spec, data[task.dataset], study)
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
    if task.aux_weight and labels is None:
        raise ConfigError(f"{task.describe()}: no Bravais labels were prepared for {task.dataset!r}.")
    split = make_split(
        dataset.table.ids, task.size, task.seed, dataset=task.dataset, test_fraction=spec.test_fraction,
        val_fraction=spec.val_fraction, test_seed=spec.test_seed,
    )
    task_dir = study.task_dir(task.hash)
    split.to_json(task_dir / "split.json")
    model, groups, training = _model(task, spec, study)
    # Materials recur across datasets: allowed in a study, counted per task for the report.
    overlap = check_test_overlap(model, dataset.table, split, allow=True) if task.pretrain else None
    device = resolve_device(spec.device)
    log.info("%s: split %d/%d/%d", task.describe(), len(split.train), len(split.val), len(split.test))
    fit, metrics = train_and_test(
        model, dataset, split, training, groups, seed=task.seed, device=device, run_dir=task_dir, progress=False,
        description=task.describe(), aux_labels=labels if task.aux_weight else None, aux_weight=task.aux_weight,
        compile=spec.compile,
    )
    checkpoint = {}
    if task.kind == "pretrain":
        model.cpu().save(study.checkpoint(task.hash), task=task.to_json())
        checkpoint = {"checkpoint_sha256": file_sha256(study.checkpoint(task.hash))}
    return {
        "task": task.describe(), "unit": data.unit, **checkpoint, "test_in_pretraining": overlap,
        "warnings": fit.warnings,
        "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
        "n_trainable": sum(p.numel() for g in groups for p in g["params"]),
        "epochs_run": fit.epochs_run, "best_epoch": fit.best_epoch, "best_val_loss": fit.best_val_loss,
        "fit_seconds": fit.seconds, "wall_seconds": time.perf_counter() - start, "metrics": metrics,
    }


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


def _model(task: Task, spec: StudySpec, study: StudyDir) -> tuple[TransferModel, list[dict], TrainingOptions]:
    """The model a task trains, its optimizer's parameter groups and its training options."""
    if task.kind == "pretrain":
        torch.manual_seed(task.seed)
        model = TransferModel(spec.model, spec.graphs)
        groups = param_groups(model, None, spec.pretrain.lr)
        if task.aux_weight:
            model.add_aux_head(len(BRAVAIS))
            groups.append({"name": "aux_head", "params": list(model.aux_head.parameters()), "lr": spec.pretrain.lr})
        return model, groups, spec.pretrain
    options_cls, prepare = METHODS[task.method]
    options = options_cls(**task.options)
    if task.pretrain:
        base = TransferModel.load(study.checkpoint(task.pretrain))
    else:  # scratch: the same architecture, initialised below
        base = TransferModel(spec.model, spec.graphs)
    base.drop_aux_head()
    torch.manual_seed(task.seed)  # scratch's initialisation and fresh heads depend on the seed alone
    model = prepare(base, options)
    return model, param_groups(model, options, spec.finetune.lr), spec.finetune

