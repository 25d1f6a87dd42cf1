"""One training run, pre-training or fine-tuning, from options to a finished run directory.

A run directory holds: ``config.yaml`` (resolved options, headed by the package version and git
commit), ``split.json`` (train/val/test ids), ``history.csv`` (per-epoch losses, MAEs in the target's
unit, learning rates, elapsed seconds), ``learning_curve.png``, ``test_predictions.csv``,
``model.ckpt`` (with the training domain, `models/domain.py`), ``metrics.json`` and ``train.log``.
"""

from __future__ import annotations

import dataclasses
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
from mattransfer.graphs.build import build_graphs, cached_graphs
from mattransfer.graphs.store import GraphStore
from mattransfer.models.domain import Domain
from mattransfer.models.model import TransferModel
from mattransfer.provenance import provenance
from mattransfer.threads import set_threads
from mattransfer.training.curves import plot_learning_curve
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


def load_table(data: DataConfig, sources: DataSources, path: Path | None = None) -> PropertyTable:
    """The table a run's ``data`` section names: a registry key or a file.

    With ``path``: that file (a test or validation set), read with the same reader, target and columns.
    """
    if data.dataset is not None and path is None:
        return sources.load(data.dataset)
    if data.dataset is not None:
        spec = sources.spec(data.dataset)
        reader, target, unit, structure_column, id_column = None, spec.target, spec.unit, spec.structure_column, spec.id_column
    else:
        reader, target, unit, structure_column, id_column = (data.reader, data.target, data.unit, data.structure_column,
                                                             data.id_column)
    path = Path(path or data.read_from)
    frame = read_frame(path, reader, structure_column)
    return PropertyTable.from_frame(
        frame, name=data.dataset or path.name.split(".")[0], target=target, unit=unit, source=str(path),
        structure_column=structure_column, id_column=id_column,
    )


def prepare_table(data: DataConfig, sources: DataSources, seed: int) -> tuple[PropertyTable, Split]:
    """The rows a run uses (its samples, its test set, and any validation or test file) and their split.

    Only these rows are featurized: a pre-training on 941 of eform's 36,737 rows builds the graphs of
    those and of the fixed test set, not of the whole file.
    """
    start = time.perf_counter()
    table = load_table(data, sources)
    log.info("data %s: %d rows from %s in %.1f s (dropped: %s)", table.name, len(table), table.source,
             time.perf_counter() - start, table.dropped or "none")
    split = make_split(
        table.ids, data.n_samples, seed, dataset=table.name, test_fraction=data.test_fraction,
        val_fraction=data.val_fraction, test_seed=data.test_seed,
    )
    used = table.subset([*split.train, *split.val, *split.test])
    parts = {"val": list(split.val), "test": list(split.test)}
    for part, path in (("val", data.validation_set), ("test", data.test_set)):
        if path is not None:
            extra = load_table(data, sources, path)
            _refuse_training_structures(extra, used.subset(list(split.train)))
            used, parts[part] = used.concat(extra, prefix=f"{part}:")
            log.info("%s set: %d rows from %s", part, len(extra), path)
    return used, dataclasses.replace(split, val=tuple(parts["val"]), test=tuple(parts["test"]))


def _refuse_training_structures(other: PropertyTable, train: PropertyTable) -> None:
    """A test or validation file must not hold a training structure (the same `structure_key`)."""
    shared = test_overlap([train.identities()], other, other.ids)
    if shared["same_structure"]:
        raise LeakError(f"{other.source}: {shared['same_structure']} structures are also training samples of"
                        f" {train.source} (e.g. {shared['examples'][:3]}); remove them from one of the two.")


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
    model.set_target(data.table.name, data.table.target, data.table.unit, y[train_pos], training.target_transform)
    y_std = model.standardise(y)
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
        to_unit=model.unstandardise,
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


def run(config: TrainConfig, progress: bool = True) -> dict:
    """Run the training the options describe; write and return its metrics."""
    device = resolve_device(config.device)  # before any work or file: a missing GPU fails at once
    pretrained = TransferModel.load(config.finetune.read_from) if config.finetune else None
    if pretrained is not None:
        config = _with_pretrained_architecture(config, pretrained)
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads is not None:
        set_threads(config.threads)
    with run_log(run_dir):
        start = time.perf_counter()
        sources = DataSources.from_yaml(config.data_sources) if config.data_sources else DataSources.from_env()
        table, split = prepare_table(config.data, sources, config.seed)
        data = Dataset(table, cached_graphs(table, config.graphs, progress))
        split.to_json(run_dir / "split.json")
        origin = provenance()
        write_atomic(run_dir / "config.yaml", f"# mattransfer {origin['mattransfer_version']},"
                     f" git commit {origin['git_commit'] or 'unknown'}\n"
                     + yaml.safe_dump(config.resolved(), sort_keys=False))

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

        description = f"{config.finetune.method if config.finetune else 'train'} {table.name}"
        result, metrics = train_and_test(
            model, data, split, config.training, groups, seed=config.seed,
            device=device, run_dir=run_dir, progress=progress, description=description, compile=config.compile,
        )
        train_pos = data.graphs.positions(split.train)
        model.domain = training_domain(model, data.graphs, train_pos, table.y[train_pos.numpy()], config.seed)
        model.provenance = origin
        model.cpu().save(run_dir / "model.ckpt", config=config.resolved())
        plot_learning_curve(result.history, result.best_epoch, table.unit, f"{description}: {table.target}",
                            run_dir / "learning_curve.png")
        summary = {
            "dataset": table.name, "target": table.target, "unit": table.unit,
            "method": config.finetune.method if config.finetune else "pretrain",
            "n_train": len(split.train), "n_val": len(split.val), "n_test": len(split.test),
            "dropped": table.dropped, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "n_trainable": n_trainable, "fit_seconds": result.seconds,
            "wall_seconds": time.perf_counter() - start, "threads": torch.get_num_threads(), "warnings": result.warnings,
            "test_in_pretraining": overlap, **origin, **metrics,
        }
        write_json(run_dir / "metrics.json", summary)
        log.info("test MAE %.4g %s, RMSE %.4g, R2 %.3f (best epoch %d of %d, %.1f s)", metrics["test"]["mae"],
                 table.unit, metrics["test"]["rmse"], metrics["test"]["r2"], result.best_epoch,
                 result.epochs_run, summary["wall_seconds"])
        return summary


def training_domain(model: TransferModel, graphs: GraphStore, train_pos: torch.Tensor, y_train: np.ndarray,
                    seed: int) -> Domain:
    """What `predict` compares new structures with (models/domain.py): elements, target range, latent vectors."""
    subset = graphs.subset(train_pos)
    latent = model.embed(subset)
    return Domain.fit(latent, set().union(*subset.elements()), y_train, seed=seed)


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


def _check_inherit_head(pretrained: TransferModel, table: PropertyTable, options) -> None:
    if options.inherit_head and pretrained.target.get("unit") != table.unit:
        raise ConfigError(
            f"inherit_head needs the same kind of property: the pre-trained head predicts"
            f" {pretrained.target.get('name')!r} [{pretrained.target.get('unit')}], this run {table.target!r}"
            f" [{table.unit}]. Drop inherit_head to train a fresh head."
        )


def featurize(model: TransferModel, table: PropertyTable, cache: bool = True, progress: bool = False) -> GraphStore:
    """The graphs of ``table`` with the model's graph settings, checked against its element table.

    ``cache=False`` for one-off structures (predict): they would only grow the cache.
    """
    graphs = cached_graphs(table, model.graphs, progress) if cache else build_graphs(table, model.graphs, progress)
    model.encoder.check_elements(graphs)
    return graphs


def predict_structures(model: TransferModel, table: PropertyTable, batch_size: int = 256, cache: bool = True) -> np.ndarray:
    """Predictions for every structure of ``table`` (targets ignored), in physical units."""
    graphs = featurize(model, table, cache)
    return model.predict_latent(model.embed(graphs, batch_size=batch_size)).cpu().numpy()
