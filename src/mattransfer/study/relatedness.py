"""How related two datasets' properties are, measured on the materials they share.

A material is identified by its pymatgen reduced formula and space-group number
(``SpacegroupAnalyzer(symprec=0.1)``), so polymorphs stay apart. Two datasets' relatedness is
``|rho|``, the Spearman rank correlation of their targets over the shared materials; the number
shared is the material overlap the study reports.

Speed: symmetry analysis costs ~3 ms a structure (up to ~70 ms for high-symmetry cells), so
it runs only where it can change the answer: on structures whose formula belongs to more than
one distinct structure across all tables. A formula held by a single structure identifies it
alone. Tables read from the same file (``eform`` and ``bandgap``) share their structures, and
each structure is analysed once. Large batches are spread over processes. Measured CPU time: the
shared data's largest table (36,737 structures, 10,369 sharing a formula) ~25 s; all seven study
datasets (52,254 distinct structures, 31,575 analysed) ~165 s, divided over the worker processes.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from itertools import permutations

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from scipy import stats

from mattransfer.data.table import PropertyTable

MIN_SHARED = 5  # fewer shared materials give no meaningful rank correlation
NO_SPACE_GROUP = 0  # key part for a structure identified by formula alone (space groups are 1–230)
_PARALLEL_MIN = 2_000  # below this, starting worker processes costs more than it saves

COLUMNS = ["source", "target", "n_shared", "spearman_rho", "p_value", "relatedness"]


def property_relatedness(tables: dict[str, PropertyTable], *, workers: int | None = None) -> pd.DataFrame:
    """One row per ordered pair of datasets (a, b), a ≠ b, with the columns in ``COLUMNS``.

    ``spearman_rho`` and ``p_value`` are NaN when fewer than ``MIN_SHARED`` materials are shared
    or a target is constant on them. ``workers`` bounds the symmetry-analysis processes
    (default: all cores; 1 runs in this process).
    """
    keys = _material_keys(list(tables.values()), workers)
    by_material = {name: _target_by_material(table, k) for (name, table), k in zip(tables.items(), keys)}
    rows = [_pair_row(a, b, by_material[a], by_material[b]) for a, b in permutations(by_material, 2)]
    return pd.DataFrame(rows, columns=COLUMNS)


def _material_keys(tables: list[PropertyTable], workers: int | None) -> list[list[tuple[str, int]]]:
    """(reduced formula, space group) per structure of each table, each structure analysed once. A row of a
    composition-only table has no space group: its formula alone, which matches a structure only where the
    formula is that of one structure."""
    # A structure is (file, id): tables read from one file (eform, bandgap) hold the same structures.
    structures = {(t.source, row_id): s for t in tables if t.compositions is None
                  for row_id, s in zip(t.ids, t.structures)}
    formula = {k: s.composition.reduced_formula for k, s in structures.items()}
    holders = Counter(formula.values())
    # Symmetry only where several structures share a formula; elsewhere the formula alone is the material.
    ambiguous = [k for k, f in formula.items() if holders[f] > 1]
    space_group = dict(zip(ambiguous, _space_groups([structures[k] for k in ambiguous], workers)))
    return [
        [(c.reduced_formula, NO_SPACE_GROUP) for c in t.compositions] if t.compositions is not None else
        [(formula[t.source, row_id], space_group.get((t.source, row_id), NO_SPACE_GROUP)) for row_id in t.ids]
        for t in tables
    ]


def _space_groups(structures: list[Structure], workers: int | None) -> list[int]:
    workers = workers or os.cpu_count() or 1
    with _quiet_spglib():
        if workers == 1 or len(structures) < _PARALLEL_MIN:
            return [_space_group(s) for s in structures]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(_space_group, structures, chunksize=256))


@contextmanager
def _quiet_spglib() -> Iterator[None]:
    """Silence spglib's C-level line per cell it gives up on: those cells fall back to the formula."""
    previous = os.environ.get("SPGLIB_WARNING")
    os.environ["SPGLIB_WARNING"] = "OFF"  # read by the C library at each warning, inherited by workers
    try:
        yield
    finally:
        if previous is None:
            del os.environ["SPGLIB_WARNING"]
        else:
            os.environ["SPGLIB_WARNING"] = previous


def _space_group(structure: Structure) -> int:
    """Space-group number, or ``NO_SPACE_GROUP`` when spglib fails (then the formula alone is the key)."""
    try:
        return SpacegroupAnalyzer(structure, symprec=0.1).get_space_group_number()
    except Exception:  # spglib gives up on a few degenerate cells; keying by formula is the fallback
        return NO_SPACE_GROUP


def _target_by_material(table: PropertyTable, keys: list[tuple[str, int]]) -> pd.Series:
    """The table's target per material; a material listed twice (e.g. duplicate entries) gets its mean."""
    index = pd.MultiIndex.from_tuples(keys, names=["formula", "space_group"])
    return pd.Series(table.y, index=index).groupby(level=["formula", "space_group"]).mean()


def _pair_row(a: str, b: str, y_a: pd.Series, y_b: pd.Series) -> dict:
    shared = y_a.index.intersection(y_b.index)
    rho = p_value = np.nan
    if len(shared) >= MIN_SHARED:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)  # constant target → NaN, reported as such
            result = stats.spearmanr(y_a.loc[shared].to_numpy(), y_b.loc[shared].to_numpy())
        rho, p_value = float(result.statistic), float(result.pvalue)
    return {"source": a, "target": b, "n_shared": len(shared), "spearman_rho": rho,
            "p_value": p_value, "relatedness": abs(rho)}
