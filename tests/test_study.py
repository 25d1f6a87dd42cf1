"""The study engine: spec expansion, resumable execution (local processes and Dask), failures,
the results table, Part 2's target choice and Part 4's structure-biased pre-training."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure

from mattransfer.data.registry import DataSources
from mattransfer.data.symmetry import BRAVAIS, bravais_lattice
from mattransfer.errors import ConfigError
from mattransfer.finetune import param_groups
from mattransfer.graphs.build import GraphSettings
from mattransfer.models.encoders.cgcnn import CGCNN
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.study import (
    COLUMNS, PRESETS, StudySpec, load_spec, pick_part2_targets, run_study, study_status, transfer_gain, write_preset,
)
from mattransfer.graphs.build import GraphSettings, RadiusGraph
from mattransfer.study.data import PreparedData, _input_store
from mattransfer.study.execute import _StudyRun
from mattransfer.study.layout import StudyDir
from mattransfer.config import config_from_dict
from mattransfer.training.run import run
from mattransfer.study.tasks import Planner
from mattransfer.training.job import train_and_test
from mattransfer.training.objectives import AuxiliaryClassification
from mattransfer.training.trainer import TrainingOptions

TINY_TRAINING = {"max_epochs": 3, "patience": 3, "batch_size": 16, "lr": 5e-3}
TINY = {
    "datasets": ["demo_energy", "demo_volume"],
    "seeds": [0],
    "pretrain_cap": 40,
    "finetune_sizes": [12, 24],
    "device": "cpu",
    "graphs": {"cutoff": 5.0, "max_neighbors": 8},
    "model": {"encoder": {"name": "cgcnn", "hidden": 8, "n_layers": 1, "n_gaussians": 8}, "head": {"hidden": [8]}},
    "pretrain": TINY_TRAINING,
    "finetune": TINY_TRAINING,
    "part1": {"methods": ["heads"]},
    "part2": {"enabled": False},
    "part3": {"enabled": False},
    # λ = 0 is Part 1's demo_energy pre-training; λ = 0.5 adds one pre-training and one fine-tune.
    "part4": {"source": "demo_energy", "target": "demo_volume", "lambdas": [0.0, 0.5], "pretrain_size": 40,
              "methods": ["heads"], "finetune_sizes": [12]},
}
TINY_TASKS = 2 + 2 * 1 * 2 * 1 + 2 * 2 + 2 * 2 * 2 + 2  # pretrains + transfer fine-tunes + scratch + feature baselines + Part 4's new


def spec(**changes) -> StudySpec:
    return StudySpec.model_validate({**TINY, **changes})


# Spec


def test_presets_load_and_copy(tmp_path):
    assert set(PRESETS) == {"paper", "quick", "dft-to-expt"}
    paper = load_spec("paper")
    assert paper.datasets == ["gvrh", "phonons", "eform", "bandgap", "expt_gap", "dielectric", "piezo"]
    assert paper.seeds == [0, 1, 2] and paper.pretrain_cap == 941 and paper.finetune_sizes == [10, 100, 200, 500, 800]
    assert paper.pretrain.patience == paper.finetune.patience == 50
    copy = write_preset("quick", tmp_path / "mine.yaml")
    assert load_spec(copy) == load_spec("quick")
    with pytest.raises(ConfigError, match="exists"):
        write_preset("quick", copy)


@pytest.mark.parametrize("changes, key", [
    ({"part3": {"pairs": [["demo_energy", "demo_volume"]], "bogus": 1}}, "part3.bogus"),
    ({"part1": {"methods": {"freeze": {"layers": -1}}}}, "part1.methods"),
    ({"part1": {"methods": ["scratch"]}}, "part1.methods"),
    ({"datasets": ["demo_energy", "nope"]}, "datasets"),
    ({"part3": {"pairs": [["demo_energy", "gvrh"]]}}, "part3.pairs"),
])
def test_spec_errors_name_the_key(tmp_path, changes, key):
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps({**TINY, **changes}))  # JSON is YAML
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert key in str(info.value)


# Expansion into tasks (no training): the paper preset over the real datasets' pool sizes


POOLS = {
    "gvrh": 8823, "phonons": 1138, "eform": 33063, "bandgap": 33063, "expt_gap": 2205, "dielectric": 950, "piezo": 846,
}


def planner(study: StudySpec) -> Planner:
    data = {k: PreparedData(k, "y", "u", f"fp-{k}", round(p / 0.9), p, Path("/nowhere"), RadiusGraph(GraphSettings())) for k, p in POOLS.items()}
    return Planner(study, data)


def test_paper_task_counts_per_part():
    paper = load_spec("paper")
    plan = planner(paper).plan()
    n, k, s = len(paper.seeds), len(paper.datasets), len(paper.finetune_sizes)
    m1, p3, m3 = len(paper.part1.methods), paper.part3.pairs, paper.part3.methods
    lambdas, m4 = len(paper.part4.lambdas), len(paper.part4.methods)

    b = len(paper.part1.baselines)
    part1 = n * (k + k * (k - 1) * s * m1 + k * s + k * s * b)  # pre-trainings, transfer fine-tunes, scratch, baselines
    sources3, targets3 = {a for a, _ in p3}, {b for _, b in p3}
    n3 = len(paper.part3.seeds)  # Part 3 has seeds of its own: five
    per_seed3 = len(sources3) + len(p3) * s * len(m3) + len(targets3) * s
    part3 = n3 * per_seed3
    part4 = n * (lambdas + lambdas * s * m4 + s)
    assert [len(plan.in_part(p)) for p in (1, 3, 4)] == [part1, part3, part4] == [1596, 365, 147]
    assert n3 == 5 and set(paper.seeds) < set(paper.part3.seeds)

    # Shared tasks run once: Part 3's full/heads and Part 4's λ = 0 runs of the study's seeds are Part 1 tasks.
    new3 = n * len(p3) * s * len(set(m3) - set(paper.part1.methods)) + (n3 - n) * per_seed3
    new4 = n * (lambdas - 1) * (1 + s * m4)
    part2 = n * len(paper.part2.sources) * 4  # pre-trainings only: 50k and 100k cap to one (the fine-tunes come later)
    assert len(plan.in_part(2)) == part2
    assert len(plan) == part1 + new3 + new4 + part2
    bandgap_pretrains = [t for t in plan if t.kind == "pretrain" and t.dataset == "bandgap" and t.size == 941 and not t.aux_lambda]
    assert len(bandgap_pretrains) == n3
    assert [t.parts for t in sorted(bandgap_pretrains, key=lambda t: t.seed)] == [{1, 3, 4}] * n + [{3}] * (n3 - n)

    # Part 1 pre-training is capped at piezo's pool, and the cap is recorded.
    piezo = next(t for t in plan if t.kind == "pretrain" and t.dataset == "piezo")
    assert piezo.size == 846
    assert piezo.notes == {"pretrain_size 941 capped at 846 (piezo: samples outside the test set)"}


def test_part2_expansion_caps_and_dedupes():
    paper = load_spec("paper")
    plan_ = planner(paper)
    plan = plan_.plan()
    # The pre-trainings are planned at once (they need no targets); the fine-tunes once targets are picked.
    pretrains = plan.in_part(2)
    assert {t.kind for t in pretrains} == {"pretrain"}
    before = len(plan)
    paper.part2.plan_targets(plan_, plan, {"eform": ["gvrh", "piezo"], "bandgap": ["phonons", "gvrh"]})
    part2 = plan.in_part(2)
    assert [t for t in part2 if t.kind == "pretrain"] == pretrains
    # 50,000 and 100,000 both cap at the 33,063-sample pool: one task, both caps noted.
    assert sorted({t.size for t in pretrains}) == [1000, 5000, 10000, 33063]
    assert len(pretrains) == 3 * 2 * 4
    capped = next(t for t in pretrains if t.size == 33063)
    assert len(capped.notes) == 2
    transfer = [t for t in part2 if t.kind == "finetune" and t.method != "scratch"]
    scratch = [t for t in part2 if t.method == "scratch"]
    assert len(transfer) == 3 * 2 * 4 * 2 and {t.method for t in transfer} == {"full"}
    assert len(scratch) == 3 * 3  # gvrh, piezo, phonons at 900 (piezo capped at 846)
    assert {t.size for t in scratch} == {900, 846}
    assert len(plan) == before + len(part2) - len(pretrains)


def test_ready_tasks_go_part_by_part_with_part2_last(tmp_path):
    paper = load_spec("paper")
    run = _StudyRun(paper, StudyDir(tmp_path), planner(paper).data, started=0.0)
    ready = run._ready()  # nothing done: the pre-trainings and the scratch baselines
    parts = [min(t.parts) for t in ready]
    assert parts == sorted(parts, key=lambda p: (p == 2, p)) and parts[-1] == 2
    assert ready[0].kind == "pretrain" and ready[0].size == 941
    part2 = [t.size for t in ready if t.parts == {2}]
    assert part2 == sorted(part2, reverse=True) and part2[0] == 33063
    part1_runs = [t.seed for t in ready if t.parts == {1} and t.kind != "pretrain"]
    assert len(set(part1_runs)) > 1 and part1_runs == sorted(part1_runs)  # seed by seed


def test_hash_changes_with_what_determines_a_task():
    base = planner(load_spec("paper"))
    task = base.pretrain("gvrh", 941, 0)
    # The paper preset spells out the defaults: equal settings, however written, are one task.
    assert planner(StudySpec(datasets=list(POOLS))).pretrain("gvrh", 941, 0).hash == task.hash
    # Execution settings do not change what a task computes (beyond float tolerance): the same task.
    executed = planner(load_spec("paper").model_copy(update={"compile": False, "device": "cpu"}))
    assert executed.pretrain("gvrh", 941, 0).hash == task.hash
    assert base.pretrain("gvrh", 941, 1).hash != task.hash
    assert base.pretrain("gvrh", 941, 0, aux_lambda=0.1).hash != task.hash
    other_lr = planner(load_spec("paper").model_copy(update={"pretrain": TrainingOptions(lr=1e-2)}))
    assert other_lr.pretrain("gvrh", 941, 0).hash != task.hash
    finetune = base.finetune(task, "phonons", 100, 0, "heads", {})
    assert base.finetune(base.pretrain("gvrh", 500, 0), "phonons", 100, 0, "heads", {}).hash != finetune.hash
    assert base.scratch("phonons", 100, 0).hash != finetune.hash


# Gains and Part 2's choice


def test_transfer_gain_and_part2_pick():
    rows = [
        # part, method, source, target, size, seed, mae
        (1, "scratch", None, "a", 10, 0, 2.0), (1, "scratch", None, "b", 10, 0, 4.0),
        (1, "scratch", None, "c", 10, 0, 1.0),
        (1, "full", "s", "a", 10, 0, 1.0), (1, "full", "s", "b", 10, 0, 5.0), (1, "full", "s", "c", 10, 0, 0.9),
        (1, "heads", "s", "b", 10, 0, 1.0),
    ]
    frame = pd.DataFrame([
        {"part": p, "kind": "finetune", "method": m, "source": src, "target": t, "finetune_size": n, "seed": sd,
         "test_mae": mae, "status": "done", "task_hash": f"h{i}"}
        for i, (p, m, src, t, n, sd, mae) in enumerate(rows)
    ])
    gains = transfer_gain(frame).set_index(["method", "target"])["gain"]
    assert gains[("full", "a")] == pytest.approx(0.5)
    assert gains[("full", "b")] == pytest.approx(-0.25)
    assert gains[("heads", "b")] == pytest.approx(0.75)
    picks = pick_part2_targets(frame, ["s"], "full")
    assert (picks["s"]["best"], picks["s"]["worst"]) == ("a", "b")


# Bravais lattices


def test_bravais_lattices_of_known_structures():
    fcc_cu = Structure(Lattice.cubic(3.61), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    bcc_fe = Structure(Lattice.cubic(2.87), ["Fe"] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])
    hcp_mg = Structure(Lattice.hexagonal(3.21, 5.21), ["Mg"] * 2, [[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    tetragonal = Structure(Lattice.tetragonal(3.0, 4.0), ["Sn"], [[0, 0, 0]])
    symbols = [bravais_lattice(s) for s in (fcc_cu, bcc_fe, hcp_mg, rock_salt, tetragonal)]
    assert symbols == ["cF", "cI", "hP", "cF", "tP"]
    assert len(BRAVAIS) == 14


# Auxiliary loss


def test_objective_of_weight_zero_is_plain_training(volume_data, volume_split, graph_settings):
    config = ModelConfig(**TINY["model"])
    training = TrainingOptions(max_epochs=2, patience=2, batch_size=16)
    labels = torch.randint(0, len(BRAVAIS), (len(volume_data.inputs),))

    def trained(weight: float | None) -> TransferModel:
        torch.manual_seed(0)
        model = TransferModel(config, graph_settings)
        groups = param_groups(model, None, training.lr)
        objective = None
        if weight is not None:
            objective = AuxiliaryClassification(labels, len(BRAVAIS), weight, model.encoder.out_dim, config.head)
            groups.append(objective.param_group(training.lr))
        train_and_test(model, volume_data, volume_split, training, groups, seed=0, device=torch.device("cpu"),
                       progress=False, objective=objective)
        return model

    plain, zero, biased = trained(None), trained(0.0), trained(1.0)
    for name, value in plain.encoder.state_dict().items():
        assert torch.equal(value, zero.encoder.state_dict()[name]), name
    assert not torch.equal(plain.encoder.layers[0].lin_f.weight, biased.encoder.layers[0].lin_f.weight)


def test_old_checkpoints_with_a_bravais_head_still_load(tmp_path):
    """Pre-trainings saved before objectives left the model kept their classifier: it is dropped on load."""
    model = TransferModel(ModelConfig(**TINY["model"]), GraphSettings(**TINY["graphs"]))
    model.save(tmp_path / "plain.ckpt")
    checkpoint = torch.load(tmp_path / "plain.ckpt", weights_only=True)
    checkpoint["state_dict"]["aux_head.0.weight"] = torch.zeros(3, 3)
    checkpoint["aux_classes"] = 14
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = TransferModel.load(tmp_path / "old.ckpt")
    assert not any(name.startswith("aux_head") for name in loaded.state_dict())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


# Running studies


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny study, run once with two local worker processes."""
    root = tmp_path_factory.mktemp("study") / "tiny"
    return root, run_study(spec(), root, workers=2, progress=False)


def copy_of(tiny_study, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_study[0], tmp_path / "copy"))


def summary_hashes(root: Path) -> list[str]:
    return [t["hash"] for t in json.loads((root / "plan.json").read_text())]


def results(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "results.parquet")


def test_study_runs_every_task(tiny_study):
    root, summary = tiny_study
    assert (summary["tasks"], summary["done"], summary["ran"], summary["failed"]) == (TINY_TASKS,) * 3 + (0,)
    assert summary["parts"][1]["tasks"] == 2 + 4 + 4 + 8 and summary["parts"][4]["tasks"] == 2 + 2 + 1
    assert study_status(root)["done"] == TINY_TASKS
    assert (root / "study.yaml").exists() and (root / "splits" / "demo_volume_test.json").exists()
    assert not pd.read_csv(root / "results.csv").empty


def test_study_graphs_are_the_cache_file_not_a_copy(tiny_study):
    """Workers read the study directory's graphs, a hard link to the graph cache: no second copy on disk."""
    root, _ = tiny_study
    study_graphs = sorted((root / "data").glob("*/inputs.pt"))
    cache_graphs = sorted((Path(os.environ["MATTRANSFER_CACHE"]) / "graphs").glob("*.pt"))
    assert len(study_graphs) == 2
    assert all(any(os.path.samefile(g, c) for c in cache_graphs) for g in study_graphs)
    # demo_energy and demo_volume are properties of the same crystals: one file, loaded once per worker.
    assert os.path.samefile(*study_graphs)
    featurizer = RadiusGraph(GraphSettings())
    assert _input_store(study_graphs[0], featurizer) is _input_store(study_graphs[1], featurizer)


def test_results_table(tiny_study):
    root, _ = tiny_study
    table = results(root)
    assert list(table.columns) == COLUMNS
    assert len(table) == sum(len(t["parts"]) for t in json.loads((root / "plan.json").read_text()))
    assert set(table["status"]) == {"done"}
    pretrain = table[table["kind"] == "pretrain"]
    assert (pretrain["source"] == pretrain["target"]).all() and pretrain["finetune_size"].isna().all()
    assert set(pretrain["method"]) == {"pretrain"}
    scratch = table[table["method"] == "scratch"]
    assert scratch["source"].isna().all() and scratch["pretrain_size"].isna().all()
    assert set(table.loc[table["part"] == 4, "aux_lambda"].dropna()) == {0.0, 0.5}
    # n_train + n_val is the subset size; the test set is the dataset's fixed one.
    finetunes = table[table["kind"] == "finetune"]
    assert ((finetunes["n_train"] + finetunes["n_val"]) == finetunes["finetune_size"]).all()
    test_ids = json.loads((root / "splits" / "demo_volume_test.json").read_text())["ids"]
    assert set(table.loc[table["target"] == "demo_volume", "n_test"]) == {len(test_ids)}


def test_scratch_trains_on_the_transfer_subset(tiny_study):
    root, _ = tiny_study
    table = results(root)
    cell = table[(table["target"] == "demo_volume") & (table["finetune_size"] == 24) & (table["part"] == 1)]
    splits = [json.loads((root / "tasks" / h / "split.json").read_text()) for h in cell["task_hash"]]
    assert len(splits) == 4 and all(split == splits[0] for split in splits)  # heads, scratch, 2 feature baselines


def test_feature_baseline_rows_train_on_the_fine_tune_subset_never_on_test_ids(tiny_study):
    root, _ = tiny_study
    table = results(root)
    rows = table[table["kind"] == "baseline"]
    assert set(rows["part"]) == {1} and set(rows["status"]) == {"done"} and rows["source"].isna().all()
    assert sorted(set(zip(rows["target"], rows["finetune_size"], rows["method"]))) == [
        (t, n, m) for t in ("demo_energy", "demo_volume") for n in (12, 24) for m in ("extra_trees", "hist_gb")]
    assert ((rows["n_train"] == rows["finetune_size"]) & (rows["n_val"] == 0)).all()  # train + val ids, all n
    assert (rows["test_mae"] > 0).all()
    for row in rows.itertuples():
        split = json.loads((root / "tasks" / row.task_hash / "split.json").read_text())
        test_ids = json.loads((root / "splits" / f"{row.target}_test.json").read_text())["ids"]
        assert split["test"] == test_ids and row.n_test == len(test_ids)
        assert not set(split["train"] + split["val"]) & set(test_ids)
    scratch = table[(table["method"] == "scratch") & (table["part"] == 1)]
    assert len(scratch.merge(rows, on=["target", "finetune_size", "seed", "n_test"])) == len(rows)


def test_transferability_scores_of_every_part1_transfer_cell(tiny_study):
    root, _ = tiny_study
    scores = pd.read_csv(root / "transferability.csv")
    table = results(root)
    cells = table[(table["part"] == 1) & (table["kind"] == "finetune") & (table["method"] != "scratch")]
    cells = set(zip(cells["source"], cells["target"], cells["finetune_size"], cells["seed"]))
    assert set(zip(scores["source"], scores["target"], scores["finetune_size"], scores["seed"])) == cells
    assert sorted(scores["score"].unique()) == ["krr_cv", "logme"] and len(scores) == 2 * len(cells)
    assert (scores["n"] == scores["finetune_size"]).all() and scores["value"].notna().all()  # train + val ids only
    assert (scores.loc[scores["score"] == "krr_cv", "value"] <= 0).all()


def test_baselines_can_be_turned_off(tmp_path):
    paper = load_spec("paper")
    off = paper.model_copy(update={"part1": paper.part1.model_copy(update={"baselines": []})})
    with_baselines, without = planner(paper).plan().in_part(1), planner(off).plan().in_part(1)
    assert len(with_baselines) - len(without) == 3 * 7 * 5 * 2
    assert not [t for t in without if t.kind == "baseline"]
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps({**TINY, "part1": {"baselines": ["ridge"]}}))
    with pytest.raises(ConfigError, match="baselines"):
        load_spec(path)


def test_part1_sources_choose_what_is_pre_trained(tmp_path):
    paper = load_spec("paper")
    one = paper.model_copy(update={"part1": paper.part1.model_copy(update={"sources": ["eform"]}),
                                   "part2": paper.part2.model_copy(update={"sources": ["eform"]})})
    tasks = planner(one).plan().in_part(1)
    assert {t.dataset for t in tasks if t.kind == "pretrain"} == {"eform"}
    transfers = [t for t in tasks if t.kind == "finetune" and t.method != "scratch"]
    assert {t.source for t in transfers} == {"eform"} and len(transfers) == 3 * 6 * 5 * 2
    # every dataset is still a target: its scratch and baseline rows stay
    assert {t.dataset for t in tasks if t.method == "scratch"} == set(paper.datasets)
    assert len([t for t in tasks if t.kind == "baseline"]) == 3 * 7 * 5 * 2

    none = one.model_copy(update={"part1": one.part1.model_copy(update={"sources": []}),
                                  "part2": one.part2.model_copy(update={"enabled": False})})
    assert {t.kind for t in planner(none).plan().in_part(1)} == {"finetune", "baseline"}
    assert all(t.source is None for t in planner(none).plan().in_part(1))

    path = tmp_path / "study.yaml"
    for part1, message in [({"sources": ["nosuch"]}, "part1.sources"),
                           ({"sources": ["demo_volume"]}, "part2.sources .*demo_energy.* not Part 1 sources")]:
        path.write_text(json.dumps({**TINY, "part1": part1, "part2": {"sources": ["demo_energy"]}}))
        with pytest.raises(ConfigError, match=message):
            load_spec(path)


def test_resume_runs_only_what_is_missing(tiny_study, tmp_path):
    root = copy_of(tiny_study, tmp_path)
    table = results(root).drop_duplicates("task_hash")
    pretrain = table[(table["kind"] == "pretrain") & (table["aux_lambda"] == 0.5)]["task_hash"]
    deleted = list(pretrain) + list(table[table["method"] == "scratch"]["task_hash"][:2])
    for task_hash in deleted:
        (root / "tasks" / task_hash / "result.json").unlink()
    assert study_status(root)["remaining"] == len(deleted)

    summary = run_study(spec(), root, workers=1, progress=False)
    assert (summary["ran"], summary["done"]) == (len(deleted), TINY_TASKS)
    assert run_study(spec(), root, workers=1, progress=False)["ran"] == 0
    # Each run left its record: the first run, the resume (exactly the deleted tasks), the no-op.
    records = [json.loads(p.read_text()) for p in sorted((root / "runs").glob("*.json"))]
    assert [sorted(r["ran_tasks"]) for r in records] == [sorted(summary_hashes(tiny_study[0])), sorted(deleted), []]
    assert [r["done"] for r in records] == [TINY_TASKS] * 3 and records[1]["workers"] == 1
    # with the code and the machine: a long training's rounding depends on the CPU's vector instructions
    assert records[1]["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert records[1]["mattransfer_version"]


def test_failing_task_is_recorded_and_others_complete(tiny_study, tmp_path):
    root = copy_of(tiny_study, tmp_path)
    # The encoder has one layer: freezing five fails at run time, in the worker.
    part3 = {"pairs": [["demo_energy", "demo_volume"]], "finetune_sizes": [12, 24],
             "methods": {"freeze": {"layers": 5}, "lora": {"rank": 2, "alpha": 4}}}
    summary = run_study(spec(part3=part3), root, workers=1, progress=False)
    assert (summary["ran"], summary["ran_failed"], summary["failed"]) == (4, 2, 2)
    assert summary["done"] == TINY_TASKS + 2

    table = results(root)
    failed = table[table["status"] == "failed"]
    assert set(failed["method"]) == {"freeze"} and failed["test_mae"].isna().all()
    assert failed["error"].str.contains("layers=5").all()
    error = json.loads((root / "tasks" / failed["task_hash"].iloc[0] / "error.json").read_text())
    assert "Traceback" in error["traceback"]
    assert (table[table["method"] == "lora"]["status"] == "done").all()


def test_part2_is_planned_from_part1_results(tiny_study, tmp_path):
    root = copy_of(tiny_study, tmp_path)
    part2 = {"sources": ["demo_energy"], "pretrain_sizes": [20, 1000], "finetune_size": 12, "method": "heads"}
    summary = run_study(spec(part2=part2), root, workers=1, progress=False)
    # demo_energy has one other dataset: best = worst = demo_volume. Its scratch run at 12 is Part 1's.
    assert summary["part2_targets"]["demo_energy"]["best"] == "demo_volume"
    assert (summary["ran"], summary["parts"][2]["tasks"]) == (4, 5)
    pretrains = results(root).query("part == 2 and kind == 'pretrain'")
    assert sorted(pretrains["pretrain_size"]) == [20, 270]
    assert pretrains["cap_note"].str.contains("1000 capped at 270").sum() == 1


def test_report_of_a_study_gives_every_cell_a_bootstrap_ci(tiny_study, tmp_path):
    """One seed, and still a CI per cell: the paired bootstrap over the tasks' test predictions."""
    from mattransfer.report import write_report

    root = copy_of(tiny_study, tmp_path)
    text = write_report(root).read_text()
    n_test = len(json.loads((root / "splits" / "demo_volume_test.json").read_text())["ids"])
    cells = pd.read_csv(root / "report" / "part1_gain_cells.csv")
    assert len(cells) == 4 and set(cells["ci_over"]) == {"test structures"}
    assert (cells["gain_low"] <= cells["gain_mean"]).all() and (cells["gain_mean"] <= cells["gain_high"]).all()
    assert set(cells.loc[cells["target"] == "demo_volume", "n_test"]) == {n_test}
    assert cells["call"].isin(["helps", "hurts", "within noise"]).all() and cells["q_value"].notna().all()
    assert "with heads: of 4 cells, 4 with a CI;" in text and "over 4 tested cells" in text
    assert "n/a (1 seed)" not in text.split("## Tasks")[0]
    assert f"(n_test {n_test})" in text or f"n_test {n_test}" in text
    if (cells["gain_mean"] < 0).any():  # negative cells are listed with their CI: "-12.3 % [-20.1, -4.0]"
        assert "% [" in text.split("### Where transfer helps")[1]


def test_dask_executor(tiny_study, tmp_path):
    from dask.distributed import LocalCluster

    root = copy_of(tiny_study, tmp_path)
    for result in (root / "tasks").glob("*/result.json"):
        result.unlink()
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        summary = run_study(spec(), root, scheduler=cluster.scheduler_address, progress=False)
    assert (summary["ran"], summary["done"]) == (TINY_TASKS, TINY_TASKS)
    np.testing.assert_allclose(  # the same seeds give the same models as the local processes did
        results(root).sort_values(["task_hash", "part"])["test_mae"].to_numpy(),
        results(tiny_study[0]).sort_values(["task_hash", "part"])["test_mae"].to_numpy(), rtol=1e-4,
    )


def test_cli_and_study_run_the_same_job_to_the_same_metrics(tiny_study, tmp_path):
    """`mattransfer train` and a study worker execute one `Job` the same way: a Bravais-biased
    pre-training and a `heads` fine-tune of it give the study's metrics exactly."""
    root, _ = tiny_study
    study, plan = StudyDir(root), json.loads((root / "plan.json").read_text())
    pretrain = next(t for t in plan if t["kind"] == "pretrain" and t["aux_lambda"] == 0.5)
    tune = next(t for t in plan if t["pretrain"] == pretrain["hash"])
    shared = {"seed": 0, "device": "cpu", "threads": 1, "graphs": TINY["graphs"], "model": TINY["model"],
              "training": TINY_TRAINING}
    threads = torch.get_num_threads()
    try:
        cli_pretrain = run(config_from_dict({
            **shared, "output_dir": str(tmp_path / "pretrain"), "objective": {"bravais_weight": 0.5},
            "data": {"dataset": pretrain["dataset"], "n_samples": pretrain["size"]}}, "test"), progress=False)
        cli_tune = run(config_from_dict({
            **shared, "output_dir": str(tmp_path / "tune"), "data": {"dataset": tune["dataset"], "n_samples": tune["size"]},
            "finetune": {"method": tune["method"], "read_from": str(study.checkpoint(pretrain["hash"])),
                         "allow_test_overlap": True, "config": tune["options"]}}, "test"), progress=False)
    finally:
        torch.set_num_threads(threads)
    for cli, task in ((cli_pretrain, pretrain), (cli_tune, tune)):
        result = study.result(task["hash"])
        # as JSON: an R² of one validation sample is NaN, which is not equal to itself
        assert json.dumps([cli[part] for part in ("train", "val", "test")]) == json.dumps([result[p] for p in ("train", "val", "test")])
        assert cli["best_epoch"] == result["best_epoch"] and cli["n_test"] == result["n_test"]


def test_a_package_model_is_a_part1_source_with_its_own_inputs(tmp_path):
    """`part1.universal` adds a package's pre-trained model as a source of every dataset: its fine-tunes
    read inputs prepared with its own featurizer, share the scratch baselines, and reach the report."""
    from mattransfer.report import write_report

    name = "cgcnn-mp:formation-energy"
    universal = spec(part1={"methods": ["heads", "full"], "universal": [name]}, part4={"enabled": False},
                     finetune_sizes=[12])
    summary = run_study(universal, tmp_path / "u", workers=1, progress=False)
    assert summary["failed"] == 0 and summary["done"] == summary["tasks"]
    table = results(tmp_path / "u")
    tuned = table[table["source"] == name]
    assert sorted(tuned["target"]) == ["demo_energy", "demo_volume"] and (tuned["status"] == "done").all()
    assert tuned["test_same_structure"].isna().all()  # what the package's model trained on is not recorded
    # its prepared inputs are its own featurizer's, for the rows Part 1 uses only
    prepared = sorted((tmp_path / "u" / "data").glob(f"demo_volume@{name}-*"))
    assert len(prepared) == 1 and json.loads((prepared[0] / "split_ids.json").read_text())
    report = write_report(tmp_path / "u").read_text()
    assert name in report
    # the report compares it with the property-specific source of each (target, method, size) cell
    section = report.split("### Universal vs property-specific pre-training")[1].split("\n### ")[0]
    assert section.count(f"| {name}: ") == 2 and "demo_energy: " in section and "demo_volume: " in section
    # and the best (source, method) of each side, whatever the method: the universal model is fine-tuned by `heads` only
    assert section.count(f"| {name} (heads): ") == 2 and section.count("| any method |") == 2
    assert "Universal vs property-specific pre-training (best of each per cell): with any method," in report
    assert "; with heads," in report and "provisional" not in report
    # a fine-tune without a result leaves the cells it is a candidate of provisional: here demo_volume's
    # "any method" cell (property `full`), not its `heads` cell
    full = table[(table["method"] == "full") & (table["target"] == "demo_volume")]["task_hash"].item()
    (tmp_path / "u" / "tasks" / full / "result.json").unlink()
    again = write_report(tmp_path / "u").read_text()
    section = again.split("### Universal vs property-specific pre-training")[1].split("\n### ")[0]
    assert section.count("| universal 0, specific 1 |") == 1
    assert "with any method, the universal model is better in" in again and "of 2 cells (1 provisional: " in again
    assert "cells (1 provisional" not in again.split("; with heads,")[1].split("\n")[0]
    with pytest.raises(ValueError, match="available: .*chgnet:0.3.0"):  # pydantic's ValidationError
        spec(part1={"universal": ["nosuch:1"]})


def v1(model: ModelConfig) -> ModelConfig:
    """``model`` with the CGCNN options of the default until session 10 (mean readout, learned element vectors,
    no atom descriptors): the computation of then. Today's defaults are another computation, with new hashes."""
    return model.model_copy(update={"encoder": {**model.encoder, **CGCNN.added_options}})

BEFORE_NEW_OPTIONS = {
    "pretrain demo_energy λ=0.5 n=40 seed 0": "105b1df0aa712151",
    "scratch demo_volume n=12 seed 0": "4cd5d67d6d2166f1",
    "heads demo_energy→demo_volume n=12 seed 0": "947e86b3de843b7a",
    "full demo_energy→demo_volume n=24 seed 0": "2590050d519bd537"
}


def test_tasks_of_studies_run_before_new_options_keep_their_hashes():
    """Options added since (head.input_norm, schedules, target transforms, clipping) at the values that compute
    what was computed before them leave a task's hash as it was: a study run before them resumes with its
    finished results. Clipping to the training range is on by default, a new computation: new hashes.
    Hashes from commit 716916f."""
    def hashes(training: dict) -> dict[str, str]:
        tiny = spec(part1={"methods": ["heads", "full"]}, pretrain={**TINY_TRAINING, **training},
                    finetune={**TINY_TRAINING, **training},
                    part3={"pairs": [["demo_energy", "demo_volume"]], "methods": ["full", "heads"], "finetune_sizes": [12]})
        tiny = tiny.model_copy(update={"model": v1(tiny.model)})
        data = {k: PreparedData(k, "y", "u", f"fp-{k}", 300, 270, Path("/nowhere"), RadiusGraph(tiny.graphs))
                for k in tiny.datasets}
        planned = {t.describe(): t.hash for t in Planner(tiny, data).plan()}
        return {k: planned[k] for k in BEFORE_NEW_OPTIONS}

    assert hashes({"clip_to_train_range": False}) == BEFORE_NEW_OPTIONS
    assert not set(hashes({}).values()) & set(BEFORE_NEW_OPTIONS.values())


# Every task of every shipped study file, as planned before the parts became plug-ins (commit 4111b01): the
# hashes, parts, descriptions and cap notes in plan order (Part 2's fine-tunes with fixed targets), by count
# and digest. A study run before resumes with every finished task.
PLANNED_BEFORE_PLUGINS = {
    "paper": (2009, "7e82827b8673a186"), "quick": (78, "af304e787b1b876c"),
    "configs/study-paper-seed0.yaml": (615, "ad287659636aba3c"),
    "configs/study-part1-timing.yaml": (532, "79172342d98a7d5d"),
    "configs/study-test-overlap.yaml": (70, "20eab95aedd5de70"),
    "configs/study-zoo-part1.yaml": (245, "5f44c99a2df2dc1d"),
    "configs/study-zoo-small.yaml": (57, "bbae3051f682497a"),
}


@pytest.mark.parametrize("name", sorted(PLANNED_BEFORE_PLUGINS))
def test_shipped_studies_plan_the_tasks_they_planned_before(name):
    study = load_spec(name if name in PRESETS else Path(__file__).parents[1] / name)
    old = {"clip_to_train_range": False}  # the computation of then (clipping came after, with new hashes)
    study = study.model_copy(update={"pretrain": study.pretrain.model_copy(update=old),
                                     "finetune": study.finetune.model_copy(update=old),
                                     "model": v1(study.model)})  # and the default encoder of then
    pools = {**POOLS, "demo_energy": 270, "demo_volume": 270, "demo_bulk": 270}
    keys = [*study.datasets, *(f"{d}@{u}" for d in study.datasets for u in study.part1.universal)]
    data = {k: PreparedData(k, "y", "u", f"fp-{k}", 1000, pools[k.split("@")[0]], Path("/nowhere"),
                            RadiusGraph(GraphSettings())) for k in keys}
    planner_ = Planner(study, data)
    plan = planner_.plan()
    if study.part2.enabled:
        study.part2.plan_targets(planner_, plan, {s: [d for d in study.datasets if d != s][:2]
                                                  for s in study.part2.sources})
    tasks = [[t.hash, sorted(t.parts), t.describe(), sorted(t.notes)] for t in plan]
    digest = hashlib.sha256(json.dumps(tasks).encode()).hexdigest()[:16]
    assert (len(tasks), digest) == PLANNED_BEFORE_PLUGINS[name]


def test_dft_to_expt_pretrains_without_the_target_test_compositions(tmp_path):
    """The DFT → experiment part on the demo data: the source is pre-trained without any composition of the
    target's fixed test set (demo_energy and demo_volume share their crystals: 138 of 300 rows go), then
    fine-tuned beside scratch; the fine-tunes record no test material in the pre-training; the report has it."""
    study = spec(part1={"enabled": False}, part4={"enabled": False},
                 dft_to_expt={"enabled": True, "source": "demo_energy", "target": "demo_volume",
                              "pretrain_size": 40, "finetune_sizes": [12], "methods": ["heads", "full"]})
    summary = run_study(study, tmp_path, workers=1, progress=False)
    assert summary["tasks"] == summary["done"] == 4 and set(summary["parts"]) == {5}
    source = "demo_energy-without-demo_volume-test"
    (prepared,) = (tmp_path / "data").glob(f"{source}-*")
    assert len(json.loads((prepared / "identities.json").read_text())["formula"]) == 162
    sources = DataSources.from_env()
    energy, volume = sources.load("demo_energy"), sources.load("demo_volume")
    test = set(json.loads((tmp_path / "splits" / "demo_volume_test.json").read_text())["ids"])
    test_formulas = {f for i, f in zip(volume.ids, volume.identities()["formula"]) if i in test}
    results = pd.read_csv(tmp_path / "results.csv", dtype={"task_hash": str})
    pretrain = results.loc[results["kind"] == "pretrain", "task_hash"].iloc[0]
    split = json.loads((tmp_path / "tasks" / pretrain / "split.json").read_text())
    seen = set(split["train"]) | set(split["val"])
    trained = {f for i, f in zip(energy.ids, energy.identities()["formula"]) if i in seen}
    assert len(seen) == 40 and test_formulas and not trained & test_formulas
    transfer = results[(results["kind"] == "finetune") & (results["method"] != "scratch")]
    assert set(transfer["source"]) == {source} and set(transfer["method"]) == {"heads", "full"}
    assert (transfer["test_same_formula"] == 0).all()
    from mattransfer.report import write_report

    text = write_report(tmp_path).read_text()
    assert "## DFT → experiment" in text and "DFT → experiment (demo_volume, n_test 30)" in text
    assert "Part 1 — relations between datasets | 0 | 0 | 0 | 0 | not in this study" in text
    assert "Relatedness" not in text and "## Part 1" not in text  # a part not in the study has no section



# Several settings of one method under labels, and the DFT → experiment preset's plan


def _planned(study: StudySpec, pools: dict[str, int], units: dict[str, str] | None = None):
    """``study``'s plan over stand-in prepared data of the given pool sizes and units (no data read, nothing
    trained)."""
    data = {k: PreparedData(k, "y", (units or {}).get(k, "u"), f"fp-{k}", 1000, pool, Path("/nowhere"),
                            RadiusGraph(GraphSettings())) for k, pool in pools.items()}
    return Planner(study, data).plan()


def test_labels_give_several_settings_of_one_method_hashed_as_the_method_alone():
    from mattransfer.study.worker import job_of

    pools = {"demo_energy": 270, "demo_volume": 270}
    sweep = {"heads": {}, "freeze-1": {"method": "freeze", "train_last": 1}, "freeze-2": {"method": "freeze",
                                                                                          "train_last": 2}}
    labelled = spec(part1={"methods": sweep, "baselines": []}, part4={"enabled": False})
    tasks = [t for t in _planned(labelled, pools) if t.kind == "finetune" and t.source]
    assert {t.method for t in tasks} == set(sweep)
    freeze = [t for t in tasks if t.method.startswith("freeze")]
    assert {t.runs for t in freeze} == {"freeze"} and all("method" not in t.options for t in freeze)
    assert {t.options["train_last"] for t in freeze} == {1, 2}
    assert freeze[0].describe().startswith(freeze[0].method + " ")
    assert job_of(freeze[0], labelled).method == "freeze"
    # A label changes no result: freeze-1's tasks are those of `freeze: {train_last: 1}`, results and all.
    plain = spec(part1={"methods": {"freeze": {"train_last": 1}}, "baselines": []}, part4={"enabled": False})
    assert ({t.hash for t in _planned(plain, pools) if t.method == "freeze"}
            == {t.hash for t in freeze if t.method == "freeze-1"})
    # ... so one fine-tune under two labels (here in two parts) is an error naming both.
    twice = spec(part1={"methods": {"f1": {"method": "freeze", "train_last": 1}}, "baselines": []},
                 part4={**TINY["part4"], "methods": {"freeze": {"train_last": 1}}})
    with pytest.raises(ConfigError, match="'f1'"):
        _planned(twice, pools)


@pytest.mark.parametrize("methods, words", [
    ({"freeze-1": {"method": "frezze", "train_last": 1}}, ["'freeze-1'", "unknown method 'frezze'"]),
    ({"heads": {"method": "freeze", "train_last": 1}}, ["'heads' is the name of a method", "'freeze'"]),
    ({"a": {"method": "freeze", "train_last": 1}, "b": {"method": "freeze", "train_last": 1}}, ["'a' and 'b'"]),
    ({"freeze-1": {"method": "freeze", "train_last": -1}}, ["options of 'freeze-1'"]),
    ({"zero-shot": {"method": "heads"}}, ["'zero-shot'"]),
    ({"mine": {"method": "scratch"}}, ["scratch baselines are always run"]),
])
def test_a_bad_label_is_a_one_line_error_naming_it(tmp_path, methods, words):
    path = tmp_path / "study.yaml"
    path.write_text(json.dumps({**TINY, "part1": {"methods": methods}}))
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert "part1.methods" in message and all(w in message for w in words), message
    assert message.count("\n") <= 1, message


def test_the_dft_to_expt_preset_sweeps_freeze_and_keeps_the_tasks_it_planned_before():
    """The preset's freeze sweep (k = 1, 2, 4 of the Magpie MLP's 5 blocks), zero-shot rows and the hurdle trees
    (alone, and with each seed's DFT prediction as a feature) are new tasks; its
    earlier methods (full, heads, freeze k=2) plan what the preset planned before labels (commit 027cd7e, by
    count and digest), and the sweep's freeze-2 is that freeze: a study run before resumes with them."""
    pools = {"bandgap_comp": 95000, "expt_gap_comp": 4143, "bandgap_comp-without-expt_gap_comp-test": 90000}
    preset = load_spec("dft-to-expt")
    new = _planned(preset, pools)
    methods = {"full": {}, "heads": {}, "freeze": {"train_last": 2}}
    before = preset.model_copy(update={"dft_to_expt": preset.dft_to_expt.model_copy(
        update={"methods": type(preset.dft_to_expt).model_validate({"methods": methods}).methods, "zero_shot": False,
                "baselines": []})})
    old = _planned(before, pools)
    tasks = [[t.hash, sorted(t.parts), t.describe(), sorted(t.notes)] for t in old]
    assert (len(tasks), hashlib.sha256(json.dumps(tasks).encode()).hexdigest()[:16]) == (63, "f860368199b66539")
    assert {t.hash for t in old} <= {t.hash for t in new}
    by_method = pd.Series([t.method for t in new]).value_counts().to_dict()
    assert by_method == {"scratch": 15, "full": 15, "heads": 15, "freeze-1": 15, "freeze-2": 15, "freeze-4": 15,
                         "pretrain": 3, "zero-shot": 3, "hurdle_hist_gb": 15, "hurdle_hist_gb+source": 15}
    pretrains = {t.seed: t.hash for t in new if t.kind == "pretrain"}
    through = [t for t in new if t.method == "hurdle_hist_gb+source"]
    assert {(t.seed, t.pretrain) for t in through} == set(pretrains.items())
    zero = [t for t in new if t.kind == "zero-shot"]
    assert {(t.seed, t.pretrain, t.size, t.dataset) for t in zero} == {(s, h, 0, "expt_gap_comp")
                                                                       for s, h in pretrains.items()}


def test_part1_zero_shot_tests_each_source_on_the_targets_of_its_unit():
    pools = {"bandgap": 30000, "expt_gap": 2000, "eform": 30000}
    units = {"bandgap": "eV", "expt_gap": "eV", "eform": "eV/atom"}
    base = {"datasets": list(pools), "seeds": [0, 1], "finetune_sizes": [100], "part1": {"methods": ["heads"],
            "baselines": [], "zero_shot": True}, **{f"part{k}": {"enabled": False} for k in (2, 3, 4)}}
    plan = _planned(StudySpec.model_validate(base), pools, units)
    zero = [t for t in plan if t.kind == "zero-shot"]
    pretrains = {(t.dataset, t.seed): t.hash for t in plan if t.kind == "pretrain"}
    assert sorted((t.source, t.dataset, t.seed) for t in zero) == [
        ("bandgap", "expt_gap", 0), ("bandgap", "expt_gap", 1), ("expt_gap", "bandgap", 0), ("expt_gap", "bandgap", 1)]
    assert all(t.pretrain == pretrains[t.source, t.seed] and t.parts == {1} for t in zero)
    off = _planned(StudySpec.model_validate({**base, "part1": {**base["part1"], "zero_shot": False}}), pools, units)
    assert {t.hash for t in plan} - {t.hash for t in zero} == {t.hash for t in off}
