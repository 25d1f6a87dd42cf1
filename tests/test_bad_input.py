"""Bad input is either handled (dropped and counted, empty graphs) or an error naming what is wrong."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import ase.io
import numpy as np
import pandas as pd
import pytest
import torch
from ase import Atoms
from matminer.utils.io import store_dataframe_as_json
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Composition
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.io.cif import CifWriter
from pymatgen.io.vasp import Poscar

from mattransfer.config import DataConfig
from mattransfer.data.readers import read_frame
from mattransfer.data.registry import DataSources, LocalFile
from mattransfer.data.table import PropertyTable
from mattransfer.errors import DataError
from mattransfer.graphs.build import GraphSettings, build_graphs
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training.job import predict_structures
from mattransfer.training.run import load_table, run

from conftest import MODEL, SHARED_DATA, fcc, isolated_atom


def _write_matminer(frame: pd.DataFrame, path: Path) -> Path:
    store_dataframe_as_json(frame, str(path), compression="gz", orient="split", pbar=False)
    return path


def _file_table(path: Path, target: str = "y", **options) -> PropertyTable:
    return load_table(DataConfig(read_from=path, target=target, **options), DataSources())


def _file_data(path: Path, target: str = "y") -> dict:
    """A run's `data` section for a file (replacing the default registry key)."""
    return {"dataset": None, "read_from": str(path), "target": target, "unit": "eV", "n_samples": None}


# --- targets -----------------------------------------------------------------------------------


def test_non_finite_targets_are_dropped_and_counted(demo_energy, make_config, tmp_path):
    y = demo_energy.y[:30].copy()
    bad = {2: np.nan, 5: np.inf, 7: -np.inf, 11: np.nan}
    for row, value in bad.items():
        y[row] = value
    frame = pd.DataFrame({"structure": demo_energy.structures[:30], "y": y}, index=demo_energy.ids[:30])
    path = _write_matminer(frame, tmp_path / "nan_targets.json.gz")

    table = _file_table(path)
    assert table.dropped == {"non_finite_target": 4}
    assert len(table) == 26
    assert not {demo_energy.ids[row] for row in bad} & set(table.ids)
    assert np.isfinite(table.y).all()

    summary = run(make_config(tmp_path / "run", data=_file_data(path)), progress=False)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dropped"] == summary["dropped"] == {"non_finite_target": 4}
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 26
    assert "non_finite_target" in (tmp_path / "run" / "train.log").read_text()


def test_non_numeric_csv_targets_are_dropped(tmp_path):
    text = Poscar(fcc("Cu", 3.6)).get_str()
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "structure": [text] * 4, "y": ["1.5", "inf", "", "n/a"]})
    frame.to_csv(tmp_path / "t.csv", index=False)
    table = _file_table(tmp_path / "t.csv")
    assert table.ids == ["a"] and table.y.tolist() == [1.5]
    assert table.dropped == {"non_finite_target": 3}


def test_all_targets_non_finite_names_the_column(tmp_path):
    frame = pd.DataFrame({"structure": [fcc("Cu", 3.6)] * 2, "gap": [np.nan, np.inf]}, index=["a", "b"])
    path = _write_matminer(frame, tmp_path / "allnan.json.gz")
    with pytest.raises(DataError, match=r"allnan\.json\.gz.*no row has a finite value.*'gap'"):
        _file_table(path, target="gap")


# --- structures and graphs ----------------------------------------------------------------------


def test_isolated_atom_is_a_graph_without_edges(tmp_path):
    structures = [fcc("Cu", 3.6), isolated_atom("Cu"), fcc("Al", 4.05)]
    table = PropertyTable.from_frame(
        pd.DataFrame({"structure": structures, "y": [1.0, 2.0, 3.0]}, index=["cu", "lonely", "al"]),
        name="lonely", target="y", unit="eV", source="memory",
    )
    settings = GraphSettings(cutoff=5.0, max_neighbors=8)
    store = build_graphs(table, settings, progress=False)
    assert store.atom_ptr.tolist() == [0, 4, 5, 9]
    n_edges = (store.edge_ptr[1:] - store.edge_ptr[:-1]).tolist()
    assert n_edges[1] == 0 and n_edges[0] == 4 * 8 and n_edges[2] == 4 * 8

    model = TransferModel(ModelConfig(**MODEL), settings)
    predictions = predict_structures(model, table)
    assert predictions.shape == (3,) and np.isfinite(predictions).all()
    alone = model.eval().predict(store.batch(torch.tensor([1])))
    assert torch.isfinite(alone).all()
    # It also trains: a batch mixing it with other crystals gives finite gradients.
    model.train()
    model(store.batch(torch.tensor([0, 1, 2]))).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_element_beyond_max_z_names_structure_and_element(demo_energy, make_config, tmp_path):
    # max_z=20: the demo's Al (13) fits, Cu/Ni/Pd/Ag/Pt/Au do not.
    first_bad = next(
        (row_id, z) for row_id, s in zip(demo_energy.ids, demo_energy.structures) for z in s.atomic_numbers if z > 20
    )
    config = make_config(model={"encoder": {**MODEL["encoder"], "max_z": 20}, "head": MODEL["head"]})
    with pytest.raises(DataError) as info:
        run(config, progress=False)
    message = str(info.value)
    assert repr(first_bad[0]) in message
    assert f"Z={first_bad[1]}" in message
    assert "max_z" in message


def test_element_above_default_table_names_structure(graph_settings):
    md = fcc("Cu", 3.6)
    md.replace_species({"Cu": "Md"})  # mendelevium, Z = 101 > default max_z = 100
    table = PropertyTable.from_frame(
        pd.DataFrame({"structure": [fcc("Cu", 3.6), md], "y": [0.0, 0.0]}, index=["cu-1", "md-1"]),
        name="heavy", target="y", unit="", source="memory",
    )
    model = TransferModel(ModelConfig(**MODEL), graph_settings)
    with pytest.raises(DataError, match=r"'md-1'.*Z=101"):
        predict_structures(model, table)


def test_cell_that_is_not_a_structure_names_the_row(tmp_path):
    frame = pd.DataFrame({"structure": [fcc("Cu", 3.6), "Cu4"], "y": [1.0, 2.0]}, index=["ok", "bad-row"])
    path = _write_matminer(frame, tmp_path / "strings.json.gz")
    with pytest.raises(DataError, match=r"strings\.json\.gz.*'bad-row'.*not a pymatgen Structure"):
        _file_table(path)


# --- files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["empty.json.gz", "empty.csv", "empty.extxyz"])
def test_empty_file_names_the_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=rf"{name}.*empty"):
        _file_table(tmp_path / name)


def test_header_only_csv_is_an_empty_dataset(tmp_path):
    (tmp_path / "header.csv").write_text("id,structure,y\n")
    with pytest.raises(DataError, match=r"header\.csv.*empty"):
        _file_table(tmp_path / "header.csv")


def test_corrupt_json_gz_names_the_file(tmp_path):
    garbage = tmp_path / "garbage.json.gz"
    garbage.write_bytes(b"\x00\x01 this is not gzip at all \xff" * 10)
    with pytest.raises(DataError, match=r"garbage\.json\.gz.*could not be read as matminer"):
        read_frame(garbage)
    truncated = tmp_path / "truncated.json.gz"
    truncated.write_bytes(gzip.compress(b'{"index": ["a"], "columns": ["y"], "data": [[1.0'))
    with pytest.raises(DataError, match=r"truncated\.json\.gz"):
        read_frame(truncated)


def test_missing_and_unknown_files(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.json\.gz.*not found"):
        read_frame(tmp_path / "nowhere.json.gz")
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match=r"data\.txt.*reader"):
        read_frame(tmp_path / "data.txt")
    with pytest.raises(DataError, match=r"'no_such_key'.*piezo"):
        DataSources().load("no_such_key")


def test_missing_target_column_names_it_and_lists_columns(tmp_path):
    frame = pd.DataFrame({"structure": [fcc("Cu", 3.6)], "band_gap": [1.0], "formula": ["Cu"]}, index=["a"])
    _write_matminer(frame, tmp_path / "wrong_file.json.gz")
    # A registry key pointed at a file without the key's target column.
    sources = DataSources(data_dir=tmp_path, datasets={"piezo": LocalFile(file="wrong_file")})
    with pytest.raises(DataError) as info:
        sources.load("piezo")
    message = str(info.value)
    assert "wrong_file.json.gz" in message and "'eij_max'" in message
    assert "'band_gap'" in message and "'formula'" in message and "'structure'" in message


def test_missing_structure_column_lists_columns(tmp_path):
    frame = pd.DataFrame({"cif": ["x"], "y": [1.0]}, index=["a"])
    path = _write_matminer(frame, tmp_path / "nostruct.json.gz")
    with pytest.raises(DataError, match=r"nostruct\.json\.gz.*'structure' not found.*'cif'"):
        _file_table(path)


def test_duplicate_ids_are_named(tmp_path):
    text = Poscar(fcc("Cu", 3.6)).get_str()
    frame = pd.DataFrame({"id": ["mp-1", "mp-2", "mp-1", "mp-3", "mp-3"], "structure": [text] * 5, "y": range(5)})
    frame.to_csv(tmp_path / "dups.csv", index=False)
    with pytest.raises(DataError) as info:
        _file_table(tmp_path / "dups.csv")
    message = str(info.value)
    assert "dups.csv" in message and "duplicate" in message
    assert "'mp-1'" in message and "'mp-3'" in message and "'mp-2'" not in message


def test_composition_only_data(tmp_path):
    """A composition-only table loads; reading a structure of it (a structure encoder) is the one-line error."""
    frame = pd.DataFrame({"composition": [Composition("NaCl"), Composition("GaAs")], "gap": [8.5, 1.4]}, index=["a", "b"])
    path = _write_matminer(frame, tmp_path / "comps.json.gz")
    table = _file_table(path, target="gap")
    assert [c.reduced_formula for c in table.row_compositions()] == ["NaCl", "GaAs"]
    with pytest.raises(DataError, match=r"comps\.json\.gz: composition-only data.*reads crystal structures"):
        table.structures[0]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"offline datasets not at {SHARED_DATA}")
def test_real_composition_only_file_has_no_structures():
    sources = DataSources(data_dir=SHARED_DATA, datasets={"expt_gap": LocalFile(file="matbench_expt_gap", target="gap expt")})
    table = sources.load("expt_gap")
    assert len(table) == 4604 and table.compositions is not None
    with pytest.raises(DataError, match=r"matbench_expt_gap\.json\.gz: composition-only"):
        list(table.structures)


def test_structure_text_that_does_not_parse_names_file_and_row(tmp_path):
    good = Poscar(fcc("Cu", 3.6)).get_str()
    frame = pd.DataFrame({"id": ["ok", "broken"], "structure": [good, "Cu\n1.0\nnot a lattice"], "y": [1.0, 2.0]})
    frame.to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(DataError, match=r"broken\.csv: row 'broken'.*POSCAR"):
        _file_table(tmp_path / "broken.csv")


def test_non_periodic_extxyz_frame_is_named(tmp_path):
    ase.io.write(tmp_path / "molecule.extxyz", Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]))
    with pytest.raises(DataError, match=r"molecule\.extxyz: frame 0 is not periodic"):
        read_frame(tmp_path / "molecule.extxyz")


def test_more_samples_than_pool_in_a_run(make_config, tmp_path):
    config = make_config(data={"dataset": "demo_energy", "n_samples": 271})  # pool: 300 - 30 test
    with pytest.raises(DataError, match=r"demo_energy: 271 samples requested.*holds 270"):
        run(config, progress=False)


# --- readers agree -------------------------------------------------------------------------------


@pytest.fixture
def reference(demo_energy):
    """Five demo crystals (1-8 atoms, 1-3 species) with two targets."""
    rows = [0, 1, 7, 42, 99]
    ids = [demo_energy.ids[r] for r in rows]
    structures = [demo_energy.structures[r] for r in rows]
    return ids, structures, demo_energy.y[rows], np.arange(len(rows)) * 1.5 - 2.0


def _assert_same_table(table: PropertyTable, ids, structures, y) -> None:
    assert table.ids == ids
    np.testing.assert_allclose(table.y, y, rtol=1e-12)
    matcher = StructureMatcher(primitive_cell=False, scale=False, attempt_supercell=False)
    for got, expected in zip(table.structures, structures):
        assert got.composition == expected.composition
        assert got.volume == pytest.approx(expected.volume, rel=1e-6)
        assert matcher.fit(got, expected), f"{got.formula} != {expected.formula}"


def test_extxyz_cif_and_poscar_readers_agree(reference, tmp_path):
    ids, structures, y, energy = reference
    frames = []
    for row_id, structure, target, e in zip(ids, structures, y, energy):
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.info.update({"id": row_id, "y": float(target), "energy": float(e)})
        frames.append(atoms)
    ase.io.write(tmp_path / "data.extxyz", frames)
    pd.DataFrame({"id": ids, "structure": [str(CifWriter(s)) for s in structures], "y": y}).to_csv(
        tmp_path / "cif.csv", index=False)
    pd.DataFrame({"id": ids, "cell": [Poscar(s).get_str() for s in structures], "y": y}).to_csv(
        tmp_path / "poscar.csv", index=False)

    _assert_same_table(_file_table(tmp_path / "data.extxyz"), ids, structures, y)
    _assert_same_table(_file_table(tmp_path / "cif.csv"), ids, structures, y)
    _assert_same_table(_file_table(tmp_path / "poscar.csv", structure_column="cell"), ids, structures, y)
    # `energy` is a key ASE's reader moves out of atoms.info; it is still a target.
    _assert_same_table(_file_table(tmp_path / "data.extxyz", target="energy"), ids, structures, energy)


def test_extxyz_without_ids_numbers_its_frames(tmp_path):
    frames = [AseAtomsAdaptor.get_atoms(fcc(el, a)) for el, a in (("Cu", 3.6), ("Al", 4.05))]
    for atoms, value in zip(frames, (1.0, 2.0)):
        atoms.info["y"] = value
    ase.io.write(tmp_path / "noid.xyz", frames, format="extxyz")
    table = _file_table(tmp_path / "noid.xyz")
    assert table.ids == ["noid-0", "noid-1"] and table.y.tolist() == [1.0, 2.0]
