"""Fixed-length feature vectors of crystals or compositions, for models that are not graph networks.

Composition: matminer Magpie ``ElementProperty``, ``Stoichiometry``, ``ValenceOrbital`` (on the
structure's composition); structure: ``DensityFeatures`` and the min/mean/max over sites of each
site's nearest-neighbour distance. A composition-only table gets the composition sets. A row a
featurizer fails on gets NaN there (models impute them from their training rows). Matrices are cached
under a content hash of the rows and the feature sets, like graphs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure
from rich.progress import Progress

from mattransfer.data.table import PropertyTable
from mattransfer.fileio import atomic_path
from mattransfer.paths import cache_dir, touch

log = logging.getLogger("mattransfer")

# Bump when any feature's definition changes: cached matrices of the old definition are then unused.
FEATURES_VERSION = 1
NEIGHBOUR_CUTOFF = 6.0  # Å; a site with no neighbour this close gets NaN (imputed by the model)
FEATURE_SETS = ("magpie", "stoichiometry", "valence_orbital", "density", "neighbour_distances")
COMPOSITION_SETS = FEATURE_SETS[:3]  # what a composition-only table has
Row = Structure | Composition


@lru_cache(maxsize=None)
def _matminer(name: str):
    # Imported lazily: matminer takes seconds to import and only baselines need it.
    from matminer.featurizers.composition import ElementProperty, Stoichiometry, ValenceOrbital
    from matminer.featurizers.structure import DensityFeatures

    return {
        "magpie": lambda: ElementProperty.from_preset("magpie", impute_nan=True),
        "stoichiometry": Stoichiometry,
        "valence_orbital": lambda: ValenceOrbital(impute_nan=True),
        "density": DensityFeatures,
    }[name]()


def neighbour_distance_stats(structure: Structure, cutoff: float = NEIGHBOUR_CUTOFF) -> list[float]:
    """Min, mean and max over sites of each site's nearest-neighbour distance (Å)."""
    centres, _, _, distances = structure.get_neighbor_list(cutoff)
    nearest = np.full(len(structure), np.inf)
    np.minimum.at(nearest, centres, distances)  # vectorised per-site minimum
    nearest[np.isinf(nearest)] = np.nan
    if np.isnan(nearest).all():
        return [np.nan] * 3
    return [float(np.nanmin(nearest)), float(np.nanmean(nearest)), float(np.nanmax(nearest))]


def _feature_set(name: str) -> tuple[list[str], Callable[[Row], list[float]]]:
    """Labels and per-row function of one feature set."""
    if name == "neighbour_distances":
        return [f"nn_distance_{s}" for s in ("min", "mean", "max")], neighbour_distance_stats
    featurizer = _matminer(name)
    on_composition = name in COMPOSITION_SETS
    return ([f"{name}|{label}" for label in featurizer.feature_labels()],
            lambda s: featurizer.featurize(s.composition if on_composition and isinstance(s, Structure) else s))


def featurize(structures: Sequence[Row], sets: Sequence[str] = FEATURE_SETS,
              progress: bool = True, name: str = "structures") -> pd.DataFrame:
    """One row of features per structure or composition (no cache); NaN where a featurizer failed."""
    unknown = set(sets) - set(FEATURE_SETS)
    if unknown:
        raise ValueError(f"unknown feature sets {sorted(unknown)}; known: {', '.join(FEATURE_SETS)}")
    if any(isinstance(s, Composition) for s in structures) and set(sets) - set(COMPOSITION_SETS):
        raise ValueError(f"{name}: compositions have only the feature sets {', '.join(COMPOSITION_SETS)};"
                         f" asked for {', '.join(sorted(set(sets) - set(COMPOSITION_SETS)))}")
    parts = [_feature_set(s) for s in sets]
    labels = [label for part_labels, _ in parts for label in part_labels]
    rows = np.full((len(structures), len(labels)), np.nan)
    failures = 0
    start = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"features {name}", total=len(structures))
        for k, structure in enumerate(structures):
            column = 0
            for part_labels, function in parts:
                try:
                    rows[k, column:column + len(part_labels)] = function(structure)
                except Exception:  # matminer raises many kinds; the row keeps NaN and the model imputes
                    failures += 1
                column += len(part_labels)
            bar.update(task, completed=k + 1)
    elapsed = time.perf_counter() - start
    log.info("featurized %d %s in %.1f s (%.1f structures/s, %d featurizer failures)", len(structures), name,
             elapsed, len(structures) / max(elapsed, 1e-9), failures)
    return pd.DataFrame(rows, columns=labels)


def features_hash(structures: Sequence[Row], sets: Sequence[str]) -> str:
    """Content hash of the rows (species, lattice, positions; a composition's elements and amounts), the
    feature sets and their version."""
    digest = hashlib.sha256(f"v{FEATURES_VERSION}:{NEIGHBOUR_CUTOFF}:{','.join(sets)}".encode())
    for structure in structures:
        if isinstance(structure, Composition):
            digest.update(repr(sorted(structure.as_dict().items())).encode())
            continue
        digest.update(np.asarray(structure.atomic_numbers, dtype=np.int64).tobytes())
        digest.update(structure.lattice.matrix.tobytes())
        digest.update(structure.frac_coords.tobytes())
    return digest.hexdigest()[:20]


def features_path(structures: Sequence[Row], sets: Sequence[str] = FEATURE_SETS) -> Path:
    """Where `cached_features` keeps the matrix of ``structures``."""
    return cache_dir() / "features" / f"{features_hash(structures, sets)}.parquet"


def cached_features(structures: Sequence[Row], sets: Sequence[str] = FEATURE_SETS,
                    progress: bool = True, name: str = "structures") -> pd.DataFrame:
    """`featurize`, cached under ``<cache>/features/<hash>.parquet``; recomputed when content or sets change.

    Pass only the rows a run uses: the cache holds exactly these structures, in this order.
    """
    path = features_path(structures, sets)
    if path.exists():
        touch(path)  # used now: `mattransfer cache clear --older-than` keeps it
        return pd.read_parquet(path)
    frame = featurize(structures, sets, progress, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, ".parquet") as tmp:
        frame.to_parquet(tmp)
    return frame


def table_features(table: PropertyTable, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """`cached_features` of every row of ``table``, one frame row per table row (in order): all the sets
    on structures, the composition sets on a composition-only table. Also how they were made (sets, rows,
    seconds, whether read from the cache), for the run's record."""
    rows = table.compositions if table.compositions is not None else table.structures
    sets = COMPOSITION_SETS if table.compositions is not None else FEATURE_SETS
    cached = features_path(rows, sets).exists()
    start = time.perf_counter()
    frame = cached_features(rows, sets, progress, table.name)
    record = {"sets": list(sets), "rows": len(table), "cached": cached, "seconds": time.perf_counter() - start}
    log.info("features of %d %s rows: %d each, %.0f s (%s)", len(table), table.name, frame.shape[1],
             record["seconds"], "read from the cache" if cached else "computed, now cached")
    return frame, record
