"""Fine-tuning methods change exactly what they promise to change, bit for bit."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from mattransfer.errors import ConfigError
from mattransfer.finetune import METHODS, param_groups
from mattransfer.finetune.lora import LoraOptions
from mattransfer.models.lora import LoRALinear
from mattransfer.models.model import TransferModel
from mattransfer.training.run import run


def _encoder_state(model: TransferModel) -> dict[str, torch.Tensor]:
    """Encoder parameters and buffers (batch-norm running stats included)."""
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> dict[str, bool]:
    return {k: not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)}


def test_heads_leaves_encoder_bit_identical(pretrained, finetune):
    reference = _encoder_state(pretrained)
    assert any("running_mean" in k for k in reference)  # there are batch-norm stats to protect
    model, before = finetune(pretrained, "heads", epochs=3)
    after = _encoder_state(model)
    assert after.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(after[key], value), f"encoder.{key} changed under `heads`"
    assert all(not p.requires_grad for p in model.encoder.parameters())
    head_changed = _changed(before, model.state_dict(), "head.")
    assert head_changed and all(head_changed.values()), head_changed


def test_heads_through_run_keeps_the_pretrained_encoder(pretrained_ckpt, make_config, tmp_path):
    """The whole pipeline: load → prepare → train on another property → save."""
    config = make_config(
        tmp_path / "heads", data={"dataset": "demo_volume", "n_samples": 40},
        finetune={"method": "heads", "read_from": str(pretrained_ckpt)},
    )
    summary = run(config, progress=False)
    assert summary["method"] == "heads"
    tuned = TransferModel.load(tmp_path / "heads" / "model.ckpt")
    reference = _encoder_state(TransferModel.load(pretrained_ckpt))
    for key, value in _encoder_state(tuned).items():
        assert torch.equal(value, reference[key]), key
    assert summary["n_trainable"] == sum(p.numel() for p in tuned.head.parameters())
    assert tuned.target["name"] == "volume_per_atom"
    # Per-sample test predictions are the ones the reported metrics were computed from.
    predictions = pd.read_csv(tmp_path / "heads" / "test_predictions.csv")
    split = json.loads((tmp_path / "heads" / "split.json").read_text())
    assert list(predictions["id"]) == split["test"]
    assert abs((predictions["y_pred"] - predictions["y_true"]).abs().mean() - summary["test"]["mae"]) < 1e-9


def test_lora_keeps_base_weights_and_trains_adapters(pretrained, finetune):
    reference = _encoder_state(pretrained)
    model, before = finetune(pretrained, "lora", epochs=3, rank=2, alpha=4.0)
    after = _encoder_state(model)
    adapters = [n for n, m in model.encoder.named_modules() if isinstance(m, LoRALinear)]
    assert len(adapters) == 2 * len(model.encoder.layers) + 1  # lin_f and lin_s of each layer, the element map
    for name in adapters:
        for param in ("weight", "bias"):
            assert torch.equal(after[f"{name}.base.{param}"], reference[f"{name}.{param}"]), f"{name}.{param}"
        assert not torch.equal(after[f"{name}.lora_a"], before[f"encoder.{name}.lora_a"]), f"{name}.lora_a"
        assert not torch.equal(after[f"{name}.lora_b"], before[f"encoder.{name}.lora_b"]), f"{name}.lora_b"
        assert torch.count_nonzero(before[f"encoder.{name}.lora_b"]) == 0  # B starts at zero
    # Everything else in the encoder (embedding, batch-norm weights and running stats) is untouched.
    for key, value in after.items():
        if "lora_" not in key:
            assert torch.equal(value, reference[key.replace(".base.", ".")]), key
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("head.") for n in trainable)


def test_freeze_k_layers(pretrained, finetune):
    reference = _encoder_state(pretrained)
    assert len(pretrained.encoder.layers) == 2
    model, _ = finetune(pretrained, "freeze", epochs=3, layers=1)
    after = _encoder_state(model)
    frozen = [k for k in after if k.startswith(("embedding.", "layers.0."))]
    assert frozen
    for key in frozen:
        assert torch.equal(after[key], reference[key]), f"{key} changed although frozen"
    layer_1 = _changed(reference, after, "layers.1.")
    assert layer_1["layers.1.lin_f.weight"] and layer_1["layers.1.lin_s.weight"]
    assert layer_1["layers.1.bn.running_mean"]  # the unfrozen layer's batch norm keeps learning


def test_freeze_more_layers_than_the_encoder_has(pretrained):
    options_cls, prepare = METHODS["freeze"]
    with pytest.raises(ConfigError, match="layers=3"):
        prepare(pretrained, options_cls(layers=3))


def test_full_trains_the_encoder_and_scratch_forgets_it(pretrained, pretrained_ckpt, finetune):
    reference = _encoder_state(pretrained)
    model, _ = finetune(pretrained, "full", epochs=2)
    assert all(_changed(reference, _encoder_state(model), "layers.").values())

    options_cls, prepare = METHODS["scratch"]
    scratch = prepare(TransferModel.load(pretrained_ckpt), options_cls())
    weights = {k: v for k, v in scratch.encoder.state_dict().items() if k.startswith("embedding.") and k != "embedding.properties"}
    assert weights and not any(torch.equal(v, reference[k]) for k, v in weights.items())
    assert scratch.config == pretrained.config  # same architecture, new weights


def test_inherit_head_keeps_the_pretrained_head(pretrained_ckpt):
    pretrained = TransferModel.load(pretrained_ckpt)
    head = {k: v.clone() for k, v in pretrained.head.state_dict().items()}
    options_cls, prepare = METHODS["heads"]
    kept = prepare(pretrained, options_cls(inherit_head=True))
    assert all(torch.equal(v, head[k]) for k, v in kept.head.state_dict().items())
    fresh = prepare(TransferModel.load(pretrained_ckpt), options_cls())
    assert not all(torch.equal(v, head[k]) for k, v in fresh.head.state_dict().items())


def test_inherit_head_refuses_another_kind_of_property(pretrained_ckpt, make_config, tmp_path):
    config = make_config(
        data={"dataset": "demo_volume", "n_samples": 40},
        finetune={"method": "full", "read_from": str(pretrained_ckpt), "config": {"inherit_head": True}},
    )
    with pytest.raises(ConfigError, match="inherit_head"):
        run(config, progress=False)


def test_param_groups_learning_rates(pretrained):
    options = LoraOptions(rank=2, lr_encoder=1e-4, lr_head=1e-2)
    model = METHODS["lora"][1](pretrained, options)
    groups = {g["name"]: g for g in param_groups(model, options, lr=1e-3)}
    assert groups["encoder"]["lr"] == 1e-4 and groups["head"]["lr"] == 1e-2
    encoder_ids = {id(p) for p in groups["encoder"]["params"]}
    assert encoder_ids == {id(p) for n, p in model.encoder.named_parameters() if "lora_" in n}
