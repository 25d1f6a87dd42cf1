"""`heads` trains on cached encoder embeddings: the same result as running the frozen encoder every step."""

from __future__ import annotations

import copy

import torch

from mattransfer.finetune import METHODS, param_groups
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
