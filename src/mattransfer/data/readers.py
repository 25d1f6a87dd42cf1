"""Read a user's data file into a matminer-style frame (index = ids, a ``structure`` column).

Readers by format: matminer/matbench JSON (optionally gzip'd), extended XYZ through ASE
(targets under ``atoms.info``), and CSV with a CIF or POSCAR text column.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Sequence

from mattransfer.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    from pymatgen.core import Structure

    from mattransfer.data.table import PropertyTable

# Heavy libraries (pandas, pymatgen, ASE: seconds to import) load inside the readers, so that
# importing this module (for `Reader`) keeps `mattransfer datasets` and `--help` fast.

Reader = Literal["matminer", "ase", "csv"]

log = logging.getLogger(__name__)


def guess_reader(path: Path) -> Reader:
    name = path.name.lower()
    if name.endswith((".json", ".json.gz")):
        return "matminer"
    if name.endswith((".xyz", ".extxyz")):
        return "ase"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise DataError(
        f"{path}: cannot tell the format from the file name; set `reader:` to one of"
        " matminer, ase, csv."
    )


def read_frame(path: Path, reader: Reader | None = None, structure_column: str = "structure") -> pd.DataFrame:
    """Read ``path`` into a frame; errors name the file and what is wrong with it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found.")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty.")
    reader = reader or guess_reader(path)
    try:
        if reader == "matminer":
            return _read_matminer(path)
        if reader == "ase":
            return _read_extxyz(path)
        return _read_csv(path, structure_column)
    except DataError:
        raise
    except Exception as exc:  # any parser failure means a corrupt or mislabelled file
        raise DataError(f"{path}: could not be read as {reader} data ({type(exc).__name__}: {exc}).") from exc


def _read_matminer(path: Path) -> pd.DataFrame:
    """Structures stay encoded until a run uses them (`EncodedStructure`); other monty objects are decoded."""
    from matminer.utils.io import load_dataframe_from_json
    from monty.json import MontyDecoder

    import pandas as pd

    from mattransfer.data.table import EncodedStructure

    frame = load_dataframe_from_json(str(path), pbar=False, decode=False)
    if not isinstance(frame, pd.DataFrame):  # valid JSON, but no table in it
        raise DataError(f"{path}: the JSON holds no table (expected a data frame as matminer writes it:"
                        " columns, index and data).")
    decoder = MontyDecoder()
    for column in frame.columns:
        if frame[column].dtype != object:
            continue
        if frame[column].map(_is_encoded_structure).all():
            frame[column] = [EncodedStructure(d, f"{path}: row {i!r} column {column!r}") for i, d in frame[column].items()]
        elif frame[column].map(lambda v: isinstance(v, dict) and "@class" in v).any():
            frame[column] = frame[column].map(decoder.process_decoded)
    return frame


def _is_encoded_structure(value: object) -> bool:
    return isinstance(value, dict) and value.get("@class") == "Structure"


def _read_extxyz(path: Path) -> pd.DataFrame:
    import ase.io
    import numpy as np
    import pandas as pd
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = ase.io.read(path, index=":")
    if not frames:
        raise DataError(f"{path}: no structures in the file.")
    rows, ids = [], []
    for i, atoms in enumerate(frames):
        if not atoms.pbc.all():
            raise DataError(f"{path}: frame {i} is not periodic in all three directions (pbc={atoms.pbc.tolist()}).")
        ids.append(str(atoms.info.get("id", f"{path.stem}-{i}")))
        row = {k: v for k, v in atoms.info.items() if k != "id"}
        # ASE's extxyz reader moves per-frame properties it knows (energy, free_energy, ...) out of
        # `info` into a calculator; without this a target named `energy` would be "not found".
        if atoms.calc is not None:
            row.update({k: v for k, v in atoms.calc.results.items() if np.ndim(v) == 0})
        row["structure"] = AseAtomsAdaptor.get_structure(atoms)
        rows.append(row)
    return pd.DataFrame(rows, index=ids)


def _read_csv(path: Path, structure_column: str) -> pd.DataFrame:
    import pandas as pd

    frame = pd.read_csv(path)
    if "id" in frame.columns:
        frame = frame.set_index("id")
    frame.index = frame.index.astype(str)
    if structure_column not in frame.columns:
        return frame  # PropertyTable names the missing column
    structures = []
    for row_id, text in frame[structure_column].items():
        structures.append(_parse_structure_text(text, f"{path}: row {row_id!r}"))
    frame[structure_column] = structures
    return frame


def _parse_structure_text(text: object, where: str) -> Structure:
    from pymatgen.core import Structure

    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: empty structure cell.")
    fmt = "cif" if "_cell_length_a" in text else "poscar"
    try:
        return Structure.from_str(text, fmt=fmt)
    except Exception as exc:
        raise DataError(f"{where}: could not parse the structure as {fmt.upper()} ({exc}).") from exc


def read_structures(paths: Sequence[Path]) -> PropertyTable:
    """Structures to predict, from CIF / POSCAR / (ext)xyz files; targets unknown (NaN).

    Ids are the file stems, with the frame number for multi-frame files.
    """
    import ase.io
    import numpy as np
    from pymatgen.io.ase import AseAtomsAdaptor

    from mattransfer.data.table import PropertyTable

    ids, structures = [], []
    for path in map(Path, paths):
        if not path.exists():
            raise DataError(f"{path}: file not found.")
        try:
            frames = ase.io.read(path, index=":")
        except Exception as exc:
            raise DataError(f"{path}: could not read a structure ({type(exc).__name__}: {exc}).") from exc
        for k, atoms in enumerate(frames):
            if not atoms.pbc.all():
                raise DataError(f"{path}: frame {k} is not a periodic crystal (pbc={atoms.pbc.tolist()}).")
            ids.append(path.stem if len(frames) == 1 else f"{path.stem}-{k}")
            structures.append(AseAtomsAdaptor.get_structure(atoms))
    if len(set(ids)) != len(ids):
        raise DataError("two input files have the same name stem; predictions are keyed by it, rename one.")
    return PropertyTable("predict", "", "", ", ".join(map(str, paths)), ids, structures, np.full(len(ids), np.nan))
