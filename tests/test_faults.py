"""Hostile and careless input (issue 8): checkpoints never run code, diverged trainings fail, one
writer per study, damaged study files are re-run, test sets stay out of every run, runs record what
they did, and small bad inputs get one-line errors."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pymatgen.core import Lattice, Structure

from mattransfer.cli import main
from mattransfer.data.splits import fixed_test_ids
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError, LeakError
from mattransfer.graphs.build import build_graphs
from mattransfer.models.model import TransferModel
from mattransfer.study import run_study, study_status
from mattransfer.study.layout import StudyDir, StudyLocked
from mattransfer.study.worker import _source
from mattransfer.training.run import run

from test_study import spec


class _WritesMarker:
    """A pickled object that, when unpickled, creates a file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_copy(checkpoint: Path, path: Path, marker: Path) -> Path:
    contents = torch.load(checkpoint, weights_only=True)
    contents["payload"] = _WritesMarker(marker)
    torch.save(contents, path)
    return path


def _options(make_config, path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump(make_config(**sections).model_dump(mode="json")))
    return path


# --- 1. checkpoints never execute code ----------------------------------------------------------


def test_a_hostile_checkpoint_is_refused_by_every_path(pretrained_ckpt, make_config, tmp_path, capsys):
    marker = tmp_path / "marker"
    hostile = _hostile_copy(pretrained_ckpt, tmp_path / "hostile.ckpt", marker)
    cif = tmp_path / "Cu.cif"
    Structure(Lattice.cubic(3.6), ["Cu"], [[0, 0, 0]]).to(filename=str(cif))
    finetune = _options(make_config, tmp_path / "ft.yaml", output_dir=str(tmp_path / "ft"),
                        data={"dataset": "demo_volume", "n_samples": 30},
                        finetune={"method": "full", "read_from": str(hostile)})
    for argv in (["eval", str(hostile), "--data", "demo_energy"], ["predict", str(hostile), str(cif)],
                 ["train", str(finetune)]):
        assert main(["-q", *argv]) == 2
        error = capsys.readouterr().err
        assert "refused" in error and "hostile.ckpt" in error and len(error.strip().splitlines()) == 1
    # a study worker loading a planted pre-training checkpoint
    study = StudyDir(tmp_path / "study")
    task = next(t for t in _plan(spec(), study) if t.pretrain)
    study.checkpoint(task.pretrain).parent.mkdir(parents=True)
    _hostile_copy(pretrained_ckpt, study.checkpoint(task.pretrain), marker)
    with pytest.raises(ConfigError, match="refused"):
        _source(task, study)
    assert not marker.exists()


def _plan(study_spec, study: StudyDir):
    from mattransfer.study.data import prepare_datasets
    from mattransfer.study.tasks import Planner

    return Planner(study_spec, prepare_datasets(study_spec, study, set(), progress=False)).plan()


def test_project_checkpoints_hold_only_tensors_and_plain_types(pretrained_ckpt):
    contents = torch.load(pretrained_ckpt, weights_only=True)  # raises on anything else
    assert contents["training_data"][0]["dataset"] == "demo_energy"


def test_weights_that_do_not_fit_the_recorded_architecture_are_one_line(pretrained_ckpt, tmp_path):
    contents = torch.load(pretrained_ckpt, weights_only=True)
    contents["model"]["encoder"]["hidden"] *= 2
    torch.save(contents, tmp_path / "mismatch.ckpt")
    with pytest.raises(ConfigError, match=r"mismatch.ckpt: its weights do not fit .*size mismatch") as error:
        TransferModel.load(tmp_path / "mismatch.ckpt")
    assert "\n" not in str(error.value)


# --- 2. a diverging training fails loudly -------------------------------------------------------


def test_a_diverging_training_fails_and_writes_no_model(make_config, tmp_path, capsys):
    options = _options(make_config, tmp_path / "diverge.yaml", output_dir=str(tmp_path / "run"),
                       training={"lr": 1e30})
    assert main(["-q", "train", str(options)]) == 2
    error = capsys.readouterr().err
    assert "diverged" in error and "learning rate" in error
    assert not (tmp_path / "run" / "model.ckpt").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_an_exploding_loss_is_warned_about(make_config, tmp_path):
    summary = run(make_config(training={"lr": 30.0, "max_epochs": 3, "patience": 3}), progress=False)
    assert any("learning rate" in w and "too high" in w for w in summary["warnings"])


def test_a_study_records_a_diverged_pretraining_and_skips_its_fine_tunes(tmp_path):
    diverging = spec(pretrain={"max_epochs": 3, "patience": 3, "batch_size": 16, "lr": 1e30},
                     part4={"enabled": False})
    summary = run_study(diverging, tmp_path / "study", workers=1, progress=False)
    assert summary["failed"] == 2 and summary["skipped"] == 4 and summary["done"] == 4 + 8  # scratch and feature baselines run
    study = StudyDir(tmp_path / "study")
    errors = [study.error(t.hash) for t in _plan(diverging, study) if study.error(t.hash)]
    assert sum("diverged" in e["error"] and not e["skipped"] for e in errors) == 2
    assert all(e["error"].startswith("skipped: its pre-training") for e in errors if e["skipped"])


# --- 3. one writer per study; damaged files are found, not fatal ---------------------------------


def test_a_second_run_on_a_locked_study_says_who_holds_it(tmp_path):
    study = StudyDir(tmp_path / "study")
    with study.lock():
        with pytest.raises(StudyLocked, match=f"pid {os.getpid()} on "):
            run_study(spec(), study.root, workers=1, progress=False)


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    root = tmp_path / "study"
    holder = multiprocessing.get_context("fork").Process(target=_die_holding_the_lock, args=(root,))
    holder.start()
    holder.join()
    assert f"pid {holder.pid} on " in (root / ".lock").read_text()
    with StudyDir(root).lock():
        pass
    assert (root / ".lock").read_text() == ""


def _die_holding_the_lock(root: Path) -> None:
    with StudyDir(root).lock():
        os._exit(9)  # no clean-up, as after kill -9


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults") / "study"
    run_study(spec(part4={"enabled": False}), root, workers=1, progress=False)
    return root


def test_a_truncated_result_is_rerun_not_fatal(finished_study, tmp_path, caplog):
    root = tmp_path / "study"
    shutil.copytree(finished_study, root)
    study = StudyDir(root)
    task = next(t for t in _plan(spec(part4={"enabled": False}), study) if t.kind == "finetune")
    result = study.task_dir(task.hash) / "result.json"
    result.write_text(result.read_text()[:40])
    with caplog.at_level(logging.WARNING, logger="mattransfer"):
        status = study_status(root)
    assert status["done"] == status["tasks"] - 1 and str(result) in caplog.text
    # the report rebuilds its table from the task files: the damaged task is not reported as done
    assert main(["-q", "report", str(root)]) == 0
    table = pd.read_csv(root / "results.csv")
    assert task.hash not in set(table["task_hash"])
    summary = run_study(spec(part4={"enabled": False}), root, workers=1, progress=False)
    assert summary["ran"] == 1 and summary["done"] == summary["tasks"]
    assert json.loads(result.read_text())["test"]["mae"] > 0


def test_a_damaged_pretraining_checkpoint_is_retrained(finished_study, tmp_path):
    root = tmp_path / "study"
    shutil.copytree(finished_study, root)
    study = StudyDir(root)
    tasks = _plan(spec(part4={"enabled": False}), study)
    pretrain = next(t for t in tasks if t.kind == "pretrain")
    dependants = [t for t in tasks if t.pretrain == pretrain.hash]
    study.checkpoint(pretrain.hash).write_bytes(b"garbage")
    for task in dependants:
        (study.task_dir(task.hash) / "result.json").unlink()
    summary = run_study(spec(part4={"enabled": False}), root, workers=1, progress=False)
    assert summary["ran_done"] == 1 + len(dependants) and summary["failed"] == 0
    assert TransferModel.load(study.checkpoint(pretrain.hash)).training_data


# --- 4. test sets stay out of every run -----------------------------------------------------------


@pytest.fixture
def pretrained_test_seed_1(make_config, tmp_path):
    config = make_config(output_dir=tmp_path / "pre", data={"dataset": "demo_energy", "n_samples": 200, "test_seed": 1})
    run(config, progress=False)
    return tmp_path / "pre" / "model.ckpt"


def test_a_finetune_whose_test_set_the_pretraining_trained_on_is_refused(pretrained_test_seed_1, make_config, tmp_path):
    sections = {"data": {"dataset": "demo_volume", "n_samples": 40},
                "finetune": {"method": "full", "read_from": str(pretrained_test_seed_1)}}
    with pytest.raises(LeakError, match=r"\d+ of the 30 test structures of demo_volume were in the pre-training"):
        run(make_config(output_dir=tmp_path / "ft", **sections), progress=False)
    sections["finetune"]["allow_test_overlap"] = True
    summary = run(make_config(output_dir=tmp_path / "ft", **sections), progress=False)
    assert summary["test_in_pretraining"]["same_structure"] > 0
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["test_in_pretraining"] == summary["test_in_pretraining"]


def test_a_finetune_with_the_pretrainings_test_seed_passes_and_records_zero(pretrained_ckpt, make_config, tmp_path):
    summary = run(make_config(output_dir=tmp_path / "ft", data={"dataset": "demo_volume", "n_samples": 40},
                              finetune={"method": "full", "read_from": str(pretrained_ckpt)}), progress=False)
    assert summary["test_in_pretraining"]["same_structure"] == 0
    assert summary["test_in_pretraining"]["n_test"] == 30


def test_eval_uses_the_checkpoints_test_set(pretrained_test_seed_1, demo_energy, tmp_path, capsys):
    predictions = tmp_path / "p.csv"
    assert main(["-q", "eval", str(pretrained_test_seed_1), "--data", "demo_energy", "--predictions", str(predictions)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["test_seed"] == 1 and printed["seen_in_training"]["same_structure"] == 0
    assert set(pd.read_csv(predictions)["id"]) == set(fixed_test_ids(demo_energy.ids, 0.1, seed=1))


def test_study_results_count_test_materials_the_source_trained_on(finished_study):
    table = pd.read_csv(finished_study / "results.csv")
    transfer = table[table["source"].notna() & (table["kind"] == "finetune")]
    assert len(transfer) and (transfer["test_same_structure"] == 0).all()  # one test seed for all: no overlap
    assert transfer["test_same_formula"].notna().all()
    report = (finished_study / "report" / "report.md")
    main(["-q", "report", str(finished_study)])
    assert "Test materials the source was pre-trained on" in report.read_text()


# --- 5. what a run records is what it did ---------------------------------------------------------


def test_a_finetune_records_the_architecture_it_trained(pretrained_ckpt, make_config, tmp_path, caplog):
    config = make_config(output_dir=tmp_path / "ft", data={"dataset": "demo_volume", "n_samples": 30},
                         model={"encoder": {"name": "cgcnn", "hidden": 48, "n_layers": 3}},
                         graphs={"cutoff": 7.0, "max_neighbors": 10},
                         finetune={"method": "full", "read_from": str(pretrained_ckpt)})
    with caplog.at_level(logging.WARNING, logger="mattransfer"):
        run(config, progress=False)
    recorded = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    trained = TransferModel.load(pretrained_ckpt)
    assert recorded["model"]["encoder"] == trained.config.encoder
    assert recorded["graphs"] == trained.graphs.model_dump()
    assert "trains and records the checkpoint's" in caplog.text


def test_eval_refuses_another_property_unless_allowed(pretrained_ckpt, capsys):
    assert main(["-q", "eval", str(pretrained_ckpt), "--data", "demo_bulk"]) == 2
    error = capsys.readouterr().err
    assert "energy_per_atom" in error and "bulk_modulus" in error and "--allow-other-target" in error
    assert main(["-q", "eval", str(pretrained_ckpt), "--data", "demo_bulk", "--allow-other-target"]) == 0


# --- 6. small inputs that still confuse ------------------------------------------------------------


def test_a_json_file_that_is_not_a_table_is_one_line(pretrained_ckpt, tmp_path, capsys):
    path = tmp_path / "notatable.json"
    path.write_text('{"a": 1, "b": [1, 2]}')
    assert main(["-q", "eval", str(pretrained_ckpt), "--data", str(path), "--target", "y",
                 "--allow-other-target"]) == 2
    assert "notatable.json: the JSON holds no table" in capsys.readouterr().err


def test_a_non_utf8_options_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"seed: 0\ndata: {dataset: demo_energy}\n# caf\xe9\n")
    assert main(["-q", "train", str(path)]) == 2
    assert "latin1.yaml: the options file is not UTF-8 text (byte 0xe9" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_fails_before_any_work(make_config, tmp_path, capsys):
    options = _options(make_config, tmp_path / "cuda.yaml", output_dir=str(tmp_path / "run"), device="cuda")
    assert main(["-q", "train", str(options)]) == 2
    assert "device 'cuda'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="device 'cuda'"):
        run_study(spec(device="cuda"), tmp_path / "study", workers=1, progress=False)


def test_dummy_species_are_one_line(pretrained_ckpt, tmp_path, capsys):
    dummy = tmp_path / "dummy.cif"
    Structure(Lattice.cubic(4.0), ["X", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(dummy))
    assert main(["-q", "predict", str(pretrained_ckpt), str(dummy), "-o", str(tmp_path / "d.csv")]) == 2
    error = capsys.readouterr().err
    assert "structure 'dummy' has sites of X" in error and "Z=" not in error


def test_atoms_closer_than_half_an_angstrom_are_warned(graph_settings, caplog):
    close = Structure(Lattice.cubic(3.6), ["Cu", "Cu"], [[0, 0, 0], [0.05, 0, 0]])
    table = PropertyTable("t", "y", "", "close.cif", ["close"], [close], np.zeros(1))
    with caplog.at_level(logging.WARNING, logger="mattransfer"):
        build_graphs(table, graph_settings, progress=False)
    assert "close.cif: structure 'close' has atoms 0.180 Å apart" in caplog.text


@pytest.fixture(autouse=True)
def _logs_reach_caplog():
    """The CLI stops mattransfer's records at its own handler; tests read them through the root logger."""
    logger = logging.getLogger("mattransfer")
    saved = logger.propagate
    logger.propagate = True
    yield
    logger.propagate = saved
