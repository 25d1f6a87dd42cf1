"""The study's datasets by key, and where each one loads from.

Every key has a matminer name, a target column and a unit. Where the data lives is configuration
(`DataSources`): a directory of offline copies in matminer's format and, per key, an optional local
file with another name and its own target column (e.g. both ``eform`` and ``bandgap`` served by one
Materials Project snapshot). Without a local file a key loads through
``matminer.datasets.load_dataset``, which downloads when online.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, ValidationError

from mattransfer.data.readers import Reader, read_frame
from mattransfer.errors import ConfigError, DataError, format_validation_error, read_yaml
from mattransfer.fileio import write_json
from mattransfer.paths import cache_dir

if TYPE_CHECKING:
    from mattransfer.data.table import PropertyTable

log = logging.getLogger(__name__)


class DatasetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    description: str
    matminer: str | None = None
    target: str
    unit: str
    structure_column: str = "structure"
    id_column: str | None = None


DEMO_KEYS = ("demo_energy", "demo_volume", "demo_bulk")

REGISTRY: dict[str, DatasetSpec] = {
    spec.key: spec
    for spec in [
        DatasetSpec(key="gvrh", description="log10 shear modulus (DFT)", matminer="matbench_log_gvrh",
                    target="log10(G_VRH)", unit="log10(GPa)"),
        DatasetSpec(key="phonons", description="last phonon DOS peak (DFT)", matminer="matbench_phonons",
                    target="last phdos peak", unit="cm^-1"),
        DatasetSpec(key="eform", description="formation energy (DFT)", matminer="matbench_mp_e_form",
                    target="e_form", unit="eV/atom"),
        DatasetSpec(key="bandgap", description="PBE band gap (DFT)", matminer="matbench_mp_gap",
                    target="gap pbe", unit="eV"),
        DatasetSpec(key="expt_gap", description="experimental band gap", matminer="expt_gap_kingsbury",
                    target="expt_gap", unit="eV"),
        DatasetSpec(key="dielectric", description="polycrystalline dielectric constant (DFT)",
                    matminer="dielectric_constant", target="poly_total", unit="-"),
        DatasetSpec(key="piezo", description="max piezoelectric modulus (DFT)", matminer="piezoelectric_tensor",
                    target="eij_max", unit="C/m^2"),
        # Composition-only keys, for composition encoders (elemnet, roost). Online, the mp ones load the
        # matbench structures (same ids and targets), whose compositions those encoders read.
        DatasetSpec(key="bandgap_comp", description="PBE band gap (DFT), compositions", matminer="matbench_mp_gap",
                    target="gap pbe", unit="eV"),
        DatasetSpec(key="eform_comp", description="formation energy (DFT), compositions",
                    matminer="matbench_mp_e_form", target="e_form", unit="eV/atom"),
        DatasetSpec(key="expt_gap_comp", description="experimental band gap, compositions (matbench task)",
                    matminer="matbench_expt_gap", target="gap expt", unit="eV"),
        DatasetSpec(key="demo_energy", description="EMT energy per atom (embedded demo)",
                    target="energy_per_atom", unit="eV/atom"),
        DatasetSpec(key="demo_volume", description="EMT equilibrium volume (embedded demo)",
                    target="volume_per_atom", unit="A^3/atom"),
        DatasetSpec(key="demo_bulk", description="EMT bulk modulus (embedded demo)",
                    target="bulk_modulus", unit="GPa"),
    ]
}

STUDY_KEYS = ("gvrh", "phonons", "eform", "bandgap", "expt_gap", "dielectric", "piezo")


class LocalFile(BaseModel):
    """A local file serving a key: its name (relative to ``data_dir``) and column overrides."""

    model_config = ConfigDict(extra="forbid")

    file: str
    target: str | None = None
    reader: Reader | None = None
    structure_column: str | None = None
    id_column: str | None = None


class DataSources(BaseModel):
    """Where datasets load from: written by the user as YAML (see ``configs/shared-data.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path | None = None
    datasets: dict[str, LocalFile] = {}

    @classmethod
    def from_yaml(cls, path: Path) -> DataSources:
        path = Path(path)
        raw = read_yaml(path, "data-sources file") or {}
        try:
            sources = cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, path)) from exc
        unknown = set(sources.datasets) - set(REGISTRY)
        if unknown:
            raise ConfigError(f"{path}: unknown dataset keys {sorted(unknown)}; known keys: {sorted(REGISTRY)}.")
        if sources.data_dir is not None and not sources.data_dir.is_absolute():
            sources.data_dir = (path.parent / sources.data_dir).resolve()
        return sources

    @classmethod
    def from_env(cls) -> DataSources:
        """``$MATTRANSFER_DATA_SOURCES`` (a YAML file) if set, else ``$MATMINER_DATA`` as the directory."""
        config = os.environ.get("MATTRANSFER_DATA_SOURCES")
        if config:
            return cls.from_yaml(Path(config))
        data_dir = os.environ.get("MATMINER_DATA")
        return cls(data_dir=Path(data_dir) if data_dir else None)

    def spec(self, key: str) -> DatasetSpec:
        if key not in REGISTRY:
            raise DataError(f"unknown dataset key {key!r}; known keys: {sorted(REGISTRY)}.")
        spec = REGISTRY[key]
        local = self.datasets.get(key)
        if local is None:
            return spec
        overrides = local.model_dump(exclude={"file", "reader"}, exclude_none=True)
        return spec.model_copy(update=overrides)

    def location(self, key: str) -> str:
        """Where ``key`` loads from, in words (for ``mattransfer datasets``)."""
        if key in DEMO_KEYS:
            return "embedded demo (built on first use, cached)"
        local = self.datasets.get(key)
        if local is not None:
            return str(self._local_path(local))
        spec = REGISTRY[key]
        home = self.data_dir or "matminer's data home"
        return f"matminer {spec.matminer} ({home})"

    def size(self, key: str) -> str:
        """Row count without decoding structures: a local file's index, else matminer's metadata."""
        local = self.datasets.get(key)
        if key in DEMO_KEYS:
            return "300"
        if local is not None:
            path = self._local_path(local)
            return f"{_count_rows(path):,}" if path.exists() else "missing"
        name = REGISTRY[key].matminer
        downloaded = (self.data_dir or Path()) / f"{name}.json.gz"
        if self.data_dir is not None and downloaded.exists():
            return f"{_count_rows(downloaded):,}"
        from matminer.datasets.utils import _load_dataset_dict  # 1-4 s to import: only when needed

        return f"{_load_dataset_dict()[name]['num_entries']:,} (online)"

    def _local_path(self, local: LocalFile) -> Path:
        path = Path(local.file)
        if not path.is_absolute() and self.data_dir is not None:
            path = self.data_dir / path
        if not path.suffix:
            path = path.with_name(path.name + ".json.gz")
        return path

    def load(self, key: str) -> PropertyTable:
        """Load dataset ``key`` as a validated table."""
        from mattransfer.data.table import PropertyTable  # pandas, pymatgen: not needed to list datasets

        spec = self.spec(key)
        local = self.datasets.get(key)
        log.info("reading dataset %s from %s …", key, self.location(key))  # the MP snapshot takes ~40 s
        if key in DEMO_KEYS:
            from mattransfer.data.demo import demo_path

            source = demo_path(cache_dir())
            frame = read_frame(source, "matminer")
        elif local is not None:
            source = self._local_path(local)
            frame = _read_shared(source, local.reader)
        else:
            source, frame = self._load_matminer(spec)
        return PropertyTable.from_frame(
            frame, name=key, target=spec.target, unit=spec.unit, source=str(source),
            structure_column=spec.structure_column, id_column=spec.id_column,
        )

    def _load_matminer(self, spec: DatasetSpec) -> tuple[str, object]:
        from matminer.datasets import load_dataset

        if spec.key == "expt_gap":
            return spec.matminer, _expt_gap_with_structures(self.data_dir)
        home = str(self.data_dir) if self.data_dir else None
        try:
            return spec.matminer, load_dataset(spec.matminer, data_home=home)
        except Exception as exc:
            raise DataError(
                f"dataset {spec.key!r}: matminer could not load {spec.matminer!r} from"
                f" {home or 'its data home'} ({type(exc).__name__}: {exc}). Offline, point the key at a"
                " local copy in a data-sources YAML (MATTRANSFER_DATA_SOURCES, see configs/shared-data.yaml)."
            ) from exc


def _expt_gap_with_structures(data_dir: Path | None):
    """expt_gap_kingsbury online has compositions and MP ids only: fetch structures from the MP API."""
    from matminer.datasets import load_dataset

    key = os.environ.get("MP_API_KEY")
    hint = (
        " or point `datasets.expt_gap.file` in a data-sources YAML at a local file with structures"
        " (e.g. expt_gap_kingsbury_structures.json.gz)."
    )
    if not key:
        raise DataError(
            "dataset 'expt_gap': matminer's expt_gap_kingsbury has compositions and Materials Project"
            " ids only; structures come from the Materials Project API. Set MP_API_KEY (pip install"
            " mp-api)" + hint
        )
    try:
        from mp_api.client import MPRester
    except ImportError as exc:
        raise DataError("dataset 'expt_gap': MP_API_KEY is set but mp-api is not installed (pip install mp-api)" + hint) from exc
    frame = load_dataset("expt_gap_kingsbury", data_home=str(data_dir) if data_dir else None)
    frame = frame.dropna(subset=["likely_mpid"])
    with MPRester(key) as mpr:
        docs = mpr.materials.summary.search(material_ids=list(frame["likely_mpid"]), fields=["material_id", "structure"])
    structures = {str(d.material_id): d.structure for d in docs}
    frame = frame[frame["likely_mpid"].isin(structures)].copy()
    frame["structure"] = [structures[m] for m in frame["likely_mpid"]]
    return frame


def _count_rows(path: Path) -> int:
    """Rows of a matminer split-JSON file, cached by path, modification time and size.

    Counting reads the whole file (the MP snapshot: ~20 s); the cache makes `mattransfer datasets`
    instant from its second call on, and a changed file is counted again.
    """
    import gzip
    import json

    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"
    cache_file = cache_dir() / "metadata.json"
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return int(cached[key])
    log.info("counting the rows of %s (once: the count is cached)", path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt") as handle:
        rows = len(json.load(handle)["index"])
    cached = {k: v for k, v in cached.items() if not k.startswith(f"{path.resolve()}|")}  # drop stale entries
    write_json(cache_file, {**cached, key: rows})
    return rows


@lru_cache(maxsize=2)
def _read_shared(path: Path, reader: Reader | None):
    """One read per file and process: several keys can share a file (eform and bandgap: one snapshot)."""
    return read_frame(path, reader)


def release_read_cache() -> None:
    """Forget the data files read so far (the MP snapshot's frame holds over 1 GB of structures)."""
    _read_shared.cache_clear()
