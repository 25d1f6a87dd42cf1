"""One training run, pre-training or fine-tuning, from options to a finished run directory: the
options become a `training.job.Job`, which `execute` runs as it runs a study's tasks.

A run directory holds: ``config.yaml`` (resolved options, headed by the package version and git
commit), ``split.json`` (train/val/test ids), ``history.csv`` (per-epoch losses, MAEs in the target's
unit, learning rates, elapsed seconds), ``learning_curve.png``, ``test_predictions.csv``,
``model.ckpt`` (with the training domain, `models/domain.py`), ``metrics.json`` and ``train.log``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
import yaml

from mattransfer.config import DataConfig, TrainConfig
from mattransfer.data.readers import read_frame
from mattransfer.data.registry import DataSources
from mattransfer.data.splits import Split, fixed_test_ids, make_split, test_overlap, without_formulas_of
from mattransfer.data.symmetry import cached_bravais_labels
from mattransfer.data.table import PropertyTable
from mattransfer.errors import LeakError
from mattransfer.fileio import write_atomic, write_json
from mattransfer.models.model import TransferModel, is_pretrained_name, load_source
from mattransfer.provenance import provenance
from mattransfer.threads import set_threads
from mattransfer.training.curves import plot_learning_curve
from mattransfer.training.job import Job, dataset, execute, resolve_device, run_log, training_domain

log = logging.getLogger("mattransfer")



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
    for rule in data.exclude_formulas_of:
        other = sources.load(rule.dataset)
        rows = other.ids if rule.rows == "all" else fixed_test_ids(other.ids, rule.test_fraction, rule.test_seed)
        table = without_formulas_of(table, other.subset(rows), f"formula_in_{rule.rows}_of_{rule.dataset}")
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


def run(config: TrainConfig, progress: bool = True, prepared: tuple[PropertyTable, Split] | None = None) -> dict:
    """Run the training the options describe; write and return its metrics.

    ``prepared``: the rows and split to train on, when the caller draws them (a Matbench fold) instead
    of the options' ``data`` section.
    """
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
        if prepared is None:
            sources = DataSources.from_yaml(config.data_sources) if config.data_sources else DataSources.from_env()
            prepared = prepare_table(config.data, sources, config.seed)
        table, split = prepared
        data = dataset(pretrained or TransferModel(config.model, config.graphs), table, progress)
        split.to_json(run_dir / "split.json")
        origin = provenance()
        write_atomic(run_dir / "config.yaml", f"# mattransfer {origin['mattransfer_version']},"
                     f" git commit {origin['git_commit'] or 'unknown'}\n"
                     + yaml.safe_dump(config.resolved(), sort_keys=False))
        job = job_of(config, table.name)
        labels = None
        if job.bravais_weight:
            labels = torch.from_numpy(cached_bravais_labels(table, config.graphs, progress))
        outcome = execute(job, data, split, source=pretrained, device=device, run_dir=run_dir, progress=progress,
                          compile=config.compile, bravais_labels=labels)
        model, result = outcome.model, outcome.fit
        train_pos = data.inputs.positions(split.train)
        model.domain = training_domain(model, data.inputs, train_pos, table.y[train_pos.numpy()], config.seed,
                                       None if outcome.latent is None else outcome.latent[train_pos])
        model.provenance = origin
        model.cpu().save(run_dir / "model.ckpt", config=config.resolved())
        plot_learning_curve(result.history, result.best_epoch, table.unit, f"{job.description}: {table.target}",
                            run_dir / "learning_curve.png")
        summary = {**outcome.summary, "dropped": table.dropped, "wall_seconds": time.perf_counter() - start, **origin}
        write_json(run_dir / "metrics.json", summary)
        test = summary["test"]
        log.info("test MAE %.4g %s, RMSE %.4g, R2 %.3f (best epoch %d of %d, %.1f s)", test["mae"], table.unit,
                 test["rmse"], test["r2"], result.best_epoch, result.epochs_run, summary["wall_seconds"])
        return summary


def job_of(config: TrainConfig, dataset: str) -> Job:
    """The `Job` an options file describes."""
    finetune = config.finetune
    return Job(
        model=config.model, graphs=config.graphs, training=config.training, seed=config.seed,
        method=finetune.method if finetune else None, options=finetune.config if finetune else {},
        allow_test_overlap=finetune.allow_test_overlap if finetune else False,
        bravais_weight=config.objective.bravais_weight,
        description=f"{finetune.method if finetune else 'train'} {dataset}",
    )


def _load_pretrained(config: TrainConfig) -> TransferModel:
    """The fine-tune's starting point. A package's pre-trained model takes the options' head and, when the
    options name the same encoder, its pooling (neither is pre-trained); a checkpoint keeps its own."""
    source = config.finetune.read_from
    if not is_pretrained_name(source):
        return load_source(source)
    given = config.model.encoder if "model" in config.model_fields_set else {}
    head = config.model.head if "head" in config.model.model_fields_set else None
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
