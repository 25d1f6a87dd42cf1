"""`TransferModel`: encoder + head + the target's transform and standardisation, saved and loaded as one checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor, nn

from mattransfer.errors import ConfigError
from mattransfer.fileio import atomic_path
from mattransfer.graphs.build import GraphSettings
from mattransfer.graphs.inputs import InputBatch, InputStore
from mattransfer.models.domain import Domain
from mattransfer.models.encoders import ENCODERS
from mattransfer.models.encoders.base import PRETRAINED, load_weights_only, pretrained_weights
from mattransfer.models.head import HeadConfig, MLPHead
from mattransfer.models.lora import inject_lora

CHECKPOINT_FORMAT = 1


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    encoder: dict[str, Any] = Field(default_factory=lambda: {"name": "cgcnn"}, validate_default=True)
    head: HeadConfig = Field(default_factory=HeadConfig)

    @field_validator("encoder")
    @classmethod
    def _validate_encoder(cls, value: dict[str, Any]) -> dict[str, Any]:
        options = dict(value)
        name = options.pop("name", "cgcnn")
        if name not in ENCODERS:
            raise ValueError(f"unknown encoder {name!r}; available: {sorted(ENCODERS)}")
        return {"name": name, **ENCODERS[name].Config(**options).model_dump()}


def saved_model_config(saved: dict[str, Any]) -> ModelConfig:
    """The config a checkpoint was saved with. An encoder option it lacks was added after it was written and
    reads as the encoder's ``added_options`` value (what the checkpoint computed), not as today's default."""
    encoder = dict(saved.get("encoder", {}))
    added = getattr(ENCODERS.get(encoder.get("name", "cgcnn")), "added_options", {})
    return ModelConfig(**{**saved, "encoder": {**added, **encoder}})


class TransferModel(nn.Module):
    """``encoder`` (structure → latent) and ``head`` (latent → standardised target).

    ``frozen`` names submodules that fine-tuning froze; they stay in eval mode in training so that
    batch-norm statistics are frozen along with the weights. Freezing is a property of a training run,
    not of the weights: a loaded model starts with nothing frozen (LoRA base weights excepted).
    """

    def __init__(self, config: ModelConfig, graphs: GraphSettings) -> None:
        super().__init__()
        self.config = config
        self.graphs = graphs
        options = dict(config.encoder)
        encoder_cls = ENCODERS[options.pop("name")]
        self.encoder = encoder_cls(encoder_cls.Config(**options), graphs)
        self.head = MLPHead(self.encoder.out_dim, config.head)
        self.register_buffer("target_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("target_std", torch.ones((), dtype=torch.float64))
        # ``transform``: what the head learns, standardised: the target ("none") or its log ("log");
        # ``clip``: [min, max] of the training targets that predictions are clipped to, or None
        self.target: dict[str, Any] = {"name": "", "unit": "", "dataset": "", "transform": "none", "clip": None}
        self.frozen: list[str] = []
        self.lora: dict[str, float] | None = None
        self.domain: Domain | None = None  # of the data the model was last trained on (models/domain.py)
        self.provenance: dict[str, Any] = {}  # package version and git commit that trained it
        # `training_record`s of every training these weights went through, pre-training first.
        self.training_data: list[dict[str, Any]] = []

    def forward(self, batch: InputBatch) -> Tensor:
        return self.head(self.encoder(batch))

    @torch.no_grad()
    def predict(self, batch: InputBatch) -> Tensor:
        """Predictions in the target's physical unit (float64)."""
        return self.predict_latent(self.encoder(batch))

    @torch.no_grad()
    def predict_latent(self, latent: Tensor, clip: bool = True) -> Tensor:
        """The head's predictions from latent vectors, in the target's physical unit (float64);
        ``clip=False``: the head's own value where the model clips (`unstandardise`)."""
        return self.unstandardise(self.head(latent).double(), clip)

    def standardise(self, y: Tensor) -> Tensor:
        """Targets in the physical unit as the head learns them: transformed, then standardised (float32)."""
        return ((self._transformed(y) - self.target_mean) / self.target_std).float()

    def unstandardise(self, values: Tensor, clip: bool = True) -> Tensor:
        """The inverse of `standardise`: standardised values back in the target's physical unit (float64),
        clipped to the training targets' range when the model was trained to (``training.clip_to_train_range``)."""
        values = values.double() * self.target_std + self.target_mean
        values = values.exp() if self.target.get("transform") == "log" else values
        return self.clipped(values) if clip else values

    def clipped(self, values: Tensor) -> Tensor:
        """Predictions in the target's unit clipped to the training targets' range, where the model clips."""
        bounds = self.target.get("clip")
        return values.clamp(*bounds) if bounds else values

    def _transformed(self, y: Tensor) -> Tensor:
        if self.target.get("transform") != "log":
            return y
        if (y <= 0).any():
            raise ConfigError(
                f"target_transform log needs strictly positive targets; {self.target['dataset']} has"
                f" {int((y <= 0).sum())} at or below 0 (min {float(y.min()):g}): use target_transform: none.")
        return y.log()

    @torch.no_grad()
    def embed(self, store: InputStore, pooling: str | None = None, batch_size: int = 256) -> Tensor:
        """Latent vectors (len(store), out_dim) of every graph of ``store``, in eval mode, on the model's device.

        ``pooling`` (a `pool` spec) overrides the encoder's own; the head was trained on the latter.
        """
        self.eval()
        device = self.target_mean.device
        chunks = torch.arange(len(store)).split(batch_size)
        latent = [self.encoder(store.batch(chunk).to(device), pooling=pooling) for chunk in chunks]
        return torch.cat(latent) if latent else torch.zeros(0, self.encoder.out_dim, device=device)

    def set_target(self, dataset: str, name: str, unit: str, y_train: Tensor, transform: str = "none",
                   clip: bool = False) -> None:
        """Standardise with the mean and std of the training split's ``transform``-ed targets (std of
        one sample is taken as 1). ``log`` of a target not strictly positive is a `ConfigError`.
        ``clip``: predictions are clipped to the training targets' [min, max] from now on.

        A new target means new training data: the old training domain no longer applies.
        """
        self.domain = None
        self.target = {"dataset": dataset, "name": name, "unit": unit, "transform": transform,
                       "clip": [float(y_train.min()), float(y_train.max())] if clip and len(y_train) else None}
        y_train = self._transformed(y_train)
        self.target_mean.fill_(float(y_train.mean()))
        std = float(y_train.std()) if len(y_train) > 1 else 1.0
        self.target_std.fill_(std if std > 0 else 1.0)

    def reset_head(self) -> None:
        self.head = MLPHead(self.encoder.out_dim, self.config.head)

    def freeze(self, names: list[str]) -> None:
        for name in names:
            try:
                module = self.get_submodule(name)
            except AttributeError as exc:
                raise ConfigError(f"cannot freeze {name!r}: no such module in the model ({exc}).") from exc
            module.requires_grad_(False)
            self.frozen.append(name)
        self.train(self.training)

    def add_lora(self, rank: int, alpha: float) -> list[str]:
        """Freeze the encoder and give its linear layers low-rank adapters."""
        self.freeze(["encoder"])
        wrapped = inject_lora(self.encoder, rank, alpha)
        if not wrapped:  # else lora would silently train the head alone, i.e. be `heads`
            raise ConfigError(f"lora: the {type(self.encoder).__name__} encoder has no torch.nn.Linear or PyG Linear"
                              " layers to adapt (e.g. its linears are e3nn's); use heads, freeze or full.")
        self.frozen.remove("encoder")  # adapters train; base weights stay frozen by requires_grad
        for name in self.encoder_norm_layers():
            self.frozen.append(name)
        self.lora = {"rank": rank, "alpha": alpha}
        self.train(self.training)
        return wrapped

    def encoder_norm_layers(self) -> list[str]:
        return [f"encoder.{n}" for n, m in self.encoder.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def train(self, mode: bool = True) -> TransferModel:
        super().train(mode)
        for name in self.frozen:
            self.get_submodule(name).eval()
        return self

    def save(self, path: Path, **extra: Any) -> None:
        """Everything needed to rebuild the model, plus ``extra`` metadata (e.g. the run's config)."""
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "model": self.config.model_dump(),
            "graphs": self.graphs.model_dump(),
            "target": self.target,
            "lora": self.lora,
            "state_dict": self.state_dict(),
            "domain": self.domain.to_checkpoint() if self.domain is not None else None,
            "provenance": self.provenance,
            "training_data": self.training_data,
            **extra,
        }
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)

    @classmethod
    def load(cls, path: Path) -> TransferModel:
        """Rebuild a saved model. Only tensors and plain types are unpickled: a checkpoint never runs code."""
        checkpoint = read_checkpoint(path)
        try:
            model = cls(saved_model_config(checkpoint["model"]), GraphSettings(**checkpoint["graphs"]))
            if checkpoint["lora"]:
                model.add_lora(int(checkpoint["lora"]["rank"]), checkpoint["lora"]["alpha"])
            # Pre-trainings of before `training.objectives` saved their Bravais classifier: no use now.
            state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("aux_head.")}
            model.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            lines = [line.strip() for line in str(exc).strip().splitlines()]
            reason = next((line for line in lines[1:] if line), lines[0])  # the first mismatch, not the preamble
            raise ConfigError(f"{path}: its weights do not fit the architecture it records ({reason}).") from exc
        # checkpoints from before transforms and clipping had neither
        model.target = {"transform": "none", "clip": None, **checkpoint["target"]}
        model.domain = Domain.from_checkpoint(checkpoint["domain"]) if checkpoint.get("domain") else None
        model.provenance = checkpoint.get("provenance") or {}
        model.training_data = list(checkpoint.get("training_data") or [])
        model.frozen.clear()  # add_lora froze batch norms for its run; this model has not been fine-tuned yet
        return model


    @classmethod
    def from_pretrained(cls, name: str, head: HeadConfig | None = None, pooling: str | None = None) -> TransferModel:
        """A package's pre-trained encoder (`register_pretrained`) under a fresh ``head`` (default: an MLP
        that standardises its input features); ``pooling`` overrides the encoder's default (pooling is no
        weight: any choice keeps the pre-training)."""
        options, state = pretrained_weights(name)
        options = {**options, **({"pooling": pooling} if pooling else {})}
        model = cls(ModelConfig(encoder=options, head=head or HeadConfig(input_norm=True)), GraphSettings())
        model.encoder.load_state_dict(state)
        model.target = {"dataset": "", "name": f"pre-trained {name}", "unit": ""}
        model.provenance = {"pretrained": name}
        return model


def is_pretrained_name(source: str | Path) -> bool:
    """Whether ``source`` names a package's pre-trained model (``chgnet:0.3.0``) rather than a checkpoint file."""
    text = str(source)
    return text in PRETRAINED or (":" in text and "/" not in text and not Path(text).exists())


def load_source(source: str | Path, head: HeadConfig | None = None, pooling: str | None = None) -> TransferModel:
    """What a fine-tune starts from: a checkpoint file, or a pre-trained model named as ``package:version``
    (``head`` and ``pooling`` apply to the latter; a checkpoint keeps its own)."""
    if is_pretrained_name(source):
        return TransferModel.from_pretrained(str(source), head, pooling)
    return TransferModel.load(Path(source))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents, loaded with ``weights_only``: anything but tensors and plain types is refused."""
    checkpoint = load_weights_only(Path(path), "mattransfer checkpoint")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a mattransfer checkpoint of format {CHECKPOINT_FORMAT}.")
    return checkpoint
