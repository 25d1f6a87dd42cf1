"""The command line end to end on the demo data: train, eval and predict agree; errors are one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml
from ase.io import write as ase_write
from pymatgen.io.ase import AseAtomsAdaptor

from mattransfer.cli import main


@pytest.fixture
def trained(make_config, tmp_path):
    """`mattransfer train options.yaml` on the demo data; returns (run directory, metrics)."""
    out = tmp_path / "run"
    options = tmp_path / "options.yaml"
    options.write_text(yaml.safe_dump(make_config(out).model_dump(mode="json")))
    assert main(["-q", "train", str(options)]) == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_eval_reproduces_the_training_runs_test_metrics(trained, tmp_path, capsys):
    out, metrics = trained
    capsys.readouterr()
    predictions = tmp_path / "test.csv"
    assert main(["-q", "eval", str(out / "model.ckpt"), "--data", "demo_energy", "--predictions", str(predictions)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["mae"] == pytest.approx(metrics["test"]["mae"], rel=1e-6)
    table = pd.read_csv(predictions)
    assert len(table) == metrics["n_test"] == 30
    assert (table["prediction"] - table["target"]).abs().mean() == pytest.approx(printed["mae"], rel=1e-5)


def test_predict_writes_one_row_per_structure(trained, demo_energy, tmp_path, capsys):
    out, _ = trained
    files = []
    for k in range(3):
        path = tmp_path / f"s{k}.cif"
        ase_write(path, AseAtomsAdaptor.get_atoms(demo_energy.structures[k]))
        files.append(str(path))
    csv = tmp_path / "pred.csv"
    assert main(["-q", "predict", str(out / "model.ckpt"), *files, "-o", str(csv)]) == 0
    table = pd.read_csv(csv)
    assert len(table) == 3 and table.columns[2] == "energy_per_atom [eV/atom]"
    assert table.iloc[:, 2].notna().all()


@pytest.mark.parametrize("argv, named", [
    (["train", "missing.yaml"], "missing.yaml"),
    (["eval", "missing.ckpt", "--data", "demo_energy"], "missing.ckpt"),
    (["datasets", "--data-sources", "missing-sources.yaml"], "missing-sources.yaml"),
    (["report", "not_a_study"], "not_a_study"),
])
def test_errors_are_one_line_naming_the_culprit(argv, named, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and named in err and "Traceback" not in err


def test_threads_option_sets_torch_threads(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "study", "preset", "quick", "/dev/null/x.yaml"]) == 2
        assert torch.get_num_threads() == 1
        assert "cannot write the preset to /dev/null/x.yaml" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_train_seed_and_output_dir_override_the_options_file(trained, tmp_path):
    """`--seed` makes a seed ensemble's members from one options file."""
    out, metrics = trained
    other = tmp_path / "seed7"
    assert main(["-q", "train", str(tmp_path / "options.yaml"), "--seed", "7", "--output-dir", str(other)]) == 0
    assert yaml.safe_load((other / "config.yaml").read_text())["seed"] == 7
    assert json.loads((other / "metrics.json").read_text())["test"]["mae"] != metrics["test"]["mae"]
