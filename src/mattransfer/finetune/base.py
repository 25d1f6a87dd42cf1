"""What every fine-tuning method shares: its options, the registry, and the optimizer's groups.

A method is one file with an ``Options`` model and a ``prepare(pretrained, options)`` that returns
the model to train (modified in place, or a fresh one for ``scratch``). The optimizer and scheduler
are always new; encoder and head can have their own learning rates.
"""

from __future__ import annotations

from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from mattransfer.models.model import TransferModel


class MethodOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr_encoder: float | None = Field(None, gt=0, description="encoder learning rate (default: training.lr)")
    lr_head: float | None = Field(None, gt=0, description="head learning rate (default: training.lr)")
    inherit_head: bool = Field(False, description="start from the pre-trained head (same kind of property)")


Prepare = Callable[[TransferModel, MethodOptions], TransferModel]
METHODS: dict[str, tuple[type[MethodOptions], Prepare]] = {}


def register_method(name: str, options: type[MethodOptions]) -> Callable[[Prepare], Prepare]:
    def decorate(prepare: Prepare) -> Prepare:
        METHODS[name] = (options, prepare)
        return prepare

    return decorate


def new_or_inherited_head(model: TransferModel, options: MethodOptions) -> TransferModel:
    """A new property gets a fresh head unless ``inherit_head`` asks to keep the pre-trained one."""
    if not options.inherit_head:
        model.reset_head()
    return model


def param_groups(model: TransferModel, options: MethodOptions | None, lr: float) -> list[dict]:
    """Trainable parameters in two groups, encoder and head, each with its learning rate."""
    lr_encoder = (options.lr_encoder if options else None) or lr
    lr_head = (options.lr_head if options else None) or lr
    groups = [
        {"name": "encoder", "params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": lr_encoder},
        {"name": "head", "params": [p for p in model.head.parameters() if p.requires_grad], "lr": lr_head},
    ]
    return [g for g in groups if g["params"]]
