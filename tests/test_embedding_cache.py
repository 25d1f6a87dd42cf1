"""`heads` trains on cached encoder embeddings: the same result as running the frozen encoder every step."""

from __future__ import annotations

import copy

import pytest
import torch

from mattransfer.finetune import METHODS, param_groups
from mattransfer.models.encoders.cgcnn import CGCNN
from mattransfer.models.model import TransferModel
from mattransfer.training import job as job_module
from mattransfer.training import prefix as prefix_module
from mattransfer.training.job import train_and_test
from mattransfer.training.prefix import PrefixStore, frozen_blocks
from mattransfer.training.run import run
from mattransfer.training.trainer import Batches, EmbeddingBatches, TrainingOptions, fit


def test_cached_embeddings_match_the_unfused_path(pretrained, volume_data, volume_split):
    options_cls, prepare = METHODS["heads"]
    model = prepare(pretrained, options_cls())
    twin = copy.deepcopy(model)
    y = volume_data.targets()
    y_std = ((y - y.mean()) / y.std()).float()
    options = TrainingOptions(max_epochs=8, patience=100, batch_size=16, lr=3e-3)

    def subsets() -> tuple[Batches, Batches]:
        positions = [volume_data.inputs.positions(ids) for ids in (volume_split.train, volume_split.val)]
        return tuple(Batches(volume_data.inputs, p, y_std[p], options.batch_size, torch.device("cpu")) for p in positions)

    train, val = subsets()
    unfused = fit(model, train, val, param_groups(model, None, options.lr), options, seed=3, progress=False)
    train, val = subsets()
    fused = fit(twin.head, EmbeddingBatches(train, twin.encoder), EmbeddingBatches(val, twin.encoder),
                param_groups(twin, None, options.lr), options, seed=3, progress=False)

    assert fused.best_epoch == unfused.best_epoch
    for a, b in zip(unfused.history, fused.history):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5 and abs(a["train_loss"] - b["train_loss"]) < 1e-5
    for name, value in model.head.state_dict().items():
        torch.testing.assert_close(twin.head.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(), twin.encoder.state_dict().values()))


def test_heads_runs_read_the_latent_cache_and_give_the_same_result(pretrained_ckpt, make_config, tmp_path, monkeypatch):
    """A second `heads` run of the same encoder encodes nothing; another sample size encodes only its new rows."""
    monkeypatch.setenv("MATTRANSFER_CACHE", str(tmp_path / "cache"))  # empty: other tests' runs fill the shared one
    encoded = []
    embed = TransferModel.embed
    monkeypatch.setattr(TransferModel, "embed", lambda self, store, *a, **k: encoded.append(len(store)) or embed(self, store, *a, **k))
    finetune = {"method": "heads", "read_from": str(pretrained_ckpt)}

    def heads(name: str, n: int) -> dict:
        return run(make_config(tmp_path / name, data={"dataset": "demo_volume", "n_samples": n}, finetune=finetune),
                   progress=False)

    first = heads("first", 60)
    assert encoded and sum(encoded) >= first["n_train"] + first["n_val"] + first["n_test"]
    encoded.clear()
    second = heads("second", 60)
    assert encoded == [] and second["test"] == first["test"]  # nothing encoded; identical predictions
    bigger = heads("bigger", 80)  # the 80 samples hold the 60 (splits are nested) and the test set is fixed
    assert sum(encoded) == 20


def test_heads_encodes_only_its_splits_rows_and_gives_the_whole_stores_result(pretrained, volume_data, volume_split,
                                                                             monkeypatch):
    """A study's store holds every row of a dataset; a `heads` fine-tune encodes the rows its split reads."""
    from mattransfer.graphs.inputs import row_keys
    from mattransfer.training.latents import cached_latents, cache_file

    data = job_module.Dataset(volume_data.table, volume_data.inputs, row_keys(volume_data.table, pretrained.encoder.featurizer()))
    used = len(volume_split.train) + len(volume_split.val) + len(volume_split.test)
    assert used < len(data.table)
    cache_file(pretrained).unlink(missing_ok=True)
    encoded = []
    embed = TransferModel.embed
    monkeypatch.setattr(TransferModel, "embed", lambda self, store, *a, **k: encoded.append(len(store)) or embed(self, store, *a, **k))
    job = job_module.Job(pretrained.config, pretrained.graphs, TrainingOptions(max_epochs=5, batch_size=16), seed=1,
                         method="heads")
    split_only = job_module.execute(job, data, volume_split, source=copy.deepcopy(pretrained), device=torch.device("cpu"),
                                    progress=False)
    assert sum(encoded) == used
    rows = torch.cat([data.inputs.positions(ids) for ids in (volume_split.train, volume_split.val, volume_split.test)])
    outside = torch.ones(len(data.table), dtype=torch.bool)
    outside[rows] = False
    assert split_only.latent[outside].isnan().all() and not split_only.latent[rows].isnan().any()
    whole = cached_latents(pretrained, data.keys, data.inputs)  # every row, as a caller with its own latent gives it
    torch.testing.assert_close(whole[rows], split_only.latent[rows])
    given = job_module.execute(job, data, volume_split, source=copy.deepcopy(pretrained), device=torch.device("cpu"),
                               progress=False, latent=whole)
    assert given.summary["test"] == split_only.summary["test"]


def test_frozen_prefix_cache_matches_the_unfused_path(pretrained, volume_data, volume_split, monkeypatch):
    """`freeze` with the first blocks frozen trains on their output computed once: the same training as
    running them every step, and the frozen blocks stay bit-identical."""
    options_cls, prepare = METHODS["freeze"]

    def trained(fuse: bool) -> tuple[TransferModel, dict]:
        monkeypatch.setattr(job_module, "frozen_blocks", frozen_blocks if fuse else lambda model: 0)
        torch.manual_seed(0)  # the same fresh head in both runs
        model = prepare(copy.deepcopy(pretrained), options_cls(train_last=1))
        options = TrainingOptions(max_epochs=6, patience=100, batch_size=16, lr=3e-3)
        fitted, metrics = train_and_test(model, volume_data, volume_split, options,
                                         param_groups(model, None, options.lr), seed=3, device=torch.device("cpu"),
                                         progress=False)
        return model, {"history": fitted.history, **metrics}

    built = []
    monkeypatch.setattr(job_module, "PrefixStore", lambda *a, **k: built.append(a[2]) or PrefixStore(*a, **k))
    fused_model, fused = trained(True)
    assert built == [len(pretrained.encoder.blocks()) - 1]  # the prefix path ran, from the last block on
    unfused_model, unfused = trained(False)
    assert len(built) == 1
    for a, b in zip(unfused["history"], fused["history"]):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-5 and abs(a["train_loss"] - b["train_loss"]) < 1e-5
    assert abs(fused["test"]["mae"] - unfused["test"]["mae"]) < 1e-4 * unfused["test"]["mae"]
    for name, value in unfused_model.state_dict().items():
        torch.testing.assert_close(fused_model.state_dict()[name], value, atol=1e-5, rtol=1e-4)
    reference = pretrained.encoder.state_dict()
    for name, value in fused_model.encoder.state_dict().items():
        if not name.startswith(f"layers.{len(pretrained.encoder.layers) - 1}."):
            assert torch.equal(value, reference[name]), f"{name} changed although frozen"


def test_freeze_runs_read_the_prefix_cache_and_give_the_same_result(pretrained_ckpt, pretrained, demo_volume,
                                                                     make_config, tmp_path, monkeypatch):
    """A second `freeze` run of the same encoder computes no frozen block; another sample size computes only its
    new rows; the cached state is the state computed afresh."""
    monkeypatch.setenv("MATTRANSFER_CACHE", str(tmp_path / "cache"))  # empty: other tests' runs fill the shared one
    computed = []
    compute = prefix_module.prefix_state
    monkeypatch.setattr(prefix_module, "prefix_state",
                        lambda store, *a, **k: computed.append(len(store)) or compute(store, *a, **k))
    finetune = {"method": "freeze", "read_from": str(pretrained_ckpt), "config": {"train_last": 1}}

    def freeze(name: str, n: int) -> dict:
        return run(make_config(tmp_path / name, data={"dataset": "demo_volume", "n_samples": n}, finetune=finetune),
                   progress=False)

    first = freeze("first", 60)
    assert computed == [first["n_train"] + first["n_val"] + first["n_test"]]
    computed.clear()
    second = freeze("second", 60)
    assert computed == [] and second["test"] == first["test"]  # nothing computed; identical predictions
    bigger = freeze("bigger", 80)  # the 80 samples hold the 60 (splits are nested) and the test set is fixed
    assert computed == [20]

    # Every row of demo_volume: the 80-sample run's rows come from the cache, the others are computed.
    data = job_module.dataset(pretrained, demo_volume)
    start = len(pretrained.encoder.blocks()) - 1
    computed.clear()
    cached = prefix_module.cached_prefix(pretrained, start, data.keys, data.inputs, torch.device("cpu"))
    again = prefix_module.cached_prefix(pretrained, start, data.keys, data.inputs, torch.device("cpu"))
    assert computed == [len(demo_volume) - bigger["n_train"] - bigger["n_val"] - bigger["n_test"]]
    fresh = compute(data.inputs, pretrained.encoder, start, torch.device("cpu"))
    for key, rows in fresh.items():
        assert torch.equal(again[key], cached[key])
        torch.testing.assert_close(cached[key], rows, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("descriptors", [False, True])
def test_prefix_batches_give_the_encoders_own_output(pretrained, volume_data, descriptors):
    """Any mini-batch of a prefix store, in any order, gives what the whole encoder gives on it."""
    encoder = (CGCNN(CGCNN.Config(atom_descriptors=True, pooling="mean+max"), pretrained.graphs) if descriptors
               else pretrained.encoder).eval()
    for start in range(1, len(encoder.blocks()) + 1):
        store = PrefixStore(volume_data.inputs, encoder, start, torch.device("cpu"), batch_size=7)
        index = torch.randperm(len(store), generator=torch.Generator().manual_seed(start))[:25]
        with torch.no_grad():
            torch.testing.assert_close(encoder(store.batch(index)), encoder(volume_data.inputs.batch(index)))


def test_structure_cache_computes_each_missing_structure_once_and_reads_rows_in_the_asked_order(tmp_path):
    """Variable rows per structure (as CHGNet's atoms and bonds), duplicate keys, a file of another layout."""
    from mattransfer.training.structure_cache import cached_rows

    sizes = {"a": 2, "b": 1, "c": 3}  # rows of structure "a": [10, 11], "b": [20], "c": [30, 31, 32]
    calls = []

    def compute(positions: list[int]) -> tuple[dict, dict]:
        calls.append([keys[k] for k in positions])
        counts = torch.tensor([sizes[keys[k]] for k in positions])
        rows = torch.cat([10 * (ord(keys[k]) - 96) + torch.arange(sizes[keys[k]]) for k in positions])
        return {"atoms": rows.float()}, {"atoms": counts}

    path = tmp_path / "cache.pt"
    torch.save({"keys": ["a"], "latent": torch.zeros(1, 4)}, path)  # a latent cache written before this layout
    keys = ["c", "a", "c"]
    rows, counts = cached_rows(path, keys, [2, 1], compute)
    assert calls == [["a", "c"]]  # computed once each, in store order
    assert rows["atoms"].tolist() == [30, 31, 32, 10, 11] and counts["atoms"].tolist() == [3, 2]
    keys = ["b", "a", "c", "a"]
    rows, counts = cached_rows(path, keys, [3, 0, 2], compute)
    assert calls[1:] == [["b"]]  # only the new structure
    assert rows["atoms"].tolist() == [10, 11, 20, 30, 31, 32] and counts["atoms"].tolist() == [2, 1, 3]
    assert cached_rows(path, keys, [0, 1, 2], compute)[0]["atoms"].tolist() == [20, 10, 11, 30, 31, 32]
    assert len(calls) == 2
