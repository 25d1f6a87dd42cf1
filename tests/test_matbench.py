"""`mattransfer matbench`: the matbench package's folds, no test id in training, resumable folds, the
official results file. Tiny models on the real matbench_phonons copy, fold 0 only (seconds)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mattransfer.cli import main
from mattransfer.data.registry import DataSources
from mattransfer.data.splits import Split
from mattransfer.matbench import TASKS, FoldResult, fold_ids, fold_split, load_task, task_file, write_official

from conftest import GRAPHS, SHARED_DATA

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"offline datasets not at {SHARED_DATA}")

TINY = {
    "graphs": GRAPHS,
    "model": {"encoder": {"name": "cgcnn", "hidden": 8, "n_layers": 1, "n_gaussians": 8}, "head": {"hidden": [8]}},
    "training": {"max_epochs": 2, "batch_size": 64},
}


def _options(tmp_path: Path, name: str = "options.yaml", **extra) -> Path:
    sources = tmp_path / "sources.yaml"
    sources.write_text(yaml.safe_dump({"data_dir": str(SHARED_DATA)}))
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**TINY, "data_sources": str(sources), **extra}))
    return path


def _package_folds(task: str) -> list[tuple[list[str], list[str]]]:
    """The folds straight from the package's validation file, not through mattransfer."""
    import matbench

    splits = json.loads((Path(matbench.__file__).parent / "matbench_v0.1_validation.json").read_text())["splits"]
    return [(splits[task][f"fold_{k}"]["train"], splits[task][f"fold_{k}"]["test"]) for k in range(5)]


@pytest.fixture(scope="module")
def fold0(tmp_path_factory) -> Path:
    """One tiny run of fold 0 of matbench_phonons."""
    tmp = tmp_path_factory.mktemp("matbench")
    out = tmp / "out"
    assert main(["--threads", "1", "-q", "matbench", "matbench_phonons", "--options", str(_options(tmp)),
                 "--out", str(out), "--folds", "0"]) == 0
    return out


def test_folds_are_the_packages():
    assert fold_ids("matbench_phonons") == _package_folds("matbench_phonons")


def test_fold_run_trains_on_the_folds_train_ids_and_tests_on_its_test_ids(fold0):
    train, test = _package_folds("matbench_phonons")[0]
    split = Split.from_json(fold0 / "fold_0" / "split.json")
    assert sorted(split.test) == sorted(test)
    assert sorted(split.train + split.val) == sorted(train)
    assert len(split.val) == round(0.1 * len(train))
    predicted = FoldResult.read(0, fold0 / "fold_0").predictions
    assert sorted(predicted["id"]) == sorted(test)
    markdown = (fold0 / "results.md").read_text()
    assert "1 of 5 folds finished" in markdown and "| MEGNet | 28.76 |" in markdown
    assert not (fold0 / "results.json").exists()  # the package records a task with all five folds only


def test_no_fold_test_id_reaches_training():
    _, table = load_task(TASKS["matbench_phonons"], task_file(TASKS["matbench_phonons"], DataSources(data_dir=SHARED_DATA)))
    present = set(table.ids)
    for fold, (train, test) in enumerate(fold_ids("matbench_phonons")):
        split = fold_split(train, test, present, 0.1, seed=fold)
        assert not set(test) & (set(split.train) | set(split.val))
        assert set(split.test) == set(test)


def test_rerun_keeps_finished_folds_and_summarises_every_finished_fold(fold0, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(fold0, out)  # copy2: modification times kept
    finished = {name: os.stat(out / "fold_0" / name).st_mtime_ns for name in ("metrics.json", "model.ckpt")}
    assert main(["--threads", "1", "-q", "matbench", "matbench_phonons", "--options", str(_options(tmp_path)),
                 "--out", str(out), "--folds", "0", "1"]) == 0
    assert {name: os.stat(out / "fold_0" / name).st_mtime_ns for name in finished} == finished
    assert [fold["fold"] for fold in json.loads((out / "folds.json").read_text())] == [0, 1]
    assert "mean ± std (n = 2 folds)" in (out / "results.md").read_text()


def test_unknown_task_is_a_one_line_error_listing_the_tasks(tmp_path, capsys):
    assert main(["matbench", "matbench_nope", "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "matbench_nope" in error
    assert all(task in error for task in TASKS)


def test_a_failed_download_is_a_one_line_error_naming_the_task_and_the_remedy(tmp_path, capsys, monkeypatch):
    import matbench.data_ops

    def offline(name: str):
        raise ConnectionError(f"Max retries exceeded with url: /projects/{name}.json.gz")

    monkeypatch.setattr(matbench.data_ops, "load", offline)
    monkeypatch.delenv("MATTRANSFER_DATA_SOURCES", raising=False)
    assert main(["-q", "matbench", "matbench_phonons", "--baseline", "hist_gb", "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "matbench_phonons" in error and "--data-sources" in error


def test_options_may_not_choose_the_data(tmp_path, capsys):
    options = _options(tmp_path, data={"dataset": "phonons"})
    assert main(["matbench", "matbench_phonons", "--options", str(options), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "data.dataset" in error and str(options) in error


def test_composition_only_task_is_a_one_line_error_for_a_structure_encoder(tmp_path, capsys):
    assert main(["-q", "matbench", "matbench_expt_gap", "--options", str(_options(tmp_path)), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "composition-only" in error


def test_finetune_from_a_checkpoint(fold0, tmp_path):
    """A fine-tune options file runs per fold; a source that trained on a fold's test ids is refused."""
    finetune = {"method": "heads", "read_from": str(fold0 / "fold_0" / "model.ckpt")}
    options = _options(tmp_path, finetune=finetune)
    assert main(["--threads", "1", "-q", "matbench", "matbench_phonons", "--options", str(options),
                 "--out", str(tmp_path / "same"), "--folds", "0"]) == 0
    metrics = json.loads((tmp_path / "same" / "fold_0" / "metrics.json").read_text())
    assert metrics["method"] == "heads" and metrics["test_in_pretraining"]["same_structure"] == 0
    # Fold 0's training ids hold fold 1's test ids: a fine-tune from it on fold 1 would test on them.
    assert main(["--threads", "1", "-q", "matbench", "matbench_phonons", "--options", str(options),
                 "--out", str(tmp_path / "leak"), "--folds", "1"]) == 2
    assert not (tmp_path / "leak" / "fold_1" / "metrics.json").exists()


def test_official_results_file_reads_back_with_the_packages_scores(tmp_path):
    """Predictions off by exactly 1 on every test id of every fold: the package must score MAE 1."""
    from matbench.bench import MatbenchBenchmark

    task = TASKS["matbench_phonons"]
    frame, table = load_task(task, task_file(task, DataSources(data_dir=SHARED_DATA)))
    y = dict(zip(table.ids, table.y))
    results = [FoldResult(fold, {"epochs_run": 2, "best_epoch": 1},
                          pd.DataFrame({"id": test, "y_pred": [y[i] + 1.0 for i in test]}))
               for fold, (_, test) in enumerate(fold_ids(task.name))]
    path = tmp_path / "results.json"
    write_official(task.name, frame, results, path, {"baseline": "extra_trees"})
    benchmark = MatbenchBenchmark.from_file(str(path))
    scores = benchmark.tasks_map[task.name].scores
    assert np.isclose(scores["mae"]["mean"], 1.0) and np.isclose(scores["mae"]["std"], 0.0)
    assert benchmark.user_metadata["options"] == {"baseline": "extra_trees"}


@pytest.fixture(scope="module")
def tiny_phonons(tmp_path_factory) -> Path:
    """A data-sources file whose matbench_phonons is the real file's first 40 rows (a partial copy)."""
    tmp = tmp_path_factory.mktemp("tiny")
    raw = json.loads(gzip.decompress((SHARED_DATA / "matbench_phonons.json.gz").read_bytes()))
    raw = {**raw, "index": raw["index"][:40], "data": raw["data"][:40]}
    (tmp / "data").mkdir()
    (tmp / "data" / "matbench_phonons.json.gz").write_bytes(gzip.compress(json.dumps(raw).encode()))
    sources = tmp / "sources.yaml"
    sources.write_text(yaml.safe_dump({"data_dir": str(tmp / "data")}))
    return sources


def _baseline(sources: Path, out: Path, *folds: int, model: str = "extra_trees") -> int:
    return main(["--threads", "1", "-q", "matbench", "matbench_phonons", "--baseline", model, "--data-sources",
                 str(sources), "--out", str(out), "--folds", *map(str, folds)])


def test_baseline_trains_on_all_the_folds_train_ids_and_tests_on_its_test_ids(tiny_phonons, tmp_path):
    out = tmp_path / "out"
    assert _baseline(tiny_phonons, out, 0, 3) == 0
    present = set(json.loads(gzip.decompress((tiny_phonons.parent / "data" / "matbench_phonons.json.gz")
                                             .read_bytes()))["index"])
    for fold in (0, 3):
        train, test = _package_folds("matbench_phonons")[fold]
        split = Split.from_json(out / f"fold_{fold}" / "split.json")
        assert sorted(split.train) == sorted(set(train) & present) and split.val == ()
        result = FoldResult.read(fold, out / f"fold_{fold}")
        assert sorted(result.predictions["id"]) == sorted(set(test) & present)
        metrics = result.metrics
        assert metrics["method"] == "extra_trees" and metrics["seed"] == fold and metrics["n_val"] == 0
        assert metrics["n_features"] > 100 and metrics["epochs_run"] is None
        errors = (result.predictions["y_pred"] - result.predictions["y_true"]).abs()
        assert np.isclose(metrics["test"]["mae"], errors.mean())
        assert result.predictions["y_pred"].nunique() > 1  # a fitted model, not a constant
    markdown = (out / "results.md").read_text()
    assert "partial: 40 of 1,265 rows" in markdown and "Baseline `extra_trees`" in markdown
    assert "| 0 |" in markdown and "| – |" in markdown and "mean ± std (n = 2 folds)" in markdown
    assert not (out / "results.json").exists()


def test_baseline_rerun_keeps_finished_folds_and_reads_the_features_from_the_cache(tiny_phonons, tmp_path):
    out = tmp_path / "out"
    assert _baseline(tiny_phonons, out, 0, model="hist_gb") == 0
    finished = os.stat(out / "fold_0" / "metrics.json").st_mtime_ns
    assert _baseline(tiny_phonons, out, 0, 1, model="hist_gb") == 0
    assert os.stat(out / "fold_0" / "metrics.json").st_mtime_ns == finished
    assert FoldResult.read(1, out / "fold_1").metrics["features"]["cached"]
    assert [fold["fold"] for fold in json.loads((out / "folds.json").read_text())] == [0, 1]


def test_baseline_with_an_options_file_is_a_one_line_error(tmp_path, capsys):
    options = _options(tmp_path)
    assert main(["matbench", "matbench_phonons", "--baseline", "hist_gb", "--options", str(options),
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--baseline" in error and str(options) in error


def test_source_features_without_a_baseline_is_a_one_line_error(tmp_path, capsys):
    assert main(["matbench", "matbench_phonons", "--source-features", "cgcnn-mp:band-gap",
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--source-features" in error


def test_seed_override_and_a_seed_ensemble_of_two_results_directories(fold0, tmp_path):
    """`--seed` reseeds every fold (fold K: seed + K); bench/matbench_ensemble.py scores the members' mean."""
    import importlib.util

    out = tmp_path / "seed7"
    assert main(["--threads", "1", "-q", "matbench", "matbench_phonons", "--options", str(_options(tmp_path)),
                 "--out", str(out), "--folds", "0", "--seed", "7"]) == 0
    assert yaml.safe_load((out / "fold_0" / "config.yaml").read_text())["seed"] == 7
    spec = importlib.util.spec_from_file_location("matbench_ensemble", Path(__file__).parents[1] / "bench" / "matbench_ensemble.py")
    ensemble = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ensemble)
    scores = ensemble.fold_scores([fold0, out])
    a, b = (FoldResult.read(0, d / "fold_0").predictions.set_index("id").sort_index() for d in (fold0, out))
    assert not np.allclose(a["y_pred"], b["y_pred"])  # another seed, another model
    expected = ((a["y_pred"] + b["y_pred"]) / 2 - a["y_true"]).abs().mean()
    assert list(scores["fold"]) == [0] and scores["ensemble_mae"][0] == pytest.approx(expected)
    assert scores["members_mae"][0] == pytest.approx([a.y_pred.sub(a.y_true).abs().mean(), b.y_pred.sub(b.y_true).abs().mean()])
