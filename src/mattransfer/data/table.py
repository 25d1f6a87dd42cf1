"""`PropertyTable`: crystal structures (or compositions only) with one scalar target each, validated once at load time."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Structure

from mattransfer.errors import DataError

log = logging.getLogger(__name__)


class EncodedStructure:
    """A structure as stored in a matminer JSON file, decoded on first use and then kept.

    Decoding is most of the cost of reading a large file (36,737 MP structures: about a minute), and
    a run often uses a few thousand rows of it. Tables read from one file share these cells, so a
    structure is decoded once however many tables (eform, bandgap) use it.
    """

    __slots__ = ("_value", "_where")

    def __init__(self, encoded: dict[str, Any], where: str) -> None:
        self._value: dict[str, Any] | Structure = encoded
        self._where = where

    def decode(self) -> Structure:
        if not isinstance(self._value, Structure):
            try:
                self._value = Structure.from_dict(self._value)
            except Exception as exc:
                raise DataError(f"{self._where}: could not decode the structure ({type(exc).__name__}: {exc}).") from exc
        return self._value


class Structures(Sequence):
    """The structures of a table: pymatgen ``Structure``s, some possibly still encoded (decoded when read)."""

    def __init__(self, cells: Iterable[Structure | EncodedStructure]) -> None:
        self._cells = list(cells)

    def __len__(self) -> int:
        return len(self._cells)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return Structures(self._cells[index])
        cell = self._cells[index]
        return cell.decode() if isinstance(cell, EncodedStructure) else cell

    def __add__(self, other: Structures) -> Structures:
        return Structures([*self._cells, *other._cells])

    def take(self, rows: Iterable[int]) -> Structures:
        """The cells at ``rows``, still encoded where they were."""
        return Structures(self._cells[k] for k in rows)


class MissingStructures(Structures):
    """The structures of a composition-only table: it has a length, and reading any structure is the
    one-line error ``message`` (a structure encoder given compositions stops there, wherever it reads)."""

    def __init__(self, n: int, message: str) -> None:
        self._n, self._message = n, message

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):  # type: ignore[override]
        raise DataError(self._message)

    def __add__(self, other: Structures) -> Structures:
        if not isinstance(other, MissingStructures):
            raise DataError(self._message)
        return MissingStructures(self._n + other._n, self._message)

    def take(self, rows: Iterable[int]) -> Structures:
        return MissingStructures(len(list(rows)), self._message)


@dataclass
class PropertyTable:
    """One property of a set of crystals, or of compositions (``compositions`` given, ``structures`` a
    `MissingStructures`: composition encoders read `row_compositions`, structure encoders get an error).

    ``dropped`` counts rows removed at load time, by reason, so a run log can report them.
    """

    name: str
    target: str
    unit: str
    source: str
    ids: list[str]
    structures: Sequence[Structure]
    y: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)
    # Per row: structure key and reduced formula (`identities`); given where the structures are not.
    known_identities: dict[str, list[str]] | None = field(default=None, repr=False)
    compositions: list[Composition] | None = field(default=None, repr=False)  # of a composition-only table

    def __post_init__(self) -> None:
        if not isinstance(self.structures, Structures):
            self.structures = Structures(self.structures)

    def __len__(self) -> int:
        return len(self.ids)

    def identities(self) -> dict[str, list[str]]:
        """``{"structure": [...], "formula": [...]}``: each row's `structure_key` and reduced formula."""
        if self.known_identities is None and self.compositions is not None:  # the composition is the identity
            self.known_identities = {"structure": [composition_key(c) for c in self.compositions],
                                     "formula": [c.reduced_formula for c in self.compositions]}
        elif self.known_identities is None:
            self.known_identities = {"structure": [structure_key(s) for s in self.structures],
                                     "formula": [s.composition.reduced_formula for s in self.structures]}
        return self.known_identities

    def row_compositions(self) -> list[Composition]:
        """Each row's composition: given, or its structure's."""
        if self.compositions is not None:
            return list(self.compositions)
        return [s.composition for s in self.structures]

    def subset(self, ids: list[str]) -> PropertyTable:
        """The rows of ``ids``, in table order."""
        keep = set(ids)
        rows = [k for k, i in enumerate(self.ids) if i in keep]
        known = None if self.known_identities is None else {
            kind: [values[k] for k in rows] for kind, values in self.known_identities.items()}
        return PropertyTable(
            self.name, self.target, self.unit, self.source, [self.ids[k] for k in rows],
            self.structures.take(rows) if len(self.structures) else [], self.y[rows], dict(self.dropped), known,
            None if self.compositions is None else [self.compositions[k] for k in rows],
        )

    def concat(self, other: PropertyTable, prefix: str) -> tuple[PropertyTable, list[str]]:
        """This table followed by ``other``'s rows (a test or validation file), and their ids here.

        ``other``'s ids get ``prefix`` when any of them is already an id of this table (two CSV files
        both numbered from 0), so every row keeps a unique id.
        """
        ids = list(other.ids)
        if set(ids).intersection(self.ids):
            ids = [f"{prefix}{i}" for i in ids]
            clash = set(ids).intersection(self.ids)
            if clash:
                raise DataError(f"{other.source}: ids {sorted(clash)[:3]} are ids of {self.source} too, even as"
                                f" {prefix}<id>; give the files distinct ids.")
        if other.unit != self.unit or other.target != self.target:
            raise DataError(f"{other.source}: target {other.target!r} [{other.unit}] differs from {self.source}'s"
                            f" {self.target!r} [{self.unit}].")
        dropped = {k: self.dropped.get(k, 0) + other.dropped.get(k, 0) for k in {*self.dropped, *other.dropped}}
        compositions = None if self.compositions is None else self.row_compositions() + other.row_compositions()
        table = PropertyTable(self.name, self.target, self.unit, self.source, [*self.ids, *ids],
                              self.structures + other.structures,
                              np.concatenate([self.y, other.y]), dropped, compositions=compositions)
        return table, ids

    @classmethod
    def from_frame(
        cls,
        frame: pd.DataFrame,
        *,
        name: str,
        target: str,
        unit: str,
        source: str,
        structure_column: str = "structure",
        id_column: str | None = None,
    ) -> PropertyTable:
        """Validate a matminer-style frame: structures (or, without them, compositions), a numeric target,
        unique ids.

        Non-finite targets are dropped and counted; everything else that is wrong is an error
        naming ``source`` and the offending column or row.
        """
        if frame.empty:
            raise DataError(f"{source}: the dataset is empty (no rows).")
        if target not in frame.columns:
            raise DataError(
                f"{source}: target column {target!r} not found; columns are {list(frame.columns)}."
            )
        ids, structures, compositions = _ids_and_structures(frame, source, structure_column, id_column)
        y = pd.to_numeric(frame[target], errors="coerce").to_numpy(dtype=np.float64)
        keep = np.isfinite(y)
        dropped = {}
        if not keep.all():
            bad = [i for i, k in zip(ids, keep) if not k]
            dropped["non_finite_target"] = len(bad)
            log.warning(
                "%s: dropped %d rows with a NaN/inf/non-numeric %r (first: %s)",
                source, len(bad), target, bad[:5],
            )
            if not keep.any():
                raise DataError(f"{source}: no row has a finite value in target column {target!r}.")
        return cls(
            name=name,
            target=target,
            unit=unit,
            source=source,
            ids=[i for i, k in zip(ids, keep) if k],
            structures=structures.take(np.flatnonzero(keep)),
            y=y[keep],
            dropped=dropped,
            compositions=None if compositions is None else [c for c, k in zip(compositions, keep) if k],
        )

    @classmethod
    def unlabelled(
        cls, frame: pd.DataFrame, *, name: str, source: str, structure_column: str = "structure",
        id_column: str | None = None,
    ) -> PropertyTable:
        """Structures whose property is not known yet (targets NaN): a pool to choose labels from."""
        if frame.empty:
            raise DataError(f"{source}: the dataset is empty (no rows).")
        ids, structures, compositions = _ids_and_structures(frame, source, structure_column, id_column)
        return cls(name=name, target="", unit="", source=source, ids=ids, structures=structures,
                   y=np.full(len(ids), np.nan), compositions=compositions)


def _ids_and_structures(
    frame: pd.DataFrame, source: str, structure_column: str, id_column: str | None
) -> tuple[list[str], Structures, list[Composition] | None]:
    """Unique string ids and the structures of every row, or (composition-only data) `MissingStructures`
    and the rows' compositions; errors name the column or row."""
    if structure_column not in frame.columns and "composition" not in frame.columns:
        raise DataError(
            f"{source}: structure column {structure_column!r} not found;"
            f" columns are {list(frame.columns)}."
        )
    ids = [str(i) for i in (frame[id_column] if id_column else frame.index)]
    duplicated = pd.Index(ids)[pd.Index(ids).duplicated()].unique().tolist()
    if duplicated:
        raise DataError(
            f"{source}: duplicate ids {duplicated[:5]}{' …' if len(duplicated) > 5 else ''}"
            f" ({len(duplicated)} in all); every row needs a unique id."
        )
    if structure_column not in frame.columns:
        missing = MissingStructures(len(ids), (
            f"{source}: composition-only data (column 'composition', no {structure_column!r} column); this"
            " encoder reads crystal structures: use a composition encoder (elemnet, magpie-mlp) or point this"
            " dataset at a file with structures."))
        return ids, missing, [_composition(c, f"{source}: row {i!r} column 'composition'")
                              for i, c in zip(ids, frame["composition"])]
    structures = list(frame[structure_column])
    for row_id, structure in zip(ids, structures):
        if not isinstance(structure, (Structure, EncodedStructure)):
            raise DataError(
                f"{source}: row {row_id!r} column {structure_column!r} holds"
                f" {type(structure).__name__}, not a pymatgen Structure."
            )
    return ids, Structures(structures), None


def _composition(cell: object, where: str) -> Composition:
    """A pymatgen Composition from a decoded cell or a formula (CSV); anything else is an error naming ``where``."""
    if isinstance(cell, Composition):
        composition = cell
    elif isinstance(cell, str) and cell.strip():
        try:
            composition = Composition(cell)
        except Exception as exc:
            raise DataError(f"{where}: {cell!r} is not a chemical formula ({exc}).") from exc
    else:
        raise DataError(f"{where} holds {type(cell).__name__}, not a composition or a formula.")
    if composition.num_atoms <= 0:
        raise DataError(f"{where}: the composition {cell!r} has no atoms.")
    return composition


def composition_key(composition: Composition) -> str:
    """The identity of a composition-only row: its element fractions, rounded (1e-4) so that Fe2O3 and Fe4O6 agree."""
    fractions = sorted((el.Z, round(f, 4)) for el, f in composition.fractional_composition.items())
    return "composition:" + hashlib.sha256(repr(fractions).encode()).hexdigest()[:16]


def structure_key(structure: Structure) -> str:
    """The identity of a crystal, whatever its id: species at fractional positions and the lattice
    parameters, rounded (1e-3) so that float noise from another source does not tell copies apart."""
    lattice = np.round(np.asarray(structure.lattice.abc + structure.lattice.angles), 3)
    frac = np.round(np.mod(structure.frac_coords, 1.0), 3) % 1.0 + 0.0  # + 0.0: no -0.0
    sites = sorted(zip(structure.atomic_numbers, map(tuple, frac.tolist())))
    return hashlib.sha256(repr((lattice.tolist(), sites)).encode()).hexdigest()[:16]
