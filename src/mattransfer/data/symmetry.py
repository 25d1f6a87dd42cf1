"""Bravais lattice labels (14 classes) of crystal structures, for structure-biased pre-training.

A label is the crystal system plus the centring letter of the space-group symbol, as spglib finds
them through pymatgen's ``SpacegroupAnalyzer``. Labels of a whole dataset are cached on disk under
its content hash: spglib takes ~10 ms per structure.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer
from rich.progress import Progress

from mattransfer.data.table import PropertyTable
from mattransfer.fileio import atomic_path
from mattransfer.graphs.build import GraphSettings, structures_hash
from mattransfer.paths import cache_dir, touch

log = logging.getLogger(__name__)

BRAVAIS = ("aP", "mP", "mC", "oP", "oC", "oI", "oF", "tP", "tI", "hR", "hP", "cP", "cI", "cF")
UNLABELLED = -1  # spglib failed: the auxiliary loss ignores the structure
SYMPREC = 0.1  # Å, pymatgen's default tolerance

_SYSTEM_LETTER = {"triclinic": "a", "monoclinic": "m", "orthorhombic": "o", "tetragonal": "t", "cubic": "c"}


def bravais_lattice(structure: Structure, symprec: float = SYMPREC) -> str:
    """The Bravais lattice symbol of ``structure``, e.g. ``'cF'`` for fcc Cu or rock salt."""
    analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
    system = analyzer.get_crystal_system()
    centring = analyzer.get_space_group_symbol()[0]
    if system in ("trigonal", "hexagonal"):
        return "hR" if centring == "R" else "hP"
    if centring in "ABC":  # base-centred in any setting
        centring = "C"
    if system == "monoclinic" and centring == "I":  # I2/m is a non-standard setting of C2/m
        centring = "C"
    symbol = _SYSTEM_LETTER[system] + centring
    if symbol not in BRAVAIS:
        raise ValueError(f"no Bravais lattice {symbol!r} (crystal system {system}, centring {centring})")
    return symbol


def bravais_labels(table: PropertyTable, progress: bool = True) -> np.ndarray:
    """Class index into `BRAVAIS` of every structure in ``table``; `UNLABELLED` where spglib fails."""
    labels = np.full(len(table), UNLABELLED, dtype=np.int64)
    # spglib warns about its own error-handling mode on every call pymatgen makes.
    with Progress(disable=not progress, transient=True) as bar, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for k in bar.track(range(len(table)), description=f"Bravais lattices {table.name}"):
            try:
                labels[k] = BRAVAIS.index(bravais_lattice(table.structures[k]))
            except Exception as exc:  # spglib's failures are not one exception type
                log.warning("%s: no Bravais lattice for %r (%s)", table.name, table.ids[k], exc)
    return labels


def cached_bravais_labels(table: PropertyTable, settings: GraphSettings, progress: bool = True) -> np.ndarray:
    """`bravais_labels`, cached beside the graphs under the same content hash."""
    path = cache_dir() / "symmetry" / f"{table.name}-{structures_hash(table, settings)}-{SYMPREC}.npy"
    if path.exists():
        touch(path)
        return np.load(path)
    labels = bravais_labels(table, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, labels)
    return labels
