"""`PropertyTable`: crystal structures with one scalar target each, validated once at load time."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from mattransfer.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class PropertyTable:
    """One property of a set of crystals.

    ``dropped`` counts rows removed at load time, by reason, so a run log can report them.
    """

    name: str
    target: str
    unit: str
    source: str
    ids: list[str]
    structures: list[Structure]
    y: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)
    # Per row: structure key and reduced formula (`identities`); given where the structures are not.
    known_identities: dict[str, list[str]] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def identities(self) -> dict[str, list[str]]:
        """``{"structure": [...], "formula": [...]}``: each row's `structure_key` and reduced formula."""
        if self.known_identities is None:
            self.known_identities = {"structure": [structure_key(s) for s in self.structures],
                                     "formula": [s.composition.reduced_formula for s in self.structures]}
        return self.known_identities

    def subset(self, ids: list[str]) -> PropertyTable:
        """The rows of ``ids``, in table order."""
        keep = set(ids)
        rows = [k for k, i in enumerate(self.ids) if i in keep]
        known = None if self.known_identities is None else {
            kind: [values[k] for k in rows] for kind, values in self.known_identities.items()}
        return PropertyTable(
            self.name, self.target, self.unit, self.source, [self.ids[k] for k in rows],
            [self.structures[k] for k in rows] if self.structures else [], self.y[rows], dict(self.dropped), known,
        )

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
        """Validate a matminer-style frame: structures, a numeric target, unique ids.

        Non-finite targets are dropped and counted; everything else that is wrong is an error
        naming ``source`` and the offending column or row.
        """
        if frame.empty:
            raise DataError(f"{source}: the dataset is empty (no rows).")
        if target not in frame.columns:
            raise DataError(
                f"{source}: target column {target!r} not found; columns are {list(frame.columns)}."
            )
        ids, structures = _ids_and_structures(frame, source, structure_column, id_column)
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
            structures=[s for s, k in zip(structures, keep) if k],
            y=y[keep],
            dropped=dropped,
        )

    @classmethod
    def unlabelled(
        cls, frame: pd.DataFrame, *, name: str, source: str, structure_column: str = "structure",
        id_column: str | None = None,
    ) -> PropertyTable:
        """Structures whose property is not known yet (targets NaN): a pool to choose labels from."""
        if frame.empty:
            raise DataError(f"{source}: the dataset is empty (no rows).")
        ids, structures = _ids_and_structures(frame, source, structure_column, id_column)
        return cls(name=name, target="", unit="", source=source, ids=ids, structures=structures,
                   y=np.full(len(ids), np.nan))


def _ids_and_structures(
    frame: pd.DataFrame, source: str, structure_column: str, id_column: str | None
) -> tuple[list[str], list[Structure]]:
    """Unique string ids and pymatgen structures of every row; errors name the column or row."""
    if structure_column not in frame.columns:
        if "composition" in frame.columns:
            raise DataError(
                f"{source}: composition-only data (column 'composition', no {structure_column!r}"
                " column). mattransfer's models are crystal graph networks and need structures;"
                " point this dataset at a file with structures."
            )
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
    structures = list(frame[structure_column])
    for row_id, structure in zip(ids, structures):
        if not isinstance(structure, Structure):
            raise DataError(
                f"{source}: row {row_id!r} column {structure_column!r} holds"
                f" {type(structure).__name__}, not a pymatgen Structure."
            )
    return ids, structures


def structure_key(structure: Structure) -> str:
    """The identity of a crystal, whatever its id: species at fractional positions and the lattice
    parameters, rounded (1e-3) so that float noise from another source does not tell copies apart."""
    lattice = np.round(np.asarray(structure.lattice.abc + structure.lattice.angles), 3)
    frac = np.round(np.mod(structure.frac_coords, 1.0), 3) % 1.0 + 0.0  # + 0.0: no -0.0
    sites = sorted(zip(structure.atomic_numbers, map(tuple, frac.tolist())))
    return hashlib.sha256(repr((lattice.tolist(), sites)).encode()).hexdigest()[:16]
