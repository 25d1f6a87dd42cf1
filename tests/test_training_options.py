"""Learning-rate schedules and the target transform: what each changes, and that the defaults change nothing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from mattransfer.errors import ConfigError
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training.job import Dataset, train_and_test
from mattransfer.training.run import run
from mattransfer.training.trainer import Batches, EmbeddingBatches, TrainingOptions, fit

from conftest import MODEL

CPU = torch.device("cpu")


def _graph_batches(data: Dataset, split, batch_size: int = 16) -> tuple[Batches, Batches]:
    y = data.targets()
    y = ((y - y.mean()) / y.std()).float()
    return tuple(Batches(data.inputs, pos, y[pos], batch_size, CPU)
                 for pos in (data.inputs.positions(ids) for ids in (split.train, split.val)))


class _CannotLearn(nn.Module):
    """Predicts 0 whatever its weight: its gradient is 0, so it never moves and its validation loss never improves."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return latent[:, 0] * 0 + self.weight * 0


def _lr_history(volume_data: Dataset, volume_split, options: TrainingOptions) -> list[float]:
    train, val = _graph_batches(volume_data, volume_split)
    latent = torch.randn(len(volume_data.inputs), 4)
    train, val = (EmbeddingBatches(b, nn.Identity(), latent) for b in (train, val))
    model = _CannotLearn()
    result = fit(model, train, val, [{"params": model.parameters(), "lr": options.lr}], options, seed=0,
                 progress=False)
    return [row["lr_0"] for row in result.history]


def test_constant_schedule_is_plain_adamw_bit_for_bit(volume_data, volume_split, graph_settings):
    """The default (constant) trains exactly as a bare AdamW loop at a fixed rate, as before schedules existed."""
    torch.manual_seed(0)
    model = TransferModel(ModelConfig(**MODEL), graph_settings)
    reference = copy.deepcopy(model)
    options = TrainingOptions(lr=5e-3, max_epochs=4, patience=4, batch_size=16)
    train, val = _graph_batches(volume_data, volume_split)
    result = fit(model, train, val, [{"params": model.parameters(), "lr": options.lr}], options, seed=0,
                 progress=False)

    optimizer = torch.optim.AdamW(reference.parameters(), lr=options.lr, weight_decay=0.0, fused=True)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(options.max_epochs):
        reference.train()
        total = 0.0
        for batch, y, _ in train.epoch(generator):
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.l1_loss(reference(batch), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
        losses.append(total / len(train))
    assert [row["train_loss"] for row in result.history] == losses
    assert {row["lr_0"] for row in result.history} == {options.lr}


def test_cosine_schedule_warms_up_then_decays(volume_data, volume_split):
    options = TrainingOptions(lr=0.01, max_epochs=6, patience=6, schedule="cosine", warmup_epochs=2)
    expected = [0.005, 0.01] + [0.01 * 0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert _lr_history(volume_data, volume_split, options) == pytest.approx(expected, rel=1e-12)


def test_plateau_schedule_cuts_the_rate_when_validation_stalls(volume_data, volume_split):
    # The validation loss is best at epoch 0 and never improves: a cut after each 3 (patience + 1) stalled epochs.
    options = TrainingOptions(lr=0.01, max_epochs=9, patience=9, schedule="plateau", plateau_patience=2,
                              plateau_factor=0.5)
    expected = [0.01] * 4 + [0.005] * 3 + [0.0025] * 2
    assert _lr_history(volume_data, volume_split, options) == pytest.approx(expected, rel=1e-12)


def test_warmup_belongs_to_the_cosine_schedule():
    with pytest.raises(ValueError, match="warmup_epochs is part of the cosine schedule"):
        TrainingOptions(warmup_epochs=5)


def test_log_transform_round_trips_in_physical_units(graph_settings):
    model = TransferModel(ModelConfig(**MODEL), graph_settings)
    y = torch.tensor([0.5, 2.0, 40.0, 900.0], dtype=torch.float64)
    model.set_target("d", "eps", "", y, transform="log")
    assert float(model.target_mean) == pytest.approx(float(y.log().mean()))
    assert torch.allclose(model.unstandardise(model.standardise(y)), y, rtol=1e-6)
    latent = torch.randn(3, model.encoder.out_dim)
    head = model.head(latent).double()
    assert torch.allclose(model.predict_latent(latent), (head * model.target_std + model.target_mean).exp())


def test_log_transform_checkpoint_predicts_the_same_physical_values(volume_data, volume_split, graph_settings,
                                                                     tmp_path):
    torch.manual_seed(0)
    model = TransferModel(ModelConfig(**MODEL), graph_settings)
    options = TrainingOptions(lr=5e-3, max_epochs=3, patience=3, batch_size=16, target_transform="log")
    _, metrics = train_and_test(model, volume_data, volume_split, options,
                                [{"params": model.parameters(), "lr": options.lr}], seed=0, device=CPU,
                                progress=False)
    model.save(tmp_path / "log.ckpt")
    loaded = TransferModel.load(tmp_path / "log.ckpt").eval()
    batch = volume_data.inputs.batch(torch.arange(20))
    model.eval()
    assert loaded.target["transform"] == "log"
    assert torch.equal(loaded.predict(batch), model.predict(batch))
    # In Å³/atom (~14), not in log units (~2.6); and the test metrics are of those predictions.
    y = volume_data.targets()
    assert float(loaded.predict(batch).mean()) == pytest.approx(float(y.mean()), rel=0.5)
    test = volume_data.inputs.positions(volume_split.test)
    errors = loaded.predict(volume_data.inputs.batch(test)) - y[test]
    assert metrics["test"]["mae"] == pytest.approx(float(errors.abs().mean()), rel=1e-6)


def test_log_transform_of_non_positive_targets_is_a_one_line_error(make_config):
    # demo_energy: energies per atom, some at or below 0
    config = make_config(training={"target_transform": "log"})
    with pytest.raises(ConfigError, match="target_transform log needs strictly positive targets; demo_energy has") as error:
        run(config, progress=False)
    assert "\n" not in str(error.value)


def test_predictions_are_clipped_to_the_training_targets_range(volume_data, volume_split, graph_settings, tmp_path):
    """The default clips every prediction, and so the test metrics, to [min, max] of the training split's
    targets; the checkpoint keeps the bounds; ``clip=False`` gives the head's own value; off clips nothing."""
    torch.manual_seed(0)
    model = TransferModel(ModelConfig(**MODEL), graph_settings)
    options = TrainingOptions(lr=5e-3, max_epochs=3, patience=3, batch_size=16)
    assert options.clip_to_train_range
    _, metrics = train_and_test(model, volume_data, volume_split, options,
                                [{"params": model.parameters(), "lr": options.lr}], seed=0, device=CPU,
                                progress=False)
    y = volume_data.targets()
    low, high = model.target["clip"]
    train = volume_data.inputs.positions(volume_split.train)
    assert (low, high) == (float(y[train].min()), float(y[train].max()))

    model.eval()
    # a latent far out: the head's value leaves the range, the prediction stops at its edge
    latent = torch.randn(8, model.encoder.out_dim) * 1e3
    raw, clipped = model.predict_latent(latent, clip=False), model.predict_latent(latent)
    assert ((raw < low) | (raw > high)).any()
    assert torch.equal(clipped, raw.clamp(low, high))

    model.save(tmp_path / "clip.ckpt")
    loaded = TransferModel.load(tmp_path / "clip.ckpt").eval()
    assert loaded.target["clip"] == [low, high] and torch.equal(loaded.predict_latent(latent), clipped)
    test = volume_data.inputs.positions(volume_split.test)
    errors = loaded.predict(volume_data.inputs.batch(test)) - y[test]
    assert metrics["test"]["mae"] == pytest.approx(float(errors.abs().mean()), rel=1e-6)

    model.set_target("d", "v", "", y[train], clip=False)
    assert model.target["clip"] is None and torch.equal(model.predict_latent(latent), model.predict_latent(latent, clip=False))


def test_weight_averaging_validates_and_returns_the_moving_average_of_the_steps(volume_data, volume_split,
                                                                               graph_settings):
    """``ema_decay``: the raw weights train as without it; the model validated and returned is the
    exponential moving average of the weights after each step, taken at the best epoch; frozen weights stay."""
    def trained(decay: float) -> tuple[TransferModel, object, list[dict[str, torch.Tensor]]]:
        torch.manual_seed(0)
        model = TransferModel(ModelConfig(**MODEL), graph_settings)
        model.freeze(["encoder.embedding"])
        steps = []
        hook = register_optimizer_step_post_hook(
            lambda *_: steps.append({k: v.detach().clone() for k, v in model.named_parameters()}))
        try:
            options = TrainingOptions(lr=5e-3, max_epochs=5, patience=5, batch_size=16, ema_decay=decay)
            params = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": options.lr}]
            result = fit(model, *_graph_batches(volume_data, volume_split), params, options, seed=0, progress=False)
        finally:
            hook.remove()
        return model, result, steps

    torch.manual_seed(0)
    initial = TransferModel(ModelConfig(**MODEL), graph_settings)
    plain_model, plain, _ = trained(0.0)
    model, averaged, steps = trained(0.8)
    assert [r["train_loss"] for r in averaged.history] == [r["train_loss"] for r in plain.history]
    assert [r["val_loss"] for r in averaged.history] != [r["val_loss"] for r in plain.history]

    per_epoch = len(steps) // len(averaged.history)
    expected = dict(steps[0])
    for step in steps[1:(averaged.best_epoch + 1) * per_epoch]:
        expected = {k: 0.8 * v + 0.2 * step[k] for k, v in expected.items()}
    for name, value in model.named_parameters():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
        if name.startswith("encoder.embedding."):
            assert torch.equal(value, initial.state_dict()[name]), f"{name} changed although frozen"
    assert any(not torch.equal(v, plain_model.state_dict()[k]) for k, v in model.named_parameters())
