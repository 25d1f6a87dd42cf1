"""One training, resolved, and the one function that runs it.

`mattransfer train` (training/run.py) and study workers (study/worker.py) both describe what to
train as a `Job` (model, training options, seed, fine-tuning method and its options, objective) and
call `execute` with the data, the split and the source model: source selection, seeding, the
method's preparation, parameter groups, checks, training, testing and the result's schema are here
and nowhere else. Execution settings (device, compile, threads) are arguments, not part of the job.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch

from mattransfer.data.splits import Split, assert_disjoint, test_overlap, training_record
from mattransfer.data.symmetry import BRAVAIS
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError, LeakError
from mattransfer.finetune import METHODS, MethodOptions, param_groups
from mattransfer.graphs.build import GraphSettings
from mattransfer.graphs.inputs import InputStore, cached_inputs, row_keys
from mattransfer.models.domain import Domain
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training.latents import cached_latents
from mattransfer.training.prefix import PrefixStore, cached_prefix, frozen_blocks
from mattransfer.training.metrics import regression_metrics
from mattransfer.training.objectives import AuxiliaryClassification
from mattransfer.training.trainer import Batches, EmbeddingBatches, FitResult, TrainingOptions, fit

log = logging.getLogger("mattransfer")
ZERO_SHOT = "zero-shot"  # a job's method: the source model as it is, tested without training


@dataclass
class Job:
    """What decides a training's result. ``method`` None is a pre-training (a fresh model of ``model``);
    `ZERO_SHOT` the source model `execute` is given, tested as it is; otherwise a fine-tune of that source
    (``scratch``: none, a fresh one)."""

    model: ModelConfig
    graphs: GraphSettings
    training: TrainingOptions
    seed: int
    method: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the method's
    allow_test_overlap: bool = False
    bravais_weight: float = 0.0  # λ of the Bravais-lattice objective (structure-biased pre-training)
    description: str = "train"


@dataclass
class Outcome:
    model: TransferModel  # trained, holding its best-validation weights
    fit: FitResult | None  # None: a zero-shot job trained nothing
    summary: dict[str, Any]  # the one result schema: metrics.json of a run, result.json of a study task
    latent: torch.Tensor | None  # a frozen encoder's output for the rows of the data (NaN outside the split), if it had one


def execute(job: Job, data: Dataset, split: Split, *, source: TransferModel | None = None,
            device: torch.device, run_dir: Path | None = None, progress: bool = True, compile: bool = False,
            bravais_labels: torch.Tensor | None = None, latent: torch.Tensor | None = None) -> Outcome:
    """Build the job's model (from ``source`` for a fine-tune), train it with early stopping, test it.

    ``bravais_labels``: a class per row of ``data``, needed when the job has a Bravais objective.
    ``latent``: the frozen encoder's output for every row of ``data``, when the caller trains several
    heads on one encoder (an ensemble); otherwise the latent cache serves it.
    """
    start = time.perf_counter()
    if job.method == ZERO_SHOT:
        return _zero_shot(job, data, split, source, device, run_dir, start)
    options: MethodOptions | None = METHODS[job.method][0](**job.options) if job.method else None
    overlap = None
    torch.manual_seed(job.seed)
    if job.method is None:
        model = TransferModel(job.model, job.graphs)
    else:
        base = source if source is not None else TransferModel(job.model, job.graphs)
        check_inherit_head(base, data.table, options)
        torch.manual_seed(job.seed)  # scratch's initialisation and fresh heads depend on the seed alone
        model = METHODS[job.method][1](base, options)
        # After the method: scratch's fresh model has seen nothing. A package's pre-trained model records
        # no training structures (CHGNet's MPtrj, the Materials Project): its overlap is unknown, not 0.
        if source is not None and not source.provenance.get("pretrained"):
            overlap = check_test_overlap(model, data.table, split, allow=job.allow_test_overlap)
    groups = param_groups(model, options, job.training.lr)
    objective = None
    if job.bravais_weight:
        if bravais_labels is None:
            raise ConfigError(f"{job.description}: no Bravais labels were prepared for {data.table.name!r}.")
        objective = AuxiliaryClassification(bravais_labels, len(BRAVAIS), job.bravais_weight, model.encoder.out_dim,
                                            job.model.head).to(device)
        groups.append(objective.param_group(job.training.lr))
    n_trainable = sum(p.numel() for g in groups for p in g["params"])
    log.info("%s: %d parameters, %d trainable; split %d/%d/%d", job.description,
             sum(p.numel() for p in model.parameters()), n_trainable, len(split.train), len(split.val), len(split.test))
    # A frozen encoder's output is the same in every run: read it from, and add it to, the latent cache.
    if latent is None and "encoder" in model.frozen and objective is None and data.keys is not None:
        rows = torch.cat([data.inputs.positions(ids) for ids in (split.train, split.val, split.test)])
        latent = cached_latents(model.to(device), data.keys, data.inputs, rows)
    fitted, metrics = train_and_test(
        model, data, split, job.training, groups, seed=job.seed, device=device, run_dir=run_dir, progress=progress,
        description=job.description, objective=objective, compile=compile, latent=latent,
    )
    summary = {
        "description": job.description, "dataset": data.table.name, "target": data.table.target,
        "unit": data.table.unit, "method": job.method or "pretrain",
        "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test), "n_trainable": n_trainable,
        "best_epoch": fitted.best_epoch, "epochs_run": fitted.epochs_run, "best_val_loss": fitted.best_val_loss,
        "fit_seconds": fitted.seconds, "wall_seconds": time.perf_counter() - start,
        "threads": torch.get_num_threads(), "warnings": fitted.warnings, "test_in_pretraining": overlap, **metrics,
    }
    return Outcome(model, fitted, summary, latent)


def _zero_shot(job: Job, data: Dataset, split: Split, source: TransferModel | None, device: torch.device,
               run_dir: Path | None, start: float) -> Outcome:
    """The source model, its head and standardisation as trained, on ``split.test``: no training (n_train 0)."""
    if source is None:
        raise ConfigError(f"{job.description}: a zero-shot test needs a source model.")
    if source.target.get("unit") != data.table.unit:
        raise ConfigError(f"{job.description}: the source predicts {source.target.get('name')!r}"
                          f" [{source.target.get('unit')}], {data.table.name} holds {data.table.target!r}"
                          f" [{data.table.unit}]; a zero-shot error would mean nothing.")
    source.encoder.check_elements(data.inputs)
    overlap = check_test_overlap(source, data.table, split, allow=job.allow_test_overlap)
    y, test_pos = data.targets(), data.inputs.positions(split.test)
    source.to(device)
    batches = {"test": Batches(data.inputs, test_pos, source.standardise(y[test_pos]), job.training.batch_size, device)}
    metrics = _score(source, batches, y, split, run_dir)
    log.info("%s: zero-shot on %d test rows, MAE %.4g %s", job.description, len(split.test),
             metrics["test"]["mae"], data.table.unit)
    summary = {
        "description": job.description, "dataset": data.table.name, "target": data.table.target,
        "unit": data.table.unit, "method": ZERO_SHOT, "n_train": 0, "n_val": 0, "n_test": len(split.test),
        "n_trainable": 0, "best_epoch": None, "epochs_run": 0, "best_val_loss": None, "fit_seconds": 0.0,
        "wall_seconds": time.perf_counter() - start, "threads": torch.get_num_threads(), "warnings": [],
        "test_in_pretraining": overlap, **metrics,
    }
    return Outcome(source, None, summary, None)


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` asks for, checked before any work: a missing GPU is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device {name!r}: not a torch device (use auto, cpu, cuda or cuda:N).") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: this torch ({torch.__version__}) sees no CUDA GPU; use cpu or auto.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here.")
    return device


@dataclass
class Dataset:
    """A loaded table with its encoder inputs: what every run on one dataset shares. ``keys``: each
    row's content hash (`graphs.inputs.row_keys`), which the latent cache of frozen encoders reads."""

    table: PropertyTable
    inputs: InputStore
    keys: list[str] | None = None

    def targets(self) -> torch.Tensor:
        return torch.from_numpy(self.table.y)


def train_and_test(
    model: TransferModel,
    data: Dataset,
    split: Split,
    training: TrainingOptions,
    groups: list[dict],
    *,
    seed: int,
    device: torch.device,
    run_dir: Path | None = None,
    progress: bool = True,
    description: str = "training",
    objective: AuxiliaryClassification | None = None,
    compile: bool = False,
    latent: torch.Tensor | None = None,
) -> tuple[FitResult, dict]:
    """Standardise on the train split, fit with early stopping, and test the best-validation model.

    ``objective``: a loss trained beside the target's (see `fit`). ``compile``: see `trainer.COMPILE_HELP`.
    ``latent``: the frozen encoder's output for every graph of ``data`` (see `encode`), when the caller
    trains several heads on one encoder. An empty split part (no test set) is skipped.
    """
    assert_disjoint(split.train, split.val, split.test)
    model.encoder.check_elements(data.inputs)
    y = data.targets()
    train_pos, val_pos, test_pos = (data.inputs.positions(ids) for ids in (split.train, split.val, split.test))
    model.set_target(data.table.name, data.table.target, data.table.unit, y[train_pos], training.target_transform,
                     training.clip_to_train_range)
    y_std = model.standardise(y)
    model.to(device)
    batches = {
        name: Batches(data.inputs, pos, y_std[pos], training.batch_size, device)
        for name, pos in (("train", train_pos), ("val", val_pos), ("test", test_pos)) if len(pos)
    }
    trained = model
    if "encoder" in model.frozen and objective is None:  # a frozen featurizer: encode once, train the head
        trained = model.head
        batches = {name: EmbeddingBatches(b, model.encoder, latent) for name, b in batches.items()}
    elif frozen := frozen_blocks(model):  # frozen first blocks: their output once, the rest trains
        state = None if data.keys is None else cached_prefix(model, frozen, data.keys, data.inputs, device)
        inputs = PrefixStore(data.inputs, model.encoder, frozen, device, state=state)
        batches = {name: Batches(inputs, b.positions, b.y, b.batch_size, device) for name, b in batches.items()}
    elif compile:  # in place: the state dict keeps its keys; compiled code is reused by later models
        model.encoder.compile(dynamic=True)
    result = fit(
        trained, batches["train"], batches["val"], groups, training, seed=seed, objective=objective,
        history_csv=run_dir / "history.csv" if run_dir else None, progress=progress, description=description,
        to_unit=model.unstandardise,
    )
    model.training_data.append(training_record(data.table, split))
    return result, _score(model, batches, y, split, run_dir)


def _score(model: TransferModel, batches: dict[str, Batches], y: torch.Tensor, split: Split,
           run_dir: Path | None) -> dict:
    """Metrics of ``model`` on each split part of ``batches``, and the per-sample test predictions in ``run_dir``."""
    predictions = {name: predict_batches(model, b) for name, b in batches.items()}
    metrics = {name: regression_metrics(y[b.positions].numpy(), predictions[name].numpy()) for name, b in batches.items()}
    if run_dir is not None and "test" in batches:  # per-sample test errors, for paired comparisons between runs
        test = batches["test"].positions
        pd.DataFrame({"id": split.test, "y_true": y[test].numpy(), "y_pred": predictions["test"].numpy()}
                     ).to_csv(run_dir / "test_predictions.csv", index=False)
    return metrics


@torch.no_grad()
def predict_batches(model: TransferModel, batches: Batches) -> torch.Tensor:
    """Predictions in the target's physical unit, in the order of ``batches.positions``.

    `EmbeddingBatches` hold the encoder's output already: only the head runs on them.
    """
    model.eval()
    predict = model.predict_latent if isinstance(batches, EmbeddingBatches) else model.predict
    return torch.cat([predict(b).cpu() for b, *_ in batches.epoch()])


@contextmanager
def run_log(run_dir: Path) -> Iterator[None]:
    """Copy mattransfer's log records into ``run_dir/train.log`` for the duration of a run."""
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("mattransfer")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def training_domain(model: TransferModel, inputs: InputStore, train_pos: torch.Tensor, y_train: np.ndarray,
                    seed: int, latent: torch.Tensor | None = None) -> Domain:
    """What `predict` compares new structures with (models/domain.py): elements, target range, latent vectors
    (``latent``: the training rows' vectors when the caller has them)."""
    subset = inputs.subset(train_pos)
    latent = model.embed(subset) if latent is None else latent
    return Domain.fit(latent, set().union(*subset.elements()), y_train, seed=seed)


def check_test_overlap(model: TransferModel, table: PropertyTable, split: Split, *, allow: bool) -> dict:
    """How many of this run's test structures ``model`` saw in its earlier trainings; a `LeakError` when
    any did, unless ``allow`` (then only logged). The count is returned for the run's metrics either way."""
    overlap = test_overlap(model.training_data, table, split.test)
    if overlap["same_structure"]:
        message = (f"{overlap['same_structure']} of the {overlap['n_test']} test structures of {table.name} were in"
                   f" the pre-training's train/val data (e.g. {overlap['examples'][:3]}): their test errors would be"
                   " optimistic.")
        if not allow:
            raise LeakError(message + " Use the same test_seed and test_fraction as the pre-training, or set"
                                      " finetune.allow_test_overlap: true to accept it (the count is recorded).")
        log.info("%s Allowed (allow_test_overlap); the count is recorded.", message)
    return overlap


def check_inherit_head(pretrained: TransferModel, table: PropertyTable, options) -> None:
    if options.inherit_head and pretrained.target.get("unit") != table.unit:
        raise ConfigError(
            f"inherit_head needs the same kind of property: the pre-trained head predicts"
            f" {pretrained.target.get('name')!r} [{pretrained.target.get('unit')}], this run {table.target!r}"
            f" [{table.unit}]. Drop inherit_head to train a fresh head."
        )


def dataset(model: TransferModel, table: PropertyTable, progress: bool = False) -> Dataset:
    """``table`` with ``model``'s inputs (cached) and the rows' content hashes."""
    return Dataset(table, featurize(model, table, progress=progress), row_keys(table, model.encoder.featurizer()))


def featurize(model: TransferModel, table: PropertyTable, cache: bool = True, progress: bool = False) -> InputStore:
    """The inputs of ``table`` from the model's encoder's featurizer, checked against its elements.

    ``cache=False`` for one-off structures (predict): they would only grow the cache.
    """
    featurizer = model.encoder.featurizer()
    inputs = cached_inputs(table, featurizer, progress) if cache else featurizer.build(table, progress)
    model.encoder.check_elements(inputs)
    return inputs


def predict_structures(model: TransferModel, table: PropertyTable, batch_size: int = 256, cache: bool = True) -> np.ndarray:
    """Predictions for every structure of ``table`` (targets ignored), in physical units."""
    inputs = featurize(model, table, cache)
    return model.predict_latent(model.embed(inputs, batch_size=batch_size)).cpu().numpy()

