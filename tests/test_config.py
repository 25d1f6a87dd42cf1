"""Options files and data sources: mistakes are ConfigErrors that name the dotted key."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from mattransfer.config import FinetuneConfig, TrainConfig, load_config
from mattransfer.data.registry import REGISTRY, DataSources
from mattransfer.errors import ConfigError
from mattransfer.finetune import METHODS
from mattransfer.training.run import run

from conftest import SHARED_DATA

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"offline datasets not at {SHARED_DATA}")


def _write(tmp_path: Path, raw: dict, name: str = "options.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


BASE = {"data": {"dataset": "demo_energy"}}
FINETUNE = {"read_from": "pretrained.ckpt"}


def _error(tmp_path: Path, raw: dict) -> str:
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message  # every message names the file
    return message


def test_valid_config_loads_with_defaults(tmp_path):
    config = load_config(_write(tmp_path, {**BASE, "training": {"lr": 0.01}}))
    assert config.training.lr == 0.01
    assert config.training.max_epochs == 500  # default kept
    assert config.model.encoder["name"] == "cgcnn" and config.finetune is None


def test_unknown_key_is_named(tmp_path):
    message = _error(tmp_path, {**BASE, "training": {"lrr": 0.01}})
    assert "'training.lrr'" in message and "unknown key" in message
    assert "'seeed'" in _error(tmp_path, {**BASE, "seeed": 1})


def test_wrong_type_is_named(tmp_path):
    message = _error(tmp_path, {**BASE, "training": {"lr": "fast"}})
    assert "'training.lr'" in message and "'fast'" in message
    assert "'training.batch_size'" in _error(tmp_path, {**BASE, "training": {"batch_size": 0}})


def test_every_problem_is_reported_at_once(tmp_path):
    message = _error(tmp_path, {**BASE, "training": {"lr": "fast", "lrr": 1}, "graphs": {"cutoff": -1}})
    assert "'training.lr'" in message and "'training.lrr'" in message and "'graphs.cutoff'" in message


def test_unknown_finetune_method_is_named(tmp_path):
    message = _error(tmp_path, {**BASE, "finetune": {**FINETUNE, "method": "adapterz"}})
    assert "'finetune.method'" in message and "'adapterz'" in message
    assert "lora" in message  # the valid choices are listed


@pytest.mark.parametrize(
    "method, options, key",
    [
        ("lora", {"rank": 0}, "finetune.config.rank"),
        ("lora", {"alpha": "big"}, "finetune.config.alpha"),
        ("lora", {"rnak": 4}, "finetune.config.rnak"),
        ("freeze", {"layers": -1}, "finetune.config.layers"),
        ("heads", {"lr_head": 0}, "finetune.config.lr_head"),
        ("freeze", {}, "finetune.config"),  # nothing to freeze
    ],
)
def test_invalid_method_option_is_named(tmp_path, method, options, key):
    message = _error(tmp_path, {**BASE, "finetune": {**FINETUNE, "method": method, "config": options}})
    assert f"'{key}'" in message


def test_method_options_are_resolved(tmp_path):
    config = load_config(_write(tmp_path, {**BASE, "finetune": {**FINETUNE, "method": "lora", "config": {"rank": 4}}}))
    assert config.finetune.config["rank"] == 4 and config.finetune.config["alpha"] == 16.0
    assert config.finetune.options().rank == 4


def test_encoder_options_are_named(tmp_path):
    assert "'model.encoder.hidden'" in _error(tmp_path, {**BASE, "model": {"encoder": {"name": "cgcnn", "hidden": 0}}})
    assert "'model.encoder.hiden'" in _error(tmp_path, {**BASE, "model": {"encoder": {"hiden": 8}}})
    message = _error(tmp_path, {**BASE, "model": {"encoder": {"name": "transformer"}}})
    assert "'model.encoder'" in message and "'transformer'" in message and "cgcnn" in message


def test_data_section_needs_exactly_one_source(tmp_path):
    assert "'data'" in _error(tmp_path, {"data": {}})
    assert "'data'" in _error(tmp_path, {"data": {"dataset": "phonons", "read_from": "x.csv"}})
    assert "target" in _error(tmp_path, {"data": {"read_from": "x.csv"}})
    assert "'data.n_samples'" in _error(tmp_path, {"data": {"dataset": "phonons", "n_samples": 1}})


def test_unreadable_options_files(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("training: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml.*mapping"):
        load_config(tmp_path / "list.yaml")


def test_overrides_are_validated_too(tmp_path):
    path = _write(tmp_path, BASE)
    assert load_config(path, {"seed": 3}).seed == 3
    with pytest.raises(ConfigError, match="'seed'"):
        load_config(path, {"seed": "three"})


def test_methods_registry_matches_config_choices():
    choices = typing.get_args(FinetuneConfig.model_fields["method"].annotation)
    assert set(choices) == set(METHODS)


def test_run_config_yaml_reloads_to_the_same_config(make_config, tmp_path):
    config = make_config(tmp_path / "run")
    run(config, progress=False)
    again = load_config(tmp_path / "run" / "config.yaml")
    assert again == config


# --- data sources ---------------------------------------------------------------------------------


def test_data_sources_yaml_errors_name_the_key(tmp_path):
    path = _write(tmp_path, {"datasets": {"phonons": {"file": "x", "tagret": "y"}}}, "sources.yaml")
    with pytest.raises(ConfigError, match=r"(?s)sources\.yaml.*'datasets\.phonons\.tagret'"):
        DataSources.from_yaml(path)
    path = _write(tmp_path, {"datasets": {"phononz": {"file": "x"}}}, "sources.yaml")
    with pytest.raises(ConfigError, match=r"sources\.yaml.*'phononz'"):
        DataSources.from_yaml(path)


def test_data_sources_yaml_resolves_paths_relative_to_itself(tmp_path):
    (tmp_path / "conf").mkdir()
    path = _write(tmp_path / "conf", {"data_dir": "../data", "datasets": {"eform": {"file": "snapshot", "target": "e"}}})
    sources = DataSources.from_yaml(path)
    assert sources.data_dir == (tmp_path / "data").resolve()
    assert sources.location("eform") == str((tmp_path / "data" / "snapshot.json.gz").resolve())
    assert sources.spec("eform").target == "e"
    assert sources.spec("eform").unit == REGISTRY["eform"].unit  # only the overridden field changes


@needs_shared_data
def test_real_dataset_through_data_dir():
    table = DataSources(data_dir=SHARED_DATA).load("phonons")  # matminer's own loader, offline copy
    assert len(table) == 1265
    assert table.target == "last phdos peak" and table.unit == "cm^-1"
    assert table.dropped == {}
    assert len(set(table.ids)) == len(table)


@needs_shared_data
def test_real_dataset_through_data_sources_yaml(tmp_path, monkeypatch):
    path = _write(tmp_path, {"data_dir": str(SHARED_DATA), "datasets": {"piezo": {"file": "piezoelectric_tensor"}}})
    sources = DataSources.from_yaml(path)
    table = sources.load("piezo")
    assert len(table) == 941
    assert table.target == "eij_max" and table.unit == "C/m^2"
    assert table.source == str(SHARED_DATA / "piezoelectric_tensor.json.gz")
    assert (table.y >= 0).all()  # a maximum modulus
    # The same file through $MATTRANSFER_DATA_SOURCES, as a run finds it.
    monkeypatch.setenv("MATTRANSFER_DATA_SOURCES", str(path))
    assert DataSources.from_env().load("piezo").ids == table.ids


def test_config_data_sources_is_a_path(make_config, tmp_path):
    assert isinstance(make_config(data_sources=str(tmp_path / "s.yaml")).data_sources, Path)
    assert TrainConfig.model_validate({**BASE}).data_sources is None


def test_shipped_options_and_study_files_are_valid(monkeypatch):
    """Every file in configs/ loads: training options, study specs, the data-sources map."""
    from mattransfer.study.label_selection import load_simulation_spec
    from mattransfer.study.spec import load_spec

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # paths in the files are relative to the repository root
    files = sorted((root / "configs").glob("*.yaml"))
    studies = [f for f in files if f.name.startswith("study-")]
    assert {"study-yardsticks.yaml", "study-zoo-universal.yaml"} <= {f.name for f in studies}
    seeds = {path.stem: load_spec(path).seeds for path in studies}
    assert seeds.pop("study-yardsticks") == [0, 1, 2] and set(map(tuple, seeds.values())) == {(0,)}
    assert load_config(root / "configs" / "finetune_phonons.yaml").finetune.method == "heads"
    assert load_config(root / "configs" / "pretrain_eform.yaml").finetune is None
    assert DataSources.from_yaml(root / "configs" / "shared-data.yaml").spec("eform").target == "formation_energy_per_atom"
    assert load_config(root / "configs" / "pretrain_bandgap.yaml").data.dataset == "bandgap"
    simulation = load_simulation_spec(root / "configs" / "label-selection.yaml")
    assert [t.dataset for t in simulation.targets] == ["phonons", "expt_gap"] and len(simulation.seeds) >= 3
