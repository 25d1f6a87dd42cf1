"""The Python API: load a checkpoint, predict or embed structures, train from options.

    import mattransfer
    model = mattransfer.load("runs/finetune_phonons_heads/model.ckpt")
    model.predict([structure, atoms, "my.cif"])     # numpy array in the target's unit
    model.embed(structures, pooling="mean")        # (n, d) latent vectors
    mattransfer.train({"data": {...}, ...})        # or a path to an options YAML → the run's summary
    mattransfer.select("select.yaml")              # or a dict: the structures to label next (DataFrame)

Structures are pymatgen ``Structure``s, ASE ``Atoms`` or paths of CIF / POSCAR / (ext)xyz files
(every frame of a multi-frame file is one structure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Structure

from mattransfer.data.readers import read_structures
from mattransfer.data.table import PropertyTable
from mattransfer.errors import DataError
from mattransfer.models.domain import summary_line
from mattransfer.models.model import TransferModel, load_source
from mattransfer.training.job import featurize, resolve_device

StructureLike = Union[Structure, "ase.Atoms", str, Path]  # noqa: F821


def load(path: str | Path, device: str = "cpu") -> Model:
    """A trained model from its checkpoint (``model.ckpt`` of a run directory), or a package's pre-trained
    encoder by name (``chgnet:0.3.0``: its head is untrained, so use it for `Model.embed`)."""
    return Model(load_source(path), device)


def train(options: dict[str, Any] | str | Path, progress: bool = False) -> dict:
    """Train as ``mattransfer train`` does, from an options dict or YAML path; returns the run's summary
    (``metrics.json``). torch's thread count is left alone unless the options set ``threads``."""
    from mattransfer.config import config_from_dict, load_config
    from mattransfer.training.run import run

    config = config_from_dict(options, "options") if isinstance(options, dict) else load_config(Path(options))
    return run(config, progress=progress)


def select(options: dict[str, Any] | str | Path) -> pd.DataFrame:
    """Choose what to label next, as ``mattransfer select`` does, from an options dict or YAML path; returns
    the picks (id, formula, deviation, mean prediction) and writes the run directory."""
    from mattransfer.config import config_from_dict
    from mattransfer.selection import SelectConfig, load_select_config, select as select_step

    config = (config_from_dict(options, "options", SelectConfig) if isinstance(options, dict)
              else load_select_config(Path(options)))
    return select_step(config)


def as_table(structures: StructureLike | Iterable[StructureLike]) -> PropertyTable:
    """Structures, ASE Atoms and file paths as a table to predict (ids: position, or file stem)."""
    from ase import Atoms
    from pymatgen.io.ase import AseAtomsAdaptor

    if isinstance(structures, (Structure, Atoms, str, Path)):
        structures = [structures]
    ids: list[str] = []
    cells: list[Structure] = []
    for k, item in enumerate(structures):
        if isinstance(item, (str, Path)):
            table = read_structures([Path(item)])
            ids += [f"{k}:{i}" for i in table.ids]
            cells += list(table.structures)
            continue
        if isinstance(item, Atoms):
            if not all(item.pbc):
                raise DataError(f"structure {k}: ASE Atoms not periodic in all three directions (pbc={list(item.pbc)}).")
            item = AseAtomsAdaptor.get_structure(item)
        if not isinstance(item, Structure):
            raise DataError(f"structure {k}: a {type(item).__name__}; expected a pymatgen Structure, ASE Atoms or a file path.")
        ids.append(str(k))
        cells.append(item)
    return PropertyTable("predict", "", "", "structures", ids, cells, np.full(len(ids), np.nan))


class Model:
    """A trained `TransferModel` for inference: predictions in the target's unit, latent vectors,
    and whether structures lie inside its training domain."""

    def __init__(self, module: TransferModel, device: str = "cpu") -> None:
        self.module = module.to(resolve_device(device)).eval()

    @property
    def target(self) -> str:
        return self.module.target.get("name", "")

    @property
    def unit(self) -> str:
        return self.module.target.get("unit", "")

    def predict(self, structures: StructureLike | Iterable[StructureLike], batch_size: int = 256) -> np.ndarray:
        """Predictions (n,) in the target's unit."""
        latent = self._latent(as_table(structures), None, batch_size)
        return self.module.predict_latent(latent).cpu().numpy()

    def embed(self, structures: StructureLike | Iterable[StructureLike], pooling: str | None = None,
              batch_size: int = 256) -> np.ndarray:
        """Latent vectors (n, d) of the encoder; ``pooling`` mean, sum or max (default: the encoder's own)."""
        from mattransfer.models.encoders.base import pooling_parts

        if pooling is not None:
            try:
                pooling_parts(pooling)
            except ValueError as exc:
                raise DataError(f"{exc}.") from exc
        return self._latent(as_table(structures), pooling, batch_size).cpu().numpy()

    def predict_with_domain(self, structures: StructureLike | Iterable[StructureLike] | PropertyTable,
                            batch_size: int = 256) -> tuple[pd.DataFrame, str]:
        """Predictions with the training-domain checks of each structure (`models/domain.py`), and
        a one-line summary. Without domain data in the checkpoint (older runs) only the predictions."""
        table = structures if isinstance(structures, PropertyTable) else as_table(structures)
        inputs = featurize(self.module, table, cache=False)
        latent = self.module.embed(inputs, batch_size=batch_size)
        raw = self.module.predict_latent(latent, clip=False)  # the head's own value: the domain check reads it
        predictions = self.module.clipped(raw).cpu().numpy()
        column = f"{self.target} [{self.unit}]"
        frame = pd.DataFrame({"id": table.ids, "formula": [s.composition.reduced_formula for s in table.structures],
                              column: predictions})
        domain = self.module.domain
        if domain is None:
            return frame, "no training-domain data in this checkpoint (trained before mattransfer recorded it)"
        assessment = domain.assess(latent, inputs.elements(), raw.cpu().numpy())
        for key, values in assessment.items():
            frame[key] = values
        return frame, summary_line(assessment, domain, self.unit)

    def _latent(self, table: PropertyTable, pooling: str | None, batch_size: int) -> torch.Tensor:
        return self.module.embed(featurize(self.module, table, cache=False), pooling=pooling, batch_size=batch_size)

    def __repr__(self) -> str:
        return f"mattransfer.Model({self.target!r} [{self.unit}], trained on {self.module.target.get('dataset')!r})"
