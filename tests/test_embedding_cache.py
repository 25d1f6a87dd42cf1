"""`heads` trains on cached encoder embeddings: the same result as running the frozen encoder every step."""

from __future__ import annotations

import copy

import torch

from mattransfer.finetune import METHODS, param_groups
from mattransfer.models.model import TransferModel
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
