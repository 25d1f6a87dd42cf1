"""Label selection by ensemble deviation (DP-GEN's simplify step): picks, `select` on user files, the
simulation (no test or labelled id is ever picked; resumable; DP-GEN's stop rule) and its report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mattransfer.cli import main
from mattransfer.data.splits import fixed_test_ids
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError, DataError
from mattransfer.finetune import METHODS
from mattransfer.report.label_selection import first_crossing
from mattransfer.selection import (
    SelectionSettings, ensemble_predictions, load_select_config, member_split, pick_candidates, select, shared_latent,
    train_ensemble,
)
from mattransfer.study.label_selection import load_simulation_spec, read_records, record_path, simulate
from mattransfer.study.layout import StudyDir, StudyLocked

TINY = {"max_epochs": 4, "patience": 4, "batch_size": 16, "lr": 5e-3}


def _settings(**values) -> SelectionSettings:
    return SelectionSettings.model_validate({"training": TINY, **values})


# ------------------------------------------------------------------ picks


@pytest.mark.parametrize("lo, hi, max_pick", [(0.2, 0.6, 100), (0.2, 0.6, 3), (0.0, 0.1, 100), (0.9, 5.0, 2)])
def test_picks_lie_between_the_trust_levels_and_respect_max_pick(lo, hi, max_pick):
    deviation = np.linspace(0, 1, 51)
    ids = [f"s{k}" for k in range(51)]
    picks = pick_candidates(ids, deviation, _settings(lo=lo, hi=hi, max_pick=max_pick), np.random.default_rng(0))
    between = {i for i, d in zip(ids, deviation) if lo < d < hi}
    assert picks.n_candidates == len(between)
    assert set(picks.ids) <= between and len(picks.ids) == min(max_pick, len(between))
    assert len(set(picks.ids)) == len(picks.ids)


def test_quantile_trust_levels_resolve_on_the_pool():
    deviation = np.arange(100, dtype=float)
    picks = pick_candidates([str(k) for k in range(100)], deviation, _settings(levels="quantile", lo=0.8, hi=1.0),
                            np.random.default_rng(0))
    assert picks.lo == pytest.approx(79.2) and picks.hi == 99.0
    assert {int(i) for i in picks.ids} == set(range(80, 99))


def test_zero_deviation_is_never_a_candidate():
    picks = pick_candidates(["a", "b"], np.zeros(2), _settings(), np.random.default_rng(0))
    assert picks.ids == [] and picks.n_candidates == 0


def test_member_splits_differ_by_seed_and_need_two_samples():
    labelled = [str(k) for k in range(20)]
    a, b = member_split(labelled, 0, 0.1), member_split(labelled, 1, 0.1)
    assert set(a.train) | set(a.val) == set(labelled) and len(a.val) == 2 and a.val != b.val
    with pytest.raises(DataError, match="at least 2 labelled"):
        member_split(["x"], 0, 0.1)


def test_last_layer_trains_only_the_heads_output_layer(pretrained, finetune):
    model, before = finetune(pretrained, "last_layer")
    after = model.state_dict()
    last = f"head.{len(model.head) - 1}."
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed - {"target_mean", "target_std"} == {last + "weight", last + "bias"}  # standardisation is set per run


def test_shared_latent_gives_the_same_members_as_encoding_per_member(pretrained, volume_data, volume_split):
    settings = _settings(ensemble={"size": 2})
    device = torch.device("cpu")
    labelled, pool = list(volume_split.train), list(volume_split.val)
    latent = shared_latent(pretrained, settings, volume_data, device)
    assert latent is not None and latent.shape[0] == len(volume_data.inputs)
    shared, _ = train_ensemble(pretrained, volume_data, labelled, settings, 0, device, latent=latent)
    alone, _ = train_ensemble(pretrained, volume_data, labelled, settings, 0, device)
    np.testing.assert_allclose(ensemble_predictions(shared, volume_data, pool, device, latent),
                               ensemble_predictions(alone, volume_data, pool, device), rtol=1e-4, atol=1e-5)
    full = _settings(ensemble={"size": 2, "method": "full"})
    assert shared_latent(pretrained, full, volume_data, device) is None  # the encoder trains: nothing to share


# ------------------------------------------------------------------ options


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_select_options_errors_name_the_key(tmp_path):
    base = {"read_from": "m.ckpt", "pool": {"read_from": "pool.csv"}}
    for bad, key in [({"ensemble": {"sizee": 3}}, "'ensemble.sizee'"), ({"max_pik": 3}, "'max_pik'"),
                     ({"ensemble": {"method": "nope"}}, "'ensemble.method'"), ({"lo": -1}, "'lo'"),
                     ({"ensemble": {"size": 2, "seeds": [1]}}, "'ensemble'"), ({"pool": {}}, "'pool.read_from'")]:
        with pytest.raises(ConfigError) as error:
            load_select_config(_write(tmp_path / "o.yaml", {**base, **bad}))
        assert key in str(error.value), (bad, str(error.value))


def test_every_registered_method_is_a_valid_member_method():
    for method in METHODS:
        _settings(ensemble={"method": method, "config": {"layers": 1} if method == "freeze" else {}})


# ------------------------------------------------------------------ select on user files


def _csv(table: PropertyTable, ids: list[str], path: Path, target: str | None) -> Path:
    rows = {"id": ids, "structure": [table.structures[table.ids.index(i)].to(fmt="cif") for i in ids]}
    if target:
        rows[target] = [float(table.y[table.ids.index(i)]) for i in ids]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


@pytest.fixture
def user_files(tmp_path, demo_volume):
    ids = demo_volume.ids
    labelled = _csv(demo_volume, ids[:30], tmp_path / "labelled.csv", "volume")
    pool = _csv(demo_volume, ids[25:85], tmp_path / "pool.csv", None)  # 5 of them labelled already
    return labelled, pool, ids


def _options(tmp_path, pretrained_ckpt, labelled, pool, **values) -> Path:
    return _write(tmp_path / "select.yaml", {
        "read_from": str(pretrained_ckpt), "pool": {"read_from": str(pool)}, "training": TINY,
        "output_dir": str(tmp_path / "run"), **({"labelled": {"read_from": str(labelled), "target": "volume",
                                                                "unit": "A^3/atom"}} if labelled else {}), **values})


def test_select_picks_pool_structures_not_yet_labelled(tmp_path, pretrained_ckpt, user_files):
    labelled, pool, ids = user_files
    config = load_select_config(_options(tmp_path, pretrained_ckpt, labelled, pool, max_pick=7))
    selected = select(config)
    assert len(selected) == 7
    assert set(selected["id"]) <= set(ids[30:85])  # never an id of the labelled file
    assert selected["deviation"].is_monotonic_decreasing and (selected["deviation"] > 0).all()
    run = tmp_path / "run"
    on_disk = pd.read_csv(run / "selected.csv")
    assert list(on_disk.columns) == ["id", "formula", "deviation", "mean_prediction"] and len(on_disk) == 7
    summary = json.loads((run / "selection.json").read_text())
    assert summary["pool"] == 55 and summary["picked"] == 7 and summary["labelled"] == 30
    for k in range(4):
        assert (run / "members" / str(k) / "model.ckpt").exists()
    assert len(pd.read_csv(run / "pool.csv")) == 55 and (run / "config.yaml").exists()


def test_select_with_nothing_labelled_picks_init_pick_at_random(tmp_path, pretrained_ckpt, user_files):
    _, pool, ids = user_files
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for labelled in (None, empty):
        selected = select(load_select_config(_options(tmp_path, pretrained_ckpt, labelled, pool, init_pick=9)))
        assert len(selected) == 9 and set(selected["id"]) <= set(ids[25:85])
        assert selected["deviation"].isna().all()


def test_identical_members_pick_nothing(tmp_path, pretrained_ckpt, user_files):
    labelled, pool, _ = user_files
    config = load_select_config(_options(tmp_path, pretrained_ckpt, labelled, pool,
                                         ensemble={"size": 3, "seeds": [5, 5, 5]}))
    assert len(select(config)) == 0
    assert (pd.read_csv(tmp_path / "run" / "pool.csv")["deviation"] == 0).all()
    assert json.loads((tmp_path / "run" / "selection.json").read_text())["stop"] is True


def test_python_api_select_takes_a_dict(tmp_path, pretrained_ckpt, user_files):
    import mattransfer

    labelled, pool, ids = user_files
    options = yaml.safe_load(_options(tmp_path, pretrained_ckpt, labelled, pool, max_pick=4).read_text())
    picks = mattransfer.select(options)
    assert len(picks) == 4 and set(picks["id"]) <= set(ids[30:85])
    with pytest.raises(ConfigError, match="'max_pik'"):
        mattransfer.select({**options, "max_pik": 4})


def test_select_cli_prints_the_picks(tmp_path, pretrained_ckpt, user_files, capsys):
    labelled, pool, _ = user_files
    assert main(["-q", "select", str(_options(tmp_path, pretrained_ckpt, labelled, pool, max_pick=3))]) == 0
    out = capsys.readouterr().out
    assert "deviation" in out and "3 picked" in out
    assert main(["-q", "select", "simulate"]) == 2
    assert "usage" in capsys.readouterr().err


# ------------------------------------------------------------------ simulation


def _spec(tmp_path, pretrained_ckpt, **values) -> Path:
    return _write(tmp_path / "sim.yaml", {
        "targets": [{"dataset": "demo_volume", "read_from": str(pretrained_ckpt)}], "seeds": [0, 1], "budget": 60,
        "selection": {"training": TINY, "init_pick": 20, "max_pick": 20, "lo": 0.0}, **values})


def test_simulation_never_picks_test_or_labelled_ids_and_resumes(tmp_path, pretrained_ckpt, demo_volume):
    spec = load_simulation_spec(_spec(tmp_path, pretrained_ckpt))
    out = tmp_path / "sim"
    results = simulate(spec, out)
    test = set(fixed_test_ids(demo_volume.ids))
    records = read_records(out)
    for r in records:
        labelled, picked = set(r["labelled"]), set(r["picked"])
        assert not (picked & test) and not (labelled & test) and not (picked & labelled)
        assert not (set(r["pool_ids"]) & (test | labelled))
        assert r["n_test"] == len(test) and r["test_in_pretraining"] == 0  # same ids, same fixed test set
    # the same first labels for both strategies, and a budget that ends every chain at 60
    first = {(r["strategy"], r["seed"]): r["labelled"] for r in records if r["iteration"] == 0}
    assert first[("deviation", 0)] == first[("random", 0)] != first[("deviation", 1)]
    ends = results.groupby(["strategy", "seed"]).last()
    assert (ends["n_labelled"] == 60).all() and (ends["stop"] == "budget").all()
    # a killed run resumes: drop the last iteration of one chain and rerun
    last = record_path(out, "demo_volume", "deviation", 1, 2)
    before = json.loads(last.read_text())
    last.unlink()
    again = simulate(spec, out)
    assert json.loads(last.read_text())["picked"] == before["picked"] and len(again) == len(results)


def test_simulation_directory_has_one_writer(tmp_path, pretrained_ckpt):
    spec = load_simulation_spec(_spec(tmp_path, pretrained_ckpt))
    with StudyDir(tmp_path / "sim").lock():
        with pytest.raises(StudyLocked, match="another run is writing"):
            simulate(spec, tmp_path / "sim")


def test_simulation_with_identical_members_stops_at_once(tmp_path, pretrained_ckpt):
    spec = load_simulation_spec(_spec(tmp_path, pretrained_ckpt, seeds=[0], strategies=["deviation"], selection={
        "training": TINY, "init_pick": 20, "ensemble": {"size": 2, "seeds": [3, 3]}}))
    results = simulate(spec, tmp_path / "sim")
    assert len(results) == 1 and results["stop"].iloc[0] == "no candidates"
    assert results["pool_deviation_max"].iloc[0] == 0


def test_simulation_spec_errors_name_the_key(tmp_path, pretrained_ckpt):
    with pytest.raises(ConfigError, match="'selection.max_pik'"):
        load_simulation_spec(_spec(tmp_path, pretrained_ckpt, selection={"max_pik": 3}))
    with pytest.raises(ConfigError, match="'targets.0.lo'"):
        load_simulation_spec(_spec(tmp_path, pretrained_ckpt, targets=[{"dataset": "x", "read_from": "m", "lo": -1}]))


def test_simulate_cli_writes_the_report(tmp_path, pretrained_ckpt):
    spec = _spec(tmp_path, pretrained_ckpt, seeds=[0, 1], budget=40)
    assert main(["-q", "select", "simulate", str(spec), "--out", str(tmp_path / "sim"),
                 "--report-dir", str(tmp_path / "report")]) == 0
    report = tmp_path / "report"
    text = (report / "report.md").read_text()
    assert "Labels to match random choice" in text and "n_test" in text and f"select simulate {spec}" in text
    assert "Pre-trained model" in text  # its metrics.json is copied beside the report
    for name in ("efficiency.png", "calibration.png", "results.csv", "calibration.csv", "spearman.csv", "paired.csv",
                 f"pretrained-{pretrained_ckpt.parent.name}.json"):
        assert (report / name).stat().st_size > 0
    assert set(pd.read_csv(report / "results.csv")["strategy"]) == {"deviation", "random"}


def test_first_crossing_interpolates():
    x, y = np.array([100, 200, 300]), np.array([10.0, 6.0, 4.0])
    assert first_crossing(x, y, 8.0) == 150 and first_crossing(x, y, 11) == 100
    assert np.isnan(first_crossing(x, y, 3.0))
