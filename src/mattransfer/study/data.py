"""A study's datasets, prepared once by the main process and read by every worker.

The main process loads each table (structures and all), featurizes it through the input cache with
the study encoder's featurizer and puts what training needs into the study directory: the encoder's
inputs (``inputs.pt``, a hard link to the cache file), targets
and, for structure-biased pre-training, Bravais labels. Workers read only those files, never the structures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from mattransfer.data.registry import DataSources, release_read_cache
from mattransfer.data.splits import fixed_test_ids, make_split, without_formulas_of
from mattransfer.data.symmetry import cached_bravais_labels
from mattransfer.data.table import PropertyTable
from mattransfer.featurizers import table_features
from mattransfer.fileio import atomic_path, write_atomic, write_json
from mattransfer.graphs.build import GraphSettings
from mattransfer.graphs.inputs import Featurizer, InputStore, cached_inputs_file, inputs_hash, row_keys
from mattransfer.study.layout import StudyDir
from mattransfer.study.relatedness import property_relatedness
from mattransfer.models.model import TransferModel
from mattransfer.training.job import Dataset

if TYPE_CHECKING:  # the spec imports the study parts, which import this module
    from mattransfer.study.spec import StudySpec

log = logging.getLogger(__name__)
FEATURES_FILE = "features.parquet"  # of a prepared dataset: what its feature baselines read


@dataclass(frozen=True)
class PreparedData:
    """What tasks need to know of a dataset, and where its prepared files are."""

    key: str
    target: str
    unit: str
    fingerprint: str  # content hash of ids, structures, featurizer and targets
    n_rows: int
    pool: int  # samples outside the fixed test set: the most a subset can draw
    path: Path
    featurizer: Featurizer  # what made inputs.pt, and reads it
    has_labels: bool = False  # Bravais labels prepared

    def split_ids(self) -> list[str] | None:
        """The whole dataset's ids, which splits are drawn from, when the prepared rows are only some of them."""
        path = self.path / "split_ids.json"
        return json.loads(path.read_text()) if path.exists() else None


def data_key(dataset: str, pretrained: str | None) -> str:
    """The prepared data a task reads: a package's pre-trained model reads inputs of its own."""
    return dataset if pretrained is None else f"{dataset}@{pretrained}"


def without_test_formulas(source: str, target: str) -> str:
    """The data key of ``source`` without the compositions of ``target``'s fixed test set."""
    return f"{source}-without-{target}-test"


def fingerprint(table: PropertyTable, featurizer: Featurizer) -> str:
    digest = hashlib.sha256(inputs_hash(table, featurizer).encode())
    digest.update(np.ascontiguousarray(table.y, dtype=np.float64).tobytes())
    return digest.hexdigest()[:16]


def prepare_datasets(
    spec: StudySpec, study: StudyDir, labels_for: set[str], progress: bool = True
) -> dict[str, PreparedData]:
    """Load and prepare every dataset of ``spec``; Bravais labels for the keys in ``labels_for``.

    Each dataset is prepared with the study encoder's featurizer, and for each pre-trained model a part
    fine-tunes (Part 1's ``universal``) with that model's (`tasks.data_key`), for the rows its fine-tunes
    use (test set and the largest subset of each seed: subsets are nested). Datasets a part asks for without
    another's test compositions (`Part.formula_exclusions`) are prepared again under `without_test_formulas`,
the rows removed counted in ``formula_exclusions.json``.
    Also writes each dataset's fixed test ids and the datasets' property relatedness.
    """
    sources = DataSources.from_yaml(spec.data_sources) if spec.data_sources else DataSources.from_env()
    tables, prepared = {}, {}
    featurizer = TransferModel(spec.model, spec.graphs).encoder.featurizer()
    universal = {name: TransferModel.from_pretrained(name).encoder.featurizer()
                 for part in spec.parts() for name in part.pretrained_models()}
    for key in spec.datasets:
        table = sources.load(key)
        log.info("data %s: %d rows from %s (dropped: %s)", key, len(table), table.source, table.dropped or "none")
        test = fixed_test_ids(table.ids, spec.test_fraction, spec.test_seed)
        study.test_ids_file(table.name).parent.mkdir(parents=True, exist_ok=True)
        write_json(study.test_ids_file(table.name), {"dataset": table.name, "test_fraction": spec.test_fraction,
                                                     "test_seed": spec.test_seed, "ids": test})
        pool = len(table) - len(test)
        prepared[key] = _prepare(table, featurizer, study, key, pool, progress,
                                 spec.graphs if key in labels_for else None)
        used = _used_rows(table, test, pool, spec)
        drawn = [part.feature_baselines(spec)[key] for part in spec.parts() if key in part.feature_baselines(spec)]
        if drawn:
            prepare_features(_used_rows(table, test, pool, spec, max(drawn)), prepared[key].path, progress)
        if universal:
            for name, own in universal.items():
                prepared[data_key(key, name)] = _prepare(used, own, study, data_key(key, name), pool, progress,
                                                         split_ids=table.ids)
        tables[key] = table
    exclusions = {}
    for source, target in sorted({pair for part in spec.parts() for pair in part.formula_exclusions()}):
        test = tables[target].subset(fixed_test_ids(tables[target].ids, spec.test_fraction, spec.test_seed))
        reason = f"formula_in_test_of_{target}"
        table = without_formulas_of(tables[source], test, reason)
        key = without_test_formulas(source, target)
        log.info("data %s: %d rows (%s)", key, len(table), table.dropped)
        exclusions[key] = {"source": source, "target": target, "target_test_rows": len(test),
                           "rows": len(tables[source]), "removed": table.dropped[reason], "kept": len(table)}
        pool = len(table) - len(fixed_test_ids(table.ids, spec.test_fraction, spec.test_seed))
        prepared[key] = _prepare(table, featurizer, study, key, pool, progress)
    if exclusions:  # for the report: the log alone would lose them
        write_json(study.exclusions_file, exclusions)
    _write_relatedness(tables, {key: prepared[key].fingerprint for key in tables}, study)
    release_read_cache()  # the main process only schedules from here on
    return prepared


def _used_rows(table: PropertyTable, test: list[str], pool: int, spec: StudySpec,
               largest: int | None = None) -> PropertyTable:
    """The rows fine-tunes of ``table`` of at most ``largest`` samples (default: the study's largest fine-tune
    size, Part 1's) can use: its test set and, for each seed, the largest subset."""
    largest = min(largest or max(spec.finetune_sizes), pool)
    used = set(test)
    for seed in spec.seeds:
        split = make_split(table.ids, largest, seed, dataset=table.name, test_fraction=spec.test_fraction,
                           val_fraction=spec.val_fraction, test_seed=spec.test_seed)
        used.update(split.train, split.val)
    return table.subset([i for i in table.ids if i in used])


def prepare_features(table: PropertyTable, path: Path, progress: bool = True) -> Path:
    """``path/features.parquet``: the feature baselines' matminer features of ``table``'s rows, indexed by id
    (workers have no structures). Kept while it holds every row; rebuilt through the feature cache otherwise."""
    file = path / FEATURES_FILE
    if file.exists() and set(table.ids) <= set(pd.read_parquet(file, columns=[]).index):
        return file
    frame = table_features(table, progress)[0].set_axis(list(table.ids))
    with atomic_path(file, ".parquet") as tmp:
        frame.to_parquet(tmp)
    return file


def _prepare(table: PropertyTable, featurizer: Featurizer, study: StudyDir, key: str, pool: int, progress: bool,
             labels: GraphSettings | None = None, split_ids: list[str] | None = None) -> PreparedData:
    """The study-side copy of ``table``'s inputs, targets and row hashes (and Bravais labels, computed
    with ``labels``' graph settings as their cache key). ``split_ids``: the whole table's ids, when
    ``table`` holds only some of its rows (splits are drawn from all of them)."""
    content = fingerprint(table, featurizer)
    path = study.data_dir(key, content)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "inputs.pt").exists():  # studies of before the encoder contract have graphs.pt
        _link_or_copy(cached_inputs_file(table, featurizer, progress), path / "inputs.pt")
    if not (path / "targets.pt").exists():
        _save_tensor(torch.from_numpy(table.y), path / "targets.pt")
    if not (path / "identities.json").exists():  # structure keys and formulas, for test-overlap counts
        write_json(path / "identities.json", table.identities())
    if not (path / "row_keys.json").exists():  # what the latent cache of frozen encoders is keyed by
        write_json(path / "row_keys.json", row_keys(table, featurizer))
    if split_ids is not None and not (path / "split_ids.json").exists():
        write_json(path / "split_ids.json", list(split_ids))
    if labels is not None and not (path / "labels.pt").exists():
        _save_tensor(torch.from_numpy(cached_bravais_labels(table, labels, progress)), path / "labels.pt")
    return PreparedData(table.name, table.target, table.unit, content, len(table), pool, path,
                        featurizer, has_labels=(path / "labels.pt").exists())


def _link_or_copy(source: Path, path: Path) -> None:
    """A hard link to the input cache file: the study directory stays self-contained (workers on
    other machines read it) without a second copy on disk; a copy where links cannot be made."""
    with atomic_path(path) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def _save_tensor(tensor: torch.Tensor, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(tensor, tmp)


_INPUT_STORES: dict[tuple[int, ...], InputStore] = {}


def _input_store(path: Path, featurizer: Featurizer) -> InputStore:
    """One store per input file and process: eform and bandgap link to the same file."""
    stat = path.stat()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _INPUT_STORES:
        _INPUT_STORES[key] = featurizer.load(path)
    return _INPUT_STORES[key]


def load_prepared(data: PreparedData) -> tuple[Dataset, torch.Tensor | None]:
    """The dataset as training needs it, and its Bravais labels if prepared (worker side)."""
    inputs = _input_store(data.path / "inputs.pt", data.featurizer)
    y = torch.load(data.path / "targets.pt", weights_only=True).numpy()
    # Training reads ids, targets and inputs; the structures stay with the main process.
    table = PropertyTable(name=data.key, target=data.target, unit=data.unit, source=str(data.path),
                          ids=list(inputs.ids), structures=[], y=y,
                          known_identities=json.loads((data.path / "identities.json").read_text()))
    labels = torch.load(data.path / "labels.pt", weights_only=True) if data.has_labels else None
    return Dataset(table, inputs, json.loads((data.path / "row_keys.json").read_text())), labels


def _write_relatedness(tables: dict[str, PropertyTable], fingerprints: dict[str, str], study: StudyDir) -> None:
    """``relatedness.csv``, recomputed only when the datasets changed (it runs spglib on shared formulas)."""
    computed_from = json.dumps(fingerprints, sort_keys=True)
    marker = study.relatedness_key_file
    if study.relatedness_file.exists() and marker.exists() and marker.read_text() == computed_from:
        return
    frame: pd.DataFrame = property_relatedness(tables)
    write_atomic(study.relatedness_file, frame.to_csv(index=not isinstance(frame.index, pd.RangeIndex)))
    write_atomic(marker, computed_from)
