"""Embedded demo dataset: small EMT metal crystals built locally, no download.

Energy per atom, equilibrium volume and bulk modulus all come from the same
energy-volume curve of the same crystals, so a model pre-trained on one of
them has learned something genuinely useful for the others.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.data import atomic_numbers, reference_states
from ase.eos import EquationOfState
from ase.units import GPa
from matminer.utils.io import load_dataframe_from_json, store_dataframe_as_json
from pymatgen.io.ase import AseAtomsAdaptor

from mattransfer.fileio import atomic_path
from mattransfer.paths import touch

__all__ = ["ELEMENTS", "TARGETS", "build_demo_frame", "demo_path"]

ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
TARGETS = ("energy_per_atom", "volume_per_atom", "bulk_modulus")

# Experimental fcc lattice constants (Å); all seven are fcc in ASE's table.
_FCC_A = {el: reference_states[atomic_numbers[el]]["a"] for el in ELEMENTS}

# (lattice, ase.build.bulk keyword, repeat): every cell holds 1-8 atoms.
_CELLS = (
    ("fcc", {}, (1, 1, 1)),
    ("fcc", {}, (1, 1, 2)),
    ("fcc", {}, (2, 2, 2)),
    ("fcc", {"cubic": True}, (1, 1, 1)),
    ("fcc", {"cubic": True}, (1, 1, 2)),
    ("bcc", {}, (1, 1, 1)),
    ("bcc", {}, (2, 2, 2)),
    ("bcc", {"cubic": True}, (1, 1, 1)),
    ("bcc", {"cubic": True}, (2, 2, 1)),
    ("hcp", {}, (1, 1, 1)),
    ("hcp", {}, (1, 1, 2)),
    ("hcp", {}, (2, 2, 1)),
    ("hcp", {"orthorhombic": True}, (1, 1, 1)),
)

_N_SPECIES_P = (0.3, 0.5, 0.2)  # probability of 1, 2, 3 species per cell
_MAX_STRAIN = 0.03
_LATTICE_SCATTER = 0.01  # relative error of the lattice-constant guess
# Volume factors around the generated cell; odd count so the middle one is exactly 1.
_EOS_SCALES = np.linspace(0.94, 1.06, 5)
_MAX_ATTEMPTS_FACTOR = 5
_CACHE_VERSION = "v1"


def _lattice_constant(lattice: str, a_fcc: float) -> float:
    """Lattice constant giving the same volume per atom as fcc with `a_fcc`."""
    if lattice == "fcc":
        return a_fcc
    if lattice == "bcc":
        return (a_fcc**3 / 2) ** (1 / 3)
    return a_fcc / np.sqrt(2)  # ideal hcp: same nearest-neighbour distance as fcc


def _random_crystal(rng: np.random.Generator) -> Atoms:
    lattice, kwargs, repeat = _CELLS[rng.integers(len(_CELLS))]
    atoms = bulk("Cu", lattice, a=1.0, **kwargs).repeat(repeat)
    n_atoms = len(atoms)

    n_species = min(rng.choice(len(_N_SPECIES_P), p=_N_SPECIES_P) + 1, n_atoms)
    species = list(rng.choice(ELEMENTS, size=n_species, replace=False))
    # Every chosen element occupies at least one site.
    symbols = species + list(rng.choice(species, size=n_atoms - n_species))
    atoms.set_chemical_symbols(list(rng.permutation(symbols)))

    a_fcc = np.mean([_FCC_A[s] for s in atoms.get_chemical_symbols()])  # Vegard's law
    a_fcc *= 1 + rng.uniform(-_LATTICE_SCATTER, _LATTICE_SCATTER)
    atoms.set_cell(atoms.cell * _lattice_constant(lattice, a_fcc), scale_atoms=True)

    strain = rng.uniform(-_MAX_STRAIN, _MAX_STRAIN, size=(3, 3))
    strain = (strain + strain.T) / 2
    atoms.set_cell(atoms.cell @ (np.eye(3) + strain), scale_atoms=True)
    return atoms


def _emt_properties(atoms: Atoms) -> tuple[float, float, float] | None:
    """Energy (eV), equilibrium volume (Å^3) and bulk modulus (eV/Å^3) of `atoms`.

    Returns None when no equation of state fits the energy-volume curve usably.
    """
    cell = atoms.cell.copy()
    probe = atoms.copy()
    probe.calc = EMT()
    volumes, energies = [], []
    for scale in _EOS_SCALES:
        probe.set_cell(cell * scale ** (1 / 3), scale_atoms=True)
        volumes.append(probe.get_volume())
        energies.append(probe.get_potential_energy())
    energy = energies[len(_EOS_SCALES) // 2]  # the scale-1 point: the structure as generated

    for eos in ("birchmurnaghan", "sj"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scipy's OptimizeWarning; we validate below
                v0, _, b0 = EquationOfState(volumes, energies, eos=eos).fit(warn=False)
        except (RuntimeError, ValueError, np.linalg.LinAlgError):
            continue
        # A minimum outside the sampled volumes is an extrapolation, not a fit.
        if np.isfinite(b0) and b0 > 0 and min(volumes) <= v0 <= max(volumes):
            return float(energy), float(v0), float(b0)
    return None


def build_demo_frame(n_structures: int = 300, seed: int = 0) -> pd.DataFrame:
    """Generate `n_structures` EMT crystals with energy, volume and bulk-modulus targets."""
    rng = np.random.default_rng(seed)
    adaptor = AseAtomsAdaptor()
    rows = []
    attempts = 0
    while len(rows) < n_structures and attempts < _MAX_ATTEMPTS_FACTOR * n_structures:
        attempts += 1
        atoms = _random_crystal(rng)
        properties = _emt_properties(atoms)
        if properties is None:
            continue
        energy, v0, b0 = properties
        n_atoms = len(atoms)
        structure = adaptor.get_structure(atoms)
        rows.append(
            {
                "structure": structure,
                "formula": structure.composition.reduced_formula,
                "energy_per_atom": energy / n_atoms,
                "volume_per_atom": v0 / n_atoms,
                "bulk_modulus": b0 / GPa,
            }
        )
    if len(rows) < n_structures:
        raise RuntimeError(
            f"only {len(rows)} of {n_structures} demo structures had a usable EOS fit"
        )

    index = [f"demo-{i:04d}" for i in range(n_structures)]
    return pd.DataFrame(rows, index=index, columns=["structure", "formula", *TARGETS])


def demo_path(cache_dir: Path, n_structures: int = 300, seed: int = 0) -> Path:
    """Path of the cached demo dataset, building and writing it first if missing."""
    cache_dir = Path(cache_dir)
    path = cache_dir / f"demo-{_CACHE_VERSION}-n{n_structures}-s{seed}.json.gz"
    if path.exists():
        touch(path)
        return path

    cache_dir.mkdir(parents=True, exist_ok=True)
    frame = build_demo_frame(n_structures, seed)
    with atomic_path(path, suffix=".gz") as tmp:  # .gz: matminer picks compression from the suffix
        store_dataframe_as_json(frame, str(tmp), compression="gz", orient="split", pbar=False)
        _check_round_trip(frame, load_dataframe_from_json(str(tmp), pbar=False))
    return path


def _check_round_trip(written: pd.DataFrame, read: pd.DataFrame) -> None:
    if not (
        read.index.equals(written.index)
        and list(read.columns) == list(written.columns)
        and read["formula"].equals(written["formula"])
        and np.array_equal(read[list(TARGETS)].to_numpy(), written[list(TARGETS)].to_numpy())
        and all(a == b for a, b in zip(read["structure"], written["structure"]))
    ):
        raise RuntimeError("demo dataset did not read back identically")
