"""One training run, pre-training or fine-tuning, from options to a finished run directory.

A run directory holds: ``config.yaml`` (resolved options), ``split.json`` (train/val/test ids),
``history.csv`` (per-epoch losses), ``test_predictions.csv``, ``model.ckpt``, ``metrics.json`` and
``train.log``.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import yaml

from mattransfer.config import DataConfig, TrainConfig
from mattransfer.data.readers import read_frame
from mattransfer.data.registry import DataSources
from mattransfer.data.splits import Split, assert_disjoint, make_split, test_overlap, training_record
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError, LeakError
from mattransfer.fileio import write_atomic, write_json
from mattransfer.finetune import METHODS, param_groups
from mattransfer.graphs.build import cached_graphs
from mattransfer.graphs.store import GraphStore
from mattransfer.models.model import TransferModel
from mattransfer.training.metrics import regression_metrics
from mattransfer.training.trainer import Batches, EmbeddingBatches, FitResult, TrainingOptions, fit

log = logging.getLogger("mattransfer")


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


def load_table(data: DataConfig, sources: DataSources) -> PropertyTable:
    """The table a run's ``data`` section names: a registry key or a file."""
    if data.dataset is not None:
        return sources.load(data.dataset)
    path = Path(data.read_from)
    frame = read_frame(path, data.reader, data.structure_column)
    return PropertyTable.from_frame(
        frame, name=path.name.split(".")[0], target=data.target, unit=data.unit, source=str(path),
        structure_column=data.structure_column, id_column=data.id_column,
    )


@dataclass
class Dataset:
    """A loaded table with its graphs: what every run on one dataset shares."""

    table: PropertyTable
    graphs: GraphStore

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
    aux_labels: torch.Tensor | None = None,
    aux_weight: float = 0.0,
    compile: bool = False,
    latent: torch.Tensor | None = None,
) -> tuple[FitResult, dict]:
    """Standardise on the train split, fit with early stopping, and test the best-validation model.

    ``aux_labels`` (a class index per row of ``data``) and ``aux_weight`` add the auxiliary
    classification loss of structure-biased pre-training (see `fit`). ``compile``: see `trainer.COMPILE_HELP`.
    ``latent``: the frozen encoder's output for every graph of ``data`` (see `encode`), when the caller
    trains several heads on one encoder. An empty split part (no test set) is skipped.
    """
    assert_disjoint(split.train, split.val, split.test)
    model.encoder.check_elements(data.graphs)
    y = data.targets()
    train_pos, val_pos, test_pos = (data.graphs.positions(ids) for ids in (split.train, split.val, split.test))
    model.set_target(data.table.name, data.table.target, data.table.unit, y[train_pos])
    y_std = ((y - model.target_mean) / model.target_std).float()
    model.to(device)
    batches = {
        name: Batches(data.graphs, pos, y_std[pos], training.batch_size, device)
        for name, pos in (("train", train_pos), ("val", val_pos), ("test", test_pos)) if len(pos)
    }
    if aux_labels is not None:
        batches["train"].labels = aux_labels[train_pos]
    trained = model
    if "encoder" in model.frozen and not aux_weight:  # a frozen featurizer: encode once, train the head
        trained = model.head
        batches = {name: EmbeddingBatches(b, model.encoder, latent) for name, b in batches.items()}
    elif compile:  # in place: the state dict keeps its keys; compiled code is reused by later models
        model.encoder.compile(dynamic=True)
    result = fit(
        trained, batches["train"], batches["val"], groups, training, seed=seed, aux_weight=aux_weight,
        history_csv=run_dir / "history.csv" if run_dir else None, progress=progress, description=description,
    )
    model.training_data.append(training_record(data.table, split))
    predictions = {name: predict_batches(model, b) for name, b in batches.items()}
    metrics = {name: regression_metrics(y[b.positions].numpy(), predictions[name].numpy()) for name, b in batches.items()}
    if run_dir is not None and "test" in batches:  # per-sample test errors, for paired comparisons between runs
        pd.DataFrame({"id": split.test, "y_true": y[test_pos].numpy(), "y_pred": predictions["test"].numpy()}
                     ).to_csv(run_dir / "test_predictions.csv", index=False)
    return result, metrics


@torch.no_grad()
def predict_batches(model: TransferModel, batches: Batches) -> torch.Tensor:
    """Predictions in the target's physical unit, in the order of ``batches.positions``.

    `EmbeddingBatches` hold the encoder's output already: only the head runs on them.
    """
    model.eval()
    forward = model.head if isinstance(batches, EmbeddingBatches) else model
    return torch.cat([model.unstandardise(forward(b)).cpu() for b, *_ in batches.epoch()])


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


def run(config: TrainConfig, progress: bool = True) -> dict:
    """Run the training the options describe; write and return its metrics."""
    device = resolve_device(config.device)  # before any work or file: a missing GPU fails at once
    pretrained = TransferModel.load(config.finetune.read_from) if config.finetune else None
    if pretrained is not None:
        config = _with_pretrained_architecture(config, pretrained)
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_log(run_dir):
        start = time.perf_counter()
        sources = DataSources.from_yaml(config.data_sources) if config.data_sources else DataSources.from_env()
        table = load_table(config.data, sources)
        log.info("data %s: %d rows from %s (dropped: %s)", table.name, len(table), table.source, table.dropped or "none")
        data = Dataset(table, cached_graphs(table, config.graphs, progress))
        split = make_split(
            table.ids, config.data.n_samples, config.seed, dataset=table.name,
            test_fraction=config.data.test_fraction, val_fraction=config.data.val_fraction,
            test_seed=config.data.test_seed,
        )
        split.to_json(run_dir / "split.json")
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(config.resolved(), sort_keys=False))

        torch.manual_seed(config.seed)
        options = config.finetune.options() if config.finetune else None
        overlap = None
        if pretrained is None:
            model = TransferModel(config.model, config.graphs)
        else:
            pretrained.drop_aux_head()
            _check_inherit_head(pretrained, table, options)
            model = METHODS[config.finetune.method][1](pretrained, options)
            # after the method: scratch's fresh model has seen nothing
            overlap = check_test_overlap(model, table, split, allow=config.finetune.allow_test_overlap)
        groups = param_groups(model, options, config.training.lr)
        n_trainable = sum(p.numel() for g in groups for p in g["params"])
        log.info("model: %d parameters, %d trainable; split %d/%d/%d", sum(p.numel() for p in model.parameters()),
                 n_trainable, len(split.train), len(split.val), len(split.test))

        result, metrics = train_and_test(
            model, data, split, config.training, groups, seed=config.seed,
            device=device, run_dir=run_dir, progress=progress,
            description=f"{config.finetune.method if config.finetune else 'train'} {table.name}",
            compile=config.compile,
        )
        model.cpu().save(run_dir / "model.ckpt", config=config.resolved())
        summary = {
            "dataset": table.name, "target": table.target, "unit": table.unit,
            "method": config.finetune.method if config.finetune else "pretrain",
            "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
            "dropped": table.dropped, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "n_trainable": n_trainable, "fit_seconds": result.seconds,
            "wall_seconds": time.perf_counter() - start, "warnings": result.warnings,
            "test_in_pretraining": overlap, **metrics,
        }
        write_json(run_dir / "metrics.json", summary)
        log.info("test MAE %.4g %s, RMSE %.4g, R2 %.3f (best epoch %d of %d, %.1f s)", metrics["test"]["mae"],
                 table.unit, metrics["test"]["rmse"], metrics["test"]["r2"], result.best_epoch,
                 result.epochs_run, summary["wall_seconds"])
        return summary


def _with_pretrained_architecture(config: TrainConfig, pretrained: TransferModel) -> TrainConfig:
    """The options with the checkpoint's model and graph settings: a fine-tune trains (and records)
    the architecture it loads. Settings the options give explicitly and that differ get a warning."""
    actual = {"model": pretrained.config, "graphs": pretrained.graphs}
    for key, value in actual.items():
        if key in config.model_fields_set and getattr(config, key) != value:
            log.warning("%s: the options ask for another %s than the checkpoint %s has; the fine-tune trains and"
                        " records the checkpoint's: %s", config.output_dir, key, config.finetune.read_from,
                        value.model_dump())
    return config.model_copy(update=actual)


def check_test_overlap(model: TransferModel, table: PropertyTable, split: Split, *, allow: bool) -> dict:
    """How many of this run's test structures ``model`` saw in its earlier trainings; a `LeakError` when
    any did, unless ``allow`` (then a warning). The count is returned for the run's metrics either way."""
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


def _check_inherit_head(pretrained: TransferModel, table: PropertyTable, options) -> None:
    if options.inherit_head and pretrained.target.get("unit") != table.unit:
        raise ConfigError(
            f"inherit_head needs the same kind of property: the pre-trained head predicts"
            f" {pretrained.target.get('name')!r} [{pretrained.target.get('unit')}], this run {table.target!r}"
            f" [{table.unit}]. Drop inherit_head to train a fresh head."
        )


def predict_structures(model: TransferModel, table: PropertyTable, batch_size: int = 256) -> np.ndarray:
    """Predictions for every structure of ``table`` (targets ignored), in physical units."""
    graphs = cached_graphs(table, model.graphs, progress=False)
    model.encoder.check_elements(graphs)
    positions = torch.arange(len(graphs))
    batches = Batches(graphs, positions, torch.zeros(len(graphs)), batch_size, torch.device("cpu"))
    return predict_batches(model, batches).numpy()
