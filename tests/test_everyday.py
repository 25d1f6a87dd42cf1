"""Everyday use of a run (issue 11): own test and validation files, fractions, a readable run
directory, only the used rows featurized, threads, the cache and the datasets metadata cache."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import pandas as pd
import pytest
import yaml
from pymatgen.io.ase import AseAtomsAdaptor

from mattransfer.cli import main
from mattransfer.config import DataConfig
from mattransfer.data.registry import DataSources, LocalFile
from mattransfer.data.table import EncodedStructure, PropertyTable
from mattransfer.errors import ConfigError, DataError, LeakError
from mattransfer.paths import cache_dir, cache_usage, clear_cache
from mattransfer.threads import default_threads
from mattransfer.training.run import prepare_table, run


def _extxyz(table: PropertyTable, rows: range, path: Path, scale: float = 1.0) -> Path:
    """Rows of a demo table as an extxyz file with the target under atoms.info (ids kept); ``scale``
    stretches the cells, making other structures than the table's."""
    frames = []
    for k in rows:
        atoms = AseAtomsAdaptor.get_atoms(table.structures[k])
        atoms.set_cell(atoms.cell * scale, scale_atoms=True)
        atoms.info = {"id": table.ids[k], table.target: float(table.y[k])}
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


# --- own test and validation sets ---------------------------------------------------------------


def test_test_and_validation_files_replace_the_fractions(make_config, demo_energy, tmp_path):
    test_file = _extxyz(demo_energy, range(0, 12), tmp_path / "my_test.xyz", scale=1.02)
    val_file = _extxyz(demo_energy, range(12, 20), tmp_path / "my_val.xyz", scale=1.02)
    config = make_config(data={"test_set": str(test_file), "validation_set": str(val_file)})
    assert config.data.test_fraction == 0 and config.data.val_fraction == 0
    summary = run(config, progress=False)
    split = json.loads((config.output_dir / "split.json").read_text())
    # The files' own ids (demo ids, which are also rows of the data: prefixed to stay unique)
    assert split["test"] == [f"test:{i}" for i in demo_energy.ids[:12]]
    assert split["val"] == [f"val:{i}" for i in demo_energy.ids[12:20]]
    assert summary["n_train"] == 60 and summary["n_val"] == 8 and summary["n_test"] == 12
    scored = pd.read_csv(config.output_dir / "test_predictions.csv")
    assert scored["y_true"].tolist() == pytest.approx(demo_energy.y[:12].tolist())


def test_set_as_a_number_is_the_fraction(make_config):
    config = make_config(data={"test_set": 0.2, "validation_set": 0.25})
    assert (config.data.test_fraction, config.data.val_fraction) == (0.2, 0.25)
    assert config.data.test_set is None and config.data.validation_set is None


@pytest.mark.parametrize("data, message", [
    ({"test_fraction": 0}, "test_fraction: 0` leaves no test set"),
    ({"test_set": "t.xyz", "test_fraction": 0.1}, "`test_fraction` must be 0 or absent"),
    ({"validation_set": "v.xyz", "val_fraction": 0.2}, "`val_fraction` must be 0 or absent"),
    ({"test_set": 0.2, "test_fraction": 0.3}, "give one"),
])
def test_contradictory_set_options_name_the_keys(make_config, data, message):
    with pytest.raises(Exception, match=message):
        make_config(data=data)


def test_validation_file_with_clashing_ids_gets_a_prefix_and_a_bad_target_is_named(demo_energy, tmp_path):
    # Same ids as rows of the data, other structures (cells scaled by 2 %): kept apart by a prefix.
    other = _extxyz(demo_energy, range(0, 5), tmp_path / "v.xyz", scale=1.02)
    data = DataConfig(dataset="demo_energy", validation_set=other)  # every non-test row is a sample
    table, split = prepare_table(data, DataSources(), seed=0)
    assert split.val == tuple(f"val:{i}" for i in demo_energy.ids[:5])
    assert len(table) == 300 + 5 and len(split.train) == 270
    wrong = DataConfig(read_from=other, target="no_such_key", validation_set=other)
    with pytest.raises(DataError, match="no_such_key"):
        prepare_table(wrong, DataSources(), seed=0)


def test_test_file_with_training_structures_is_a_leak(demo_energy, tmp_path):
    leaky = _extxyz(demo_energy, range(0, 300), tmp_path / "t.xyz")  # holds every training structure
    with pytest.raises(LeakError, match="t.xyz: .* structures are also training samples"):
        prepare_table(DataConfig(dataset="demo_energy", n_samples=20, test_set=leaky), DataSources(), seed=0)


def test_eval_on_a_file_scores_every_row_with_the_checkpoints_unit(pretrained_ckpt, demo_energy, tmp_path, capsys):
    data = _extxyz(demo_energy, range(30), tmp_path / "mine.xyz")
    assert main(["-q", "eval", str(pretrained_ckpt), "--data", str(data)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["subset"] == "all" and printed["n"] == 30 and printed["unit"] == "eV/atom"
    assert main(["-q", "eval", str(pretrained_ckpt), "--data", str(data), "--subset", "test"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3  # the hashed 10 %, on request only


# --- only the rows a run uses ------------------------------------------------------------------


def test_a_run_featurizes_and_decodes_only_its_rows(tmp_path, monkeypatch, demo_energy):
    # A matminer file: its structures are read encoded and decoded only when a run uses them.
    path = tmp_path / "big.json.gz"
    from matminer.utils.io import store_dataframe_as_json

    frame = pd.DataFrame({"structure": list(demo_energy.structures), "y": demo_energy.y}, index=demo_energy.ids)
    store_dataframe_as_json(frame, str(path), compression="gz", orient="split", pbar=False)
    sources = DataSources(datasets={"phonons": LocalFile(file=str(path), target="y")})
    full = sources.load("phonons")
    assert all(isinstance(c, EncodedStructure) for c in full.structures._cells)
    table, split = prepare_table(DataConfig(dataset="phonons", n_samples=40), sources, seed=0)
    assert len(table) == 40 + 30
    assert sorted(table.ids) == sorted([*split.train, *split.val, *split.test])
    assert table.structures[0] == demo_energy.structures[demo_energy.ids.index(table.ids[0])]


# --- a run directory a person can read ---------------------------------------------------------


def test_run_directory_has_curve_physical_history_and_provenance(make_config):
    from mattransfer import __version__

    config = make_config()
    summary = run(config, progress=False)
    out = config.output_dir
    assert (out / "learning_curve.png").stat().st_size > 1000
    history = pd.read_csv(out / "history.csv")
    assert {"train_mae", "val_mae", "lr_encoder", "lr_head", "elapsed_s"} <= set(history.columns)
    # val_mae is in eV/atom: the best epoch's is the run's validation MAE
    assert history.loc[summary["best_epoch"], "val_mae"] == pytest.approx(summary["val"]["mae"], rel=1e-4)
    assert history["elapsed_s"].is_monotonic_increasing
    text = (out / "config.yaml").read_text()
    assert text.startswith(f"# mattransfer {__version__}, git commit ")
    assert yaml.safe_load(text)["data"]["dataset"] == "demo_energy"  # still a loadable options file
    assert summary["mattransfer_version"] == __version__


# --- threads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cores, load, expected", [(2, 0.1, 2), (2, 1.2, 1), (2, 3.7, 1), (16, 4.0, 12), (1, 0.0, 1)])
def test_default_threads_are_the_idle_cores(cores, load, expected):
    assert default_threads(cores, load) == expected


def test_threads_from_options_file_and_command_line(make_config, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        options = tmp_path / "o.yaml"
        options.write_text(yaml.safe_dump({**make_config().model_dump(mode="json"), "threads": 2}))
        assert main(["-q", "train", str(options)]) == 0
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["threads"] == 2
        assert main(["-q", "--threads", "1", "train", str(options)]) == 0  # the command line wins
        assert json.loads((tmp_path / "run" / "metrics.json").read_text())["threads"] == 1
        with pytest.raises(ConfigError, match="threads"):
            from mattransfer.config import load_config

            load_config(options, {"threads": 0})
    finally:
        torch.set_num_threads(before)


# --- cache ---------------------------------------------------------------------------------------


def test_cache_info_and_clear_older_than(tmp_path, monkeypatch, capsys):
    import os
    import time

    monkeypatch.setenv("MATTRANSFER_CACHE", str(tmp_path / "cache"))
    old, new = cache_dir() / "graphs" / "old.pt", cache_dir() / "graphs" / "new.pt"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x" * 2000), new.write_bytes(b"y" * 3000)
    (cache_dir() / "metadata.json").write_text("{}")
    os.utime(old, (time.time() - 10 * 86400,) * 2)
    assert cache_usage() == {"graphs": (2, 5000), "metadata": (1, 2)}
    assert main(["cache", "info"]) == 0
    assert "graphs" in capsys.readouterr().out
    assert main(["cache", "clear", "--older-than", "7"]) == 0
    assert "removed 1 files unused for 7 days (2.0 kB)" in capsys.readouterr().out
    assert not old.exists() and new.exists()
    assert clear_cache() == (2, 3002) and cache_usage() == {}


def test_datasets_row_counts_are_cached_by_file_state(tmp_path, monkeypatch, demo_energy):
    import gzip

    from matminer.utils.io import store_dataframe_as_json

    def write(n: int) -> None:
        frame = pd.DataFrame({"structure": list(demo_energy.structures[:n]), "y": demo_energy.y[:n]})
        store_dataframe_as_json(frame, str(path), compression="gz", orient="split", pbar=False)

    monkeypatch.setenv("MATTRANSFER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "d.json.gz"
    write(5)
    sources = DataSources(datasets={"phonons": LocalFile(file=str(path), target="y")})
    assert sources.size("phonons") == "5"
    with monkeypatch.context() as patch:
        patch.setattr(gzip, "open", lambda *a, **k: pytest.fail("the file was read again"))
        assert sources.size("phonons") == "5"  # second call: from the cache
    write(7)
    assert sources.size("phonons") == "7"  # the file changed: counted again
