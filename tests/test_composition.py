"""Composition-only data and composition encoders (ElemNet, the Magpie MLP): training through `mattransfer
train`, freezing the last k layers, a structure encoder's error, and keeping an experimental test set's
formulas out of a DFT pre-training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from pymatgen.core import Composition

from mattransfer.cli import main
from mattransfer.data.registry import DataSources
from mattransfer.data.splits import fixed_test_ids
from mattransfer.data.table import composition_key
from mattransfer.graphs.composition import N_ELEMENTS, ElementFractions
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.models.encoders.element_attention import fraction_encoding
from mattransfer.models.encoders.magpie_mlp import magpie_statistics, magpie_table
from mattransfer.errors import ConfigError
from mattransfer.models.model import TransferModel
from mattransfer.training.baselines import source_predictions

ELEMNET = {"name": "elemnet", "widths": [32, 32, 16, 16, 8]}
TRAINING = {"max_epochs": 3, "patience": 3, "batch_size": 32, "lr": 3e-3}


def _formulas(n: int, seed: int, elements: list[str]) -> list[str]:
    """``n`` distinct binary and ternary formulas drawn from ``elements``."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    while len(out) < n:
        chosen = rng.choice(elements, size=rng.integers(2, 4), replace=False)
        formula = "".join(f"{el}{rng.integers(1, 5)}" for el in chosen)
        out[Composition(formula).reduced_formula] = None
    return list(out)


def _write(path: Path, formulas: list[str], target: str) -> Path:
    """A CSV of formulas and a target that depends on them (mean electronegativity)."""
    y = [Composition(f).average_electroneg for f in formulas]
    pd.DataFrame({"id": [f"{path.stem}-{k}" for k in range(len(formulas))], "composition": formulas,
                  target: y}).to_csv(path, index=False)
    return path


@pytest.fixture
def comp_sources(tmp_path) -> Path:
    """A data-sources file serving bandgap_comp (300 "DFT" rows) and expt_gap_comp (120 "experimental"
    rows, 40 of them formulas of the DFT set too, half of those written as fractions: Li0.4O0.6 for Li2O3)
    from CSV files of formulas."""
    elements = ["Li", "Na", "K", "Mg", "Ca", "Al", "Ga", "Si", "Ge", "O", "S", "Se", "N", "P", "F", "Cl", "Zn", "Cu"]
    dft = _formulas(300, 0, elements)
    as_fractions = [Composition(f).fractional_composition.formula.replace(" ", "") for f in dft[:20]]
    expt = as_fractions + dft[20:40] + [f for f in _formulas(200, 1, elements) if f not in dft][:80]
    _write(tmp_path / "dft.csv", dft, "gap pbe")
    _write(tmp_path / "expt.csv", expt, "gap expt")
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path), "datasets": {
        "bandgap_comp": {"file": "dft.csv"}, "expt_gap_comp": {"file": "expt.csv"}}}))
    return path


def _train(tmp_path: Path, name: str, sources: Path | None, data: dict, **sections) -> dict:
    options = {"seed": 0, "device": "cpu", "output_dir": str(tmp_path / name), "data": data,
               "training": TRAINING, **sections}
    if sources is not None:
        options["data_sources"] = str(sources)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(options))
    assert main(["-q", "--threads", "1", "train", str(path)]) == 0
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_composition_encoders_train_and_freeze_keeps_all_but_the_last_k_layers(comp_sources, tmp_path):
    metrics = _train(tmp_path, "dft", comp_sources, {"dataset": "bandgap_comp"},
                     model={"encoder": ELEMNET, "head": {"hidden": []}})
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 300 and metrics["test"]["mae"] > 0
    checkpoint = tmp_path / "dft" / "model.ckpt"
    source = TransferModel.load(checkpoint)
    assert source.encoder.blocks() == [f"layers.{i}" for i in range(5)]

    _train(tmp_path, "freeze", comp_sources, {"dataset": "expt_gap_comp"},
           finetune={"method": "freeze", "read_from": str(checkpoint), "config": {"train_last": 2},
                     "allow_test_overlap": True})
    tuned = TransferModel.load(tmp_path / "freeze" / "model.ckpt")
    before, after = source.encoder.state_dict(), tuned.encoder.state_dict()
    for name in before:
        block = int(name.split(".")[1])
        assert torch.equal(before[name], after[name]) == (block < 3), name  # layers 0-2 frozen, 3-4 trained

    # The Magpie MLP on the same table; its inputs are the same cached fractions.
    metrics = _train(tmp_path, "magpie", comp_sources, {"dataset": "expt_gap_comp"},
                     model={"encoder": {"name": "magpie-mlp", "widths": [16, 8]}})
    assert metrics["test"]["mae"] > 0


@pytest.mark.parametrize("encoder", [ELEMNET, {"name": "magpie-mlp", "widths": [16, 8]}], ids=["elemnet", "magpie"])
def test_lora_on_a_composition_encoder_leaves_its_base_weights_bit_identical(comp_sources, tmp_path, encoder):
    """``lora`` wraps every MLP layer; the pre-trained weights (and the Magpie input norm's running
    statistics) stay bit-identical while the adapters and the new head train."""
    _train(tmp_path, "dft", comp_sources, {"dataset": "bandgap_comp"}, model={"encoder": encoder})
    source = TransferModel.load(tmp_path / "dft" / "model.ckpt").encoder.state_dict()
    _train(tmp_path, "lora", comp_sources, {"dataset": "expt_gap_comp"},
           finetune={"method": "lora", "read_from": str(tmp_path / "dft" / "model.ckpt"),
                     "config": {"rank": 2, "alpha": 4.0}, "allow_test_overlap": True})
    tuned = TransferModel.load(tmp_path / "lora" / "model.ckpt")
    after = tuned.encoder.state_dict()
    adapted = [k for k in after if k.endswith("lora_b")]
    assert len(adapted) == len(tuned.encoder.layers)  # one adapter per hidden layer
    assert all(torch.count_nonzero(after[k]) > 0 for k in adapted)  # B starts at zero: it trained
    base = {k.replace(".base.", "."): v for k, v in after.items() if "lora_" not in k}
    assert base.keys() == source.keys()
    for key, value in source.items():
        assert torch.equal(base[key], value), f"{key} changed under lora"


def test_element_attention_trains_and_a_formula_vector_ignores_its_batch_mates(comp_sources, tmp_path):
    metrics = _train(tmp_path, "attention", comp_sources, {"dataset": "expt_gap_comp"},
                     model={"encoder": {"name": "element-attention", "dim": 16, "layers": 2, "heads": 2, "ff_dim": 32}})
    assert np.isfinite(metrics["test"]["mae"]) and metrics["n_trainable"] > 0
    encoder = TransferModel.load(tmp_path / "attention" / "model.ckpt").encoder.eval()
    assert encoder.blocks() == ["tokens", "layers.0", "layers.1", "norm"]
    store = cached_inputs(DataSources.from_yaml(comp_sources).load("expt_gap_comp"), ElementFractions(), progress=False)
    n_elements = (store.x > 0).sum(1)
    short, long = int(n_elements.argmin()), int(n_elements.argmax())
    assert n_elements[short] < n_elements[long]  # the pair's batch pads the short formula
    with torch.no_grad():
        together = encoder(store.batch(torch.tensor([short, long])))
        alone = encoder(store.batch(torch.tensor([short])))
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-5)


def test_fraction_encoding_tells_small_fractions_apart():
    encoded = fraction_encoding(torch.tensor([0.001, 0.002, 0.5, 1.0]), 16)
    assert encoded.shape == (4, 16)
    assert (encoded[0] - encoded[1]).norm() > 0.1  # the log half separates a dopant's 0.1 % from 0.2 %


def test_a_composition_encoder_reads_the_compositions_of_structures(tmp_path):
    metrics = _train(tmp_path, "demo", None, {"dataset": "demo_energy", "n_samples": 60},
                     model={"encoder": ELEMNET})
    assert metrics["n_train"] > 0 and np.isfinite(metrics["test"]["mae"])


def test_a_structure_encoder_on_compositions_is_a_one_line_error(comp_sources, tmp_path, capsys):
    options = {"device": "cpu", "output_dir": str(tmp_path / "cgcnn"), "data_sources": str(comp_sources),
               "data": {"dataset": "expt_gap_comp"}, "training": TRAINING}
    path = tmp_path / "cgcnn.yaml"
    path.write_text(yaml.safe_dump(options))
    assert main(["-q", "--threads", "1", "train", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "expt.csv: composition-only data" in error and "elemnet" in error


def test_experimental_test_formulas_never_reach_the_dft_pre_training(comp_sources, tmp_path):
    sources = DataSources.from_yaml(comp_sources)
    expt = sources.load("expt_gap_comp")
    test_rows = expt.subset(fixed_test_ids(expt.ids)).row_compositions()
    test_compositions = {composition_key(c) for c in test_rows}
    dft = sources.load("bandgap_comp")
    shared = sum(composition_key(c) in test_compositions for c in dft.row_compositions())
    # The fixture puts some there, some of them written otherwise (the exclusion compares element fractions).
    assert shared > sum(c.reduced_formula in {t.reduced_formula for t in test_rows} for c in dft.row_compositions()) > 0

    metrics = _train(tmp_path, "dft", comp_sources, {"dataset": "bandgap_comp",
                                                     "exclude_formulas_of": ["expt_gap_comp"]},
                     model={"encoder": ELEMNET})
    assert metrics["dropped"] == {"formula_in_test_of_expt_gap_comp": shared}
    split = json.loads((tmp_path / "dft" / "split.json").read_text())
    keys = dict(zip(dft.ids, (composition_key(c) for c in dft.row_compositions())))
    for part in ("train", "val", "test"):
        assert not {keys[i] for i in split[part]} & test_compositions
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 300 - shared

    # The fine-tune on the experimental data then finds none of its test compositions in the pre-training.
    _train(tmp_path, "tune", comp_sources, {"dataset": "expt_gap_comp"},
           finetune={"method": "full", "read_from": str(tmp_path / "dft" / "model.ckpt")})
    assert json.loads((tmp_path / "tune" / "metrics.json").read_text())["test_in_pretraining"]["same_formula"] == 0


def test_element_fractions_are_cached_and_magpie_statistics_match_matminer(comp_sources):
    from matminer.featurizers.composition import ElementProperty

    table = DataSources.from_yaml(comp_sources).load("expt_gap_comp")
    store = cached_inputs(table, ElementFractions(), progress=False)
    assert store.x.shape == (120, N_ELEMENTS) and torch.allclose(store.x.sum(1), torch.ones(120))
    assert cached_inputs(table, ElementFractions(), progress=False).x.equal(store.x)  # from the cache
    batch = store.batch(torch.tensor([0, 5]))
    assert batch.num_graphs == 2 and set(batch.batch.tolist()) == {0, 1}
    assert store.elements()[0] == {el.Z for el in table.compositions[0]}

    ours = magpie_statistics(store.batch(torch.arange(3)), magpie_table()).numpy()
    preset = ElementProperty.from_preset("magpie", impute_nan=True)
    # matminer orders by property, then statistic; ours by statistic, then property.
    theirs = np.array([preset.featurize(c) for c in table.compositions[:3]]).reshape(3, 22, 6).transpose(0, 2, 1)
    np.testing.assert_allclose(ours, theirs.reshape(3, -1), rtol=1e-4, atol=1e-3)


def test_the_dft_to_expt_study_tests_the_dft_model_zero_shot_and_counts_the_rows_removed(comp_sources, tmp_path):
    """The DFT → experiment part on composition files: a freeze sweep under labels, the DFT model tested as
    it is on the experimental test set (zero-shot: the fine-tunes' test ids, n_train 0, the MAE of the
    checkpoint's own predictions) and the DFT rows removed for that test set, in a file and in the report."""
    from mattransfer.report import write_report
    from mattransfer.study import StudySpec, run_study
    from mattransfer.training.job import predict_structures

    sweep = {"heads": {}, "freeze-1": {"method": "freeze", "train_last": 1},
             "freeze-2": {"method": "freeze", "train_last": 2}}
    study = StudySpec.model_validate({
        "datasets": ["bandgap_comp", "expt_gap_comp"], "data_sources": str(comp_sources), "seeds": [0],
        "device": "cpu", "model": {"encoder": ELEMNET, "head": {"hidden": [8]}}, "pretrain": TRAINING,
        "finetune": TRAINING, **{f"part{k}": {"enabled": False} for k in range(1, 5)},
        "finetune_sizes": [10],  # the part's own sizes are larger: its trees need features of those rows
        "dft_to_expt": {"enabled": True, "pretrain_size": 150, "finetune_sizes": [40], "methods": sweep,
                        "zero_shot": True, "baselines": ["hist_gb"]}})
    summary = run_study(study, tmp_path, workers=1, progress=False)
    # pre-training, zero-shot, scratch, sweep, and the trees alone and with the DFT prediction
    assert summary["tasks"] == summary["done"] == 1 + 1 + 1 + 3 + 2

    results = pd.read_csv(tmp_path / "results.csv", dtype={"task_hash": str})
    tuned = results[results["kind"] == "finetune"]
    assert set(tuned["method"]) == {"scratch", *sweep}
    (zero,) = results[results["kind"] == "zero-shot"].itertuples()
    assert (zero.method, zero.n_train, zero.n_val, zero.finetune_size, zero.test_same_formula) == ("zero-shot", 0, 0,
                                                                                                    0, 0)
    assert zero.n_test == tuned["n_test"].iloc[0] == 12
    test_ids = [list(pd.read_csv(tmp_path / "tasks" / h / "test_predictions.csv")["id"])
                for h in (zero.task_hash, tuned["task_hash"].iloc[0])]
    assert test_ids[0] == test_ids[1]
    # Its MAE is the pre-trained checkpoint's, as it is, on those rows.
    pretrain = results.loc[results["kind"] == "pretrain", "task_hash"].iloc[0]
    model = TransferModel.load(tmp_path / "tasks" / pretrain / "model.ckpt")
    expt = DataSources.from_yaml(comp_sources).load("expt_gap_comp").subset(test_ids[0])
    assert zero.test_mae == pytest.approx(np.abs(predict_structures(model, expt) - expt.y).mean(), rel=1e-5)
    # The two freeze settings trained different parts of the encoder (5 blocks: the last 1, the last 2).
    trainable = {m: json.loads((tmp_path / "tasks" / h / "result.json").read_text())["n_trainable"]
                 for m, h in zip(tuned["method"], tuned["task_hash"])}
    assert trainable["heads"] < trainable["freeze-1"] < trainable["freeze-2"] < trainable["scratch"]

    # The DFT rows removed: those whose element fractions are of an experimental test row.
    sources = DataSources.from_yaml(comp_sources)
    test = {composition_key(c) for c in sources.load("expt_gap_comp").subset(test_ids[0]).row_compositions()}
    removed = sum(composition_key(c) in test for c in sources.load("bandgap_comp").row_compositions())
    (counted,) = json.loads((tmp_path / "formula_exclusions.json").read_text()).values()
    assert removed > 0 and counted == {"source": "bandgap_comp", "target": "expt_gap_comp", "target_test_rows": 12,
                                       "rows": 300, "removed": removed, "kept": 300 - removed}
    text = write_report(tmp_path).read_text()
    assert f"bandgap_comp (300 rows) lost {removed} rows" in text
    assert f"without fine-tuning (zero-shot) on expt_gap_comp's test set (n_test 12): MAE {zero.test_mae:.4g}" in text
    assert "MAE freeze-1" in text and "MAE freeze-2" in text

    # Transfer through features: the same trees on the same subset, the DFT model's prediction one more feature.
    trees = results[results["kind"] == "baseline"].set_index("method")
    assert set(trees.index) == {"hist_gb", "hist_gb+source"} and (trees["finetune_size"] == 40).all()
    n_features = {m: json.loads((tmp_path / "tasks" / h / "result.json").read_text())["n_features"]
                  for m, h in trees["task_hash"].items()}
    assert n_features == {"hist_gb": 146, "hist_gb+source": 147}
    assert trees.loc["hist_gb+source", "test_mae"] != trees.loc["hist_gb", "test_mae"]
    assert "MAE hist_gb+source" in text
    # Features are made for the experimental dataset only, not for the 300 DFT rows no tree reads.
    (features,) = tmp_path.rglob("features.parquet")
    assert features.parent.name.startswith("expt_gap_comp-")


def test_feature_baselines_on_compositions_read_a_dft_model_s_predictions_unless_it_saw_a_test_row(
        comp_sources, tmp_path, capsys):
    def baseline(name: str, *sources: Path) -> int:
        return main(["-q", "--threads", "1", "baseline", "--data", "expt_gap_comp", "--data-sources",
                     str(comp_sources), "--n", "60", "--seeds", "0", "1", "--models", "hist_gb",
                     "--output", str(tmp_path / f"{name}.csv"), *(["--source-features", *map(str, sources)]
                                                                  if sources else [])])

    assert baseline("plain") == 0
    # Magpie (132) + Stoichiometry (6) + ValenceOrbital (8): the composition sets, no structure features
    plain = pd.read_csv(tmp_path / "plain.csv")
    assert list(plain.n_features) == [146, 146] and (plain.mae > 0).all()

    blind = {"dataset": "bandgap_comp", "exclude_formulas_of": ["expt_gap_comp"]}
    _train(tmp_path, "blind", comp_sources, blind, model={"encoder": ELEMNET})
    assert baseline("dft", tmp_path / "blind" / "model.ckpt") == 0
    dft = pd.read_csv(tmp_path / "dft.csv")
    assert list(dft.n_features) == [147, 147] and not np.allclose(dft.mae, plain.mae)

    # A DFT model that trained on some of the experimental test compositions would leak them: refused.
    _train(tmp_path, "seen", comp_sources, {"dataset": "bandgap_comp"}, model={"encoder": ELEMNET})
    capsys.readouterr()
    assert baseline("leak", tmp_path / "seen" / "model.ckpt") == 2
    assert "test structures of expt_gap_comp were in the pre-training" in capsys.readouterr().err
    # A seed ensemble (members joined by commas) is one column, the members' mean; one leaky member is refused.
    ensemble = f"{tmp_path / 'blind' / 'model.ckpt'},{tmp_path / 'seen' / 'model.ckpt'}"
    assert baseline("leak-in-ensemble", Path(ensemble)) == 2
    assert "test structures of expt_gap_comp were in the pre-training" in capsys.readouterr().err
    table = DataSources.from_yaml(comp_sources).load("expt_gap_comp")
    rows = table.subset(list(table.ids[:20]))
    apart, _ = source_predictions([ensemble.split(",")[0], ensemble.split(",")[1]], rows)
    together, members = source_predictions([ensemble], rows)
    assert list(together.columns) == [f"source|{ensemble}"] and len(members) == 2
    np.testing.assert_allclose(together.iloc[:, 0], apart.mean(axis=1), rtol=1e-6)
    # Members of one ensemble must predict one target: a band-gap model beside an energy model is refused.
    other = tmp_path / "other.ckpt"
    model = TransferModel.load(tmp_path / "blind" / "model.ckpt")
    model.target = {**model.target, "name": "formation energy", "unit": "eV/atom"}
    model.save(other)
    with pytest.raises(ConfigError, match="must predict one target"):
        source_predictions([f"{tmp_path / 'blind' / 'model.ckpt'},{other}"], rows)
    from mattransfer.featurizers import featurize

    with pytest.raises(ValueError, match="compositions have only the feature sets"):
        featurize([Composition("NaCl")], ["magpie", "density"], progress=False)
