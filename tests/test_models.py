"""The model: checkpoints that round-trip exactly, LoRA that starts as a no-op, deterministic runs."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from mattransfer.data.registry import DataSources
from mattransfer.errors import ConfigError
from mattransfer.graphs.build import RadiusGraph
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.models.encoders.cgcnn import CGCNN, element_properties
from mattransfer.models.lora import LINEAR_TYPES, LoRALinear
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training.job import predict_structures
from mattransfer.training.run import run


@pytest.fixture
def volume_batch(volume_data):
    return volume_data.inputs.batch(torch.arange(40))


def _assert_same_state(a: TransferModel, b: TransferModel) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_checkpoint_round_trip_plain(pretrained, volume_batch, tmp_path):
    pretrained.eval()
    expected = pretrained.predict(volume_batch)
    path = tmp_path / "plain.ckpt"
    pretrained.save(path, note="extra metadata")
    loaded = TransferModel.load(path).eval()

    assert torch.equal(loaded.predict(volume_batch), expected)
    _assert_same_state(loaded, pretrained)
    # The standardisation and what it predicts survive; they are the pre-training's, not defaults.
    assert loaded.target == {"dataset": "demo_energy", "name": "energy_per_atom", "unit": "eV/atom",
                             "transform": "none", "clip": pretrained.target["clip"]}
    assert loaded.target["clip"][0] < loaded.target["clip"][1]  # the pre-training's range, clipped by default
    assert torch.equal(loaded.target_mean, pretrained.target_mean) and float(loaded.target_mean) != 0.0
    assert torch.equal(loaded.target_std, pretrained.target_std) and float(loaded.target_std) != 1.0
    assert loaded.graphs == pretrained.graphs
    assert loaded.config == pretrained.config
    assert torch.load(path, weights_only=False)["note"] == "extra metadata"


def test_checkpoint_round_trip_lora(pretrained, finetune, volume_batch, tmp_path):
    model, _ = finetune(pretrained, "lora", rank=2, alpha=4.0)
    model.eval()
    assert any(torch.count_nonzero(m.lora_b.detach()) > 0 for m in model.modules() if isinstance(m, LoRALinear))
    expected = model.predict(volume_batch)
    path = tmp_path / "lora.ckpt"
    model.save(path)
    loaded = TransferModel.load(path).eval()

    assert torch.equal(loaded.predict(volume_batch), expected)
    _assert_same_state(loaded, model)
    assert loaded.lora == {"rank": 2, "alpha": 4.0}
    assert loaded.target == model.target == {"dataset": "demo_volume", "name": "volume_per_atom", "unit": "A^3/atom",
                                               "transform": "none", "clip": model.target["clip"]}
    assert torch.equal(loaded.target_mean, model.target_mean)
    assert torch.equal(loaded.target_std, model.target_std)
    # Freezing belongs to a run, not to weights: a loaded model starts unfrozen, LoRA bases excepted.
    assert loaded.frozen == []
    assert all(not m.base.weight.requires_grad for m in loaded.modules() if isinstance(m, LoRALinear))
    wrapped = [m for m in loaded.encoder.modules() if isinstance(m, LoRALinear)]
    assert wrapped and all(m.scale == 2.0 for m in wrapped)


def test_lora_injection_is_a_no_op(pretrained_ckpt, volume_batch):
    plain = TransferModel.load(pretrained_ckpt).eval()
    adapted = TransferModel.load(pretrained_ckpt)
    wrapped = adapted.add_lora(rank=4, alpha=8.0)
    adapted.eval()
    # Every linear layer of the encoder is wrapped (CGConv's lin_f and lin_s in each layer, the element map).
    assert len(wrapped) == 2 * len(adapted.encoder.layers) + 1
    for name, module in adapted.encoder.named_modules():
        if isinstance(module, LINEAR_TYPES):
            assert name.endswith(".base"), f"{name} was not wrapped"
    assert torch.equal(adapted.predict(volume_batch), plain.predict(volume_batch))
    # ... and the adapters do act once B is non-zero.
    with torch.no_grad():
        for module in adapted.modules():
            if isinstance(module, LoRALinear):
                module.lora_b.normal_()
    assert not torch.equal(adapted.predict(volume_batch), plain.predict(volume_batch))


def test_set_target_standardises_on_train_values(graph_settings):
    model = TransferModel(ModelConfig(), graph_settings)
    model.set_target("d", "y", "eV", torch.tensor([1.0, 3.0, 5.0], dtype=torch.float64))
    assert float(model.target_mean) == 3.0 and float(model.target_std) == 2.0
    model.set_target("d", "y", "eV", torch.tensor([4.0, 4.0], dtype=torch.float64))
    assert float(model.target_std) == 1.0  # constant targets: no division by zero


@pytest.mark.parametrize("elements, borrows", [("learned", False), ("magpie", True), ("learned+magpie", True)])
def test_element_properties_let_an_unseen_element_borrow_from_trained_ones(elements, borrows, graph_settings):
    embedding = CGCNN(CGCNN.Config(elements=elements), graph_settings).embedding
    sulphur = torch.tensor([16])
    before = embedding(sulphur).detach().clone()
    optimizer = torch.optim.SGD(embedding.parameters(), lr=0.1)
    embedding(torch.tensor([8, 8, 26])).pow(2).sum().backward()  # a step on oxides of iron only
    optimizer.step()
    assert (not torch.equal(embedding(sulphur), before)) == borrows


def test_element_property_embedding_round_trips_and_old_keys_stay(graph_settings, volume_batch, tmp_path):
    learned = TransferModel(ModelConfig(encoder={"name": "cgcnn", **CGCNN.added_options}), graph_settings)  # v1
    assert [k for k in learned.state_dict() if k.startswith("encoder.embedding")] == ["encoder.embedding.weight"]
    model = TransferModel(ModelConfig(encoder={"name": "cgcnn", "elements": "magpie"}), graph_settings).eval()
    model.save(tmp_path / "magpie.ckpt")
    loaded = TransferModel.load(tmp_path / "magpie.ckpt").eval()
    _assert_same_state(loaded, model)
    assert torch.equal(loaded.predict(volume_batch), model.predict(volume_batch))


def test_atom_descriptors_reach_the_readout_unconvolved(graph_settings, demo_energy):
    store = cached_inputs(demo_energy, RadiusGraph(graph_settings), progress=False)
    index = torch.tensor([0, 7, 3])
    batch = store.batch(index)
    encoder = CGCNN(CGCNN.Config(atom_descriptors=True, pooling="mean+max"), graph_settings).eval()
    assert encoder.atom_dim == 64 + 22 + 1 and encoder.out_dim == 2 * encoder.atom_dim
    with torch.no_grad():
        atoms, crystals = encoder.atom_features(batch), encoder(batch)
    descriptors = atoms[:, 64:]
    torch.testing.assert_close(descriptors[:, :22], element_properties(100)[batch.z])
    nearest = [min(n.nn_distance for n in site) for g in index.tolist()
               for site in demo_energy.structures[g].get_all_neighbors(graph_settings.cutoff)]
    torch.testing.assert_close(descriptors[:, 22], torch.tensor(nearest, dtype=torch.float32))
    for g in range(len(index)):  # the max pool's descriptor columns: the crystal's extremes, e.g. its shortest bond
        torch.testing.assert_close(crystals[g, encoder.atom_dim + 64:], descriptors[batch.batch == g].max(0).values)


def test_a_checkpoint_from_before_an_encoder_option_loads_as_the_model_it_saved(graph_settings, volume_batch, tmp_path):
    """Options added to CGCNN since (elements, atom_descriptors, pooling) are absent from older checkpoints: they
    read as the values of then, so such a checkpoint rebuilds its own model whatever today's defaults are."""
    old = {"name": "cgcnn", "pooling": "mean", "elements": "learned", "atom_descriptors": False}
    model = TransferModel(ModelConfig(encoder=old), graph_settings).eval()
    model.save(tmp_path / "old.ckpt")
    checkpoint = torch.load(tmp_path / "old.ckpt", weights_only=True)
    for option in CGCNN.added_options:
        del checkpoint["model"]["encoder"][option]
    torch.save(checkpoint, tmp_path / "old.ckpt")
    loaded = TransferModel.load(tmp_path / "old.ckpt").eval()
    assert {k: loaded.config.encoder[k] for k in old} == old
    _assert_same_state(loaded, model)
    assert torch.equal(loaded.predict(volume_batch), model.predict(volume_batch))


def test_load_errors_name_the_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="missing.ckpt"):
        TransferModel.load(tmp_path / "missing.ckpt")
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match="garbage.ckpt"):
        TransferModel.load(garbage)
    other = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ConfigError, match="other.ckpt"):
        TransferModel.load(other)


def test_predict_structures_matches_model_predict(pretrained, demo_volume, volume_batch):
    predictions = predict_structures(pretrained, demo_volume, batch_size=7)
    assert predictions.shape == (len(demo_volume),)
    torch.testing.assert_close(torch.from_numpy(predictions[:40]), pretrained.eval().predict(volume_batch))


def test_run_is_deterministic_on_cpu(make_config, tmp_path):
    first = run(make_config(tmp_path / "a"), progress=False)
    second = run(make_config(tmp_path / "b"), progress=False)
    for part in ("train", "val", "test"):
        assert first[part] == second[part]
    assert first["best_epoch"] == second["best_epoch"]
    assert (tmp_path / "a" / "split.json").read_text() == (tmp_path / "b" / "split.json").read_text()
    histories = [pd.read_csv(tmp_path / d / "history.csv").drop(columns="elapsed_s") for d in "ab"]
    pd.testing.assert_frame_equal(*histories)  # identical but for the clock
    _assert_same_state(TransferModel.load(tmp_path / "a" / "model.ckpt"), TransferModel.load(tmp_path / "b" / "model.ckpt"))
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["test"] == first["test"]

    other = run(make_config(tmp_path / "c", seed=1), progress=False)
    split_a = json.loads((tmp_path / "a" / "split.json").read_text())
    split_c = json.loads((tmp_path / "c" / "split.json").read_text())
    assert split_a["test"] == split_c["test"]  # the fixed test set
    assert split_a["train"] != split_c["train"]  # the seed does matter
    assert other["test"]["n"] == first["test"]["n"]


def test_run_writes_a_complete_run_directory(make_config, tmp_path):
    out = tmp_path / "full"
    summary = run(make_config(out), progress=False)
    for name in ("config.yaml", "split.json", "history.csv", "model.ckpt", "metrics.json", "train.log"):
        assert (out / name).is_file(), name
    assert summary["n_train"] + summary["n_val"] == 60
    assert summary["n_test"] == 30  # ceil(10% of 300)
    assert summary["method"] == "pretrain"
    assert len((out / "history.csv").read_text().splitlines()) == 1 + summary["epochs_run"]
    # The checkpoint is the best-validation model: re-evaluating it reproduces the test metrics.
    model = TransferModel.load(out / "model.ckpt")
    split = json.loads((out / "split.json").read_text())
    table = DataSources().load("demo_energy")
    graphs = cached_inputs(table, RadiusGraph(model.graphs), progress=False)
    positions = graphs.positions(split["test"])
    predictions = model.eval().predict(graphs.batch(positions)).numpy()
    mae = float(abs(predictions - table.y[positions.numpy()]).mean())
    assert mae == pytest.approx(summary["test"]["mae"], rel=1e-6)


@pytest.mark.parametrize("lora", [False, True])
def test_factorized_cgconv_matches_pyg_cgconv(volume_batch, lora):
    """Same parameters, same outputs and gradients as PyG's CGConv (also with LoRA adapters)."""
    from torch_geometric.nn import CGConv

    from mattransfer.models.encoders.cgcnn import FactorizedCGConv
    from mattransfer.models.lora import inject_lora

    torch.manual_seed(0)
    ours = FactorizedCGConv(16, dim=40, batch_norm=True)
    theirs = CGConv(16, dim=40, batch_norm=True)
    theirs.load_state_dict(ours.state_dict())
    if lora:
        for conv in (ours, theirs):
            inject_lora(conv, rank=4, alpha=8.0)
            for name, p in conv.named_parameters():
                if "lora_b" in name:  # a trained adapter, not the zero it starts at
                    torch.nn.init.normal_(p)
        theirs.load_state_dict(ours.state_dict())
    x = torch.randn(volume_batch.z.numel(), 16)
    edge_attr = torch.rand(volume_batch.distance.numel(), 40)

    outputs = [conv(x, volume_batch.edge_index, edge_attr) for conv in (ours, theirs)]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    weights = torch.randn_like(outputs[0])
    for out in outputs:
        (out * weights).sum().backward()
    grads = [dict((n, p.grad) for n, p in conv.named_parameters() if p.requires_grad) for conv in (ours, theirs)]
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-4, msg=name)


def test_compiled_run_matches_eager(make_config, tmp_path):
    """`compile: true` is an execution setting: the same run, the same results to float tolerance."""
    eager = run(make_config(tmp_path / "eager"), progress=False)
    compiled = run(make_config(tmp_path / "compiled", compile=True), progress=False)
    assert compiled["epochs_run"] == eager["epochs_run"]
    for split in ("train", "val", "test"):
        assert compiled[split]["mae"] == pytest.approx(eager[split]["mae"], rel=1e-3), split
    # The checkpoint has the plain keys (a strict load), and predicts as the eager model does.
    loaded = [TransferModel.load(tmp_path / name / "model.ckpt").eval() for name in ("eager", "compiled")]
    batch = DataSources().load("demo_energy")
    graphs = cached_inputs(batch, RadiusGraph(loaded[0].graphs), progress=False).batch(torch.arange(20))
    torch.testing.assert_close(loaded[1].predict(graphs), loaded[0].predict(graphs), rtol=1e-3, atol=1e-3)
