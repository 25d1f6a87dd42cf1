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
from mattransfer.graphs.inputs import InputStore, cached_inputs
from mattransfer.models.domain import Domain
from mattransfer.models.model import TransferModel, is_pretrained_name, load_source
from mattransfer.provenance import provenance
from mattransfer.threads import set_threads
from mattransfer.training.curves import plot_learning_curve
from mattransfer.training.latents import cached_latents
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
    """A loaded table with its encoder inputs: what every run on one dataset shares."""

    table: PropertyTable
    inputs: InputStore

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
    model.encoder.check_elements(data.inputs)
    y = data.targets()
    train_pos, val_pos, test_pos = (data.inputs.positions(ids) for ids in (split.train, split.val, split.test))
    model.set_target(data.table.name, data.table.target, data.table.unit, y[train_pos])
    y_std = ((y - model.target_mean) / model.target_std).float()
    model.to(device)
    batches = {
        name: Batches(data.inputs, pos, y_std[pos], training.batch_size, device)
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
        target_scale=float(model.target_std),
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
    pretrained = _load_pretrained(config) if config.finetune else None
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
        torch.manual_seed(config.seed)
        model = pretrained or TransferModel(config.model, config.graphs)
        data = Dataset(table, featurize(model, table, progress=progress))
        split.to_json(run_dir / "split.json")
        origin = provenance()
        write_atomic(run_dir / "config.yaml", f"# mattransfer {origin['mattransfer_version']},"
                     f" git commit {origin['git_commit'] or 'unknown'}\n"
                     + yaml.safe_dump(config.resolved(), sort_keys=False))

        torch.manual_seed(config.seed)  # again: featurizing may draw random numbers; fresh heads depend on the seed alone
        options = config.finetune.options() if config.finetune else None
        overlap = None
        if pretrained is not None:
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
        # A frozen encoder's output is the same in every run: read it from, and add it to, the latent cache.
        latent = cached_latents(model.to(device), table, data.inputs) if "encoder" in model.frozen else None
        result, metrics = train_and_test(
            model, data, split, config.training, groups, seed=config.seed, device=device, run_dir=run_dir,
            progress=progress, description=description, compile=config.compile, latent=latent,
        )
        train_pos = data.inputs.positions(split.train)
        model.domain = training_domain(model, data.inputs, train_pos, table.y[train_pos.numpy()], config.seed,
                                       None if latent is None else latent[train_pos])
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


def training_domain(model: TransferModel, inputs: InputStore, train_pos: torch.Tensor, y_train: np.ndarray,
                    seed: int, latent: torch.Tensor | None = None) -> Domain:
    """What `predict` compares new structures with (models/domain.py): elements, target range, latent vectors
    (``latent``: the training rows' vectors when the caller has them)."""
    subset = inputs.subset(train_pos)
    latent = model.embed(subset) if latent is None else latent
    return Domain.fit(latent, set().union(*subset.elements()), y_train, seed=seed)


def _load_pretrained(config: TrainConfig) -> TransferModel:
    """The fine-tune's starting point. A package's pre-trained model takes the options' head and, when the
    options name the same encoder, its pooling (neither is pre-trained); a checkpoint keeps its own."""
    source = config.finetune.read_from
    if not is_pretrained_name(source):
        return load_source(source)
    head = config.model.head if "model" in config.model_fields_set else None
    given = config.model.encoder if "model" in config.model_fields_set else {}
    model = load_source(source, head)
    if given.get("name") == model.config.encoder["name"] and given.get("pooling") != model.encoder.pooling:
        model = load_source(source, head, given["pooling"])
    return model


def _with_pretrained_architecture(config: TrainConfig, pretrained: TransferModel) -> TrainConfig:
    """The options with the checkpoint's model and graph settings: a fine-tune trains (and records)
    the architecture it loads. Settings the options give explicitly and that differ get a warning."""
    actual = {"model": pretrained.config, "graphs": pretrained.graphs}
    asked = {key: key in config.model_fields_set and getattr(config, key) != value for key, value in actual.items()}
    if is_pretrained_name(config.finetune.read_from):  # it took the options' head and pooling (`_load_pretrained`)
        asked = {"model": "encoder" in config.model.model_fields_set
                 and config.model.encoder["name"] != pretrained.config.encoder["name"], "graphs": False}
    for key, value in actual.items():
        if asked[key]:
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
