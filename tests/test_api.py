"""The Python API (`mattransfer.load`, `.predict`, `.embed`, `mattransfer.train`), the README's
example, out-of-domain warnings at prediction, and the CLI's help and version."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ase.build import bulk
from ase.io import write as ase_write
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

import mattransfer
from mattransfer.cli import build_parser, main
from mattransfer.errors import ConfigError, DataError
from mattransfer.models.domain import Domain
from mattransfer.models.model import TransferModel
from mattransfer.training.job import predict_structures

from conftest import GRAPHS, MODEL, TRAINING, fcc

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "eV/atom" in out and "(2, 220)" in out


def test_predict_takes_structures_atoms_and_paths(pretrained_ckpt, demo_energy, tmp_path):
    model = mattransfer.load(pretrained_ckpt)
    structure = demo_energy.structures[0]
    path = tmp_path / "one.cif"
    ase_write(path, AseAtomsAdaptor.get_atoms(demo_energy.structures[1]))
    atoms = AseAtomsAdaptor.get_atoms(demo_energy.structures[2])
    predictions = model.predict([structure, str(path), atoms])
    assert predictions.shape == (3,) and predictions.dtype == np.float64
    expected = predict_structures(model.module, demo_energy.subset(demo_energy.ids[:3]))
    np.testing.assert_allclose(predictions, expected, rtol=1e-5)
    assert model.predict(structure).shape == (1,)
    assert model.unit == "eV/atom" and model.target == "energy_per_atom"


def test_embed_shape_and_pooling(pretrained_ckpt, demo_energy):
    model = mattransfer.load(pretrained_ckpt)
    structures = list(demo_energy.structures[:4])
    assert model.embed(structures).shape == (4, model.module.encoder.out_dim)  # the encoder's own pooling
    mean = model.embed(structures, pooling="mean")
    assert mean.shape == (4, model.module.encoder.atom_dim)
    summed = model.embed(structures, pooling="sum")
    sizes = np.array([len(s) for s in structures])[:, None]
    np.testing.assert_allclose(summed, mean * sizes, rtol=1e-4, atol=1e-5)
    with pytest.raises(DataError, match="pooling 'median'"):
        model.embed(structures, pooling="median")


def test_bad_inputs_to_the_api_are_named(pretrained_ckpt):
    model = mattransfer.load(pretrained_ckpt)
    with pytest.raises(DataError, match="structure 1: a int"):
        model.predict([fcc("Cu", 3.6), 5])
    with pytest.raises(DataError, match="missing.cif"):
        model.predict(["missing.cif"])
    with pytest.raises(ConfigError, match="'training.no_such_key'"):
        mattransfer.train({"data": {"dataset": "demo_energy"}, "training": {"no_such_key": 1}})


def test_train_from_a_dict_returns_the_summary(tmp_path):
    summary = mattransfer.train({"device": "cpu", "output_dir": str(tmp_path / "r"), "graphs": GRAPHS, "model": MODEL,
                                 "training": TRAINING, "data": {"dataset": "demo_volume", "n_samples": 30}})
    assert summary["dataset"] == "demo_volume" and summary["n_train"] + summary["n_val"] == 30
    assert (tmp_path / "r" / "model.ckpt").exists()


def test_version_and_a_light_import():
    from importlib.metadata import version

    assert mattransfer.__version__ == version("mattransfer")
    code = ("import sys, mattransfer; from mattransfer.cli import build_parser; build_parser();"
            " print(sorted(m for m in ('torch', 'pymatgen', 'matminer', 'pandas') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"mattransfer {mattransfer.__version__}")


def _actions(parser: argparse.ArgumentParser, path: str = "mattransfer"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield path, action


def test_every_option_and_argument_has_help():
    missing = [f"{path} {action.option_strings or action.dest}" for path, action in _actions(build_parser())
               if not action.help]
    assert not missing


def test_tables_are_not_cut_when_output_is_not_a_terminal(capsys):
    from mattransfer.cli import _console

    assert _console().width == 160  # pytest captures stdout: not a terminal


# --- training domain -------------------------------------------------------------------------


def test_domain_flags_unseen_elements_range_and_distance():
    reference = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    domain = Domain.fit(reference, {29, 79}, np.array([-1.0, 0.5, 2.0]))
    assert domain.distance_threshold == pytest.approx(1.0) and (domain.target_min, domain.target_max) == (-1.0, 2.0)
    latent = torch.tensor([[0.5, 0.5], [5.0, 5.0], [1.0, 0.2]])
    result = domain.assess(latent, [{29}, {29, 11, 17}, {79}], np.array([0.0, 1.0, 3.0]))
    assert result["unseen_elements"] == ["", "Na Cl", ""]
    assert result["outside_target_range"] == [False, False, True]
    assert result["far_from_training"] == [False, True, False]
    assert result["out_of_domain"] == [False, True, True]


def test_checkpoint_with_domain_loads_with_weights_only(pretrained_ckpt):
    raw = torch.load(pretrained_ckpt, weights_only=True)  # tensors and plain types only
    assert raw["domain"]["elements"] and raw["domain"]["reference"].shape[1] == TransferModel.load(pretrained_ckpt).encoder.out_dim
    assert raw["domain"]["target_min"] < raw["domain"]["target_max"]
    assert raw["provenance"]["mattransfer_version"] == mattransfer.__version__


def test_predict_csv_flags_out_of_domain_and_survives_commas(pretrained_ckpt, tmp_path, capsys):
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    files = [tmp_path / "NaCl, rocksalt.cif", tmp_path / "Cu.cif"]
    ase_write(files[0], AseAtomsAdaptor.get_atoms(nacl))
    ase_write(files[1], bulk("Cu", "fcc", a=3.6))
    out = tmp_path / "p.csv"
    assert main(["-q", "predict", str(pretrained_ckpt), *map(str, files), "-o", str(out)]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert table["id"].tolist() == ["NaCl, rocksalt", "Cu"]  # quoted, not split at the comma
    assert table["unseen_elements"].tolist() == ["Na Cl", ""]
    assert table["out_of_domain"].tolist()[0]
    err = capsys.readouterr().err
    assert "outside the training domain" in err and "absent from training (Cl, Na)" in err


def test_a_clipped_prediction_is_still_flagged_outside_the_training_range(pretrained_ckpt):
    """Predictions stop at the training range's edge, and the domain check reads the head's own value, so
    the structures the head put outside the range are still named."""
    model = mattransfer.load(pretrained_ckpt)
    structures = [fcc("Cu", 3.6), fcc("Au", 4.1), fcc("Cu", 3.4)]
    raw = model.predict(structures)
    model.module.target["clip"] = [float(raw.min()), float(np.median(raw))]  # the largest prediction lies above
    model.module.domain.target_max = float(np.median(raw))
    frame, summary = model.predict_with_domain(structures)
    clipped = frame[f"{model.target} [{model.unit}]"].to_numpy()
    assert clipped.max() == pytest.approx(float(np.median(raw))) and clipped.max() < raw.max()
    assert frame["outside_target_range"].tolist() == [bool(v > np.median(raw)) for v in raw]
    assert "predicted outside the training range" in summary
