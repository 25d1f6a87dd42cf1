"""Low-rank adapters: y = x W0ᵀ + (alpha / r) · x (A B)ᵀ with W0 frozen and A, B trained.

A module of our own rather than ``peft``: peft pulls in transformers and accelerate and finds layers
by ``torch.nn.Linear`` type, while PyG's convolutions use ``torch_geometric.nn.Linear``; wrapping
both takes the few lines below.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.nn import Linear as PygLinear

LINEAR_TYPES = (nn.Linear, PygLinear)


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-``rank`` update that starts at zero."""

    def __init__(self, base: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features = base.weight.shape
        self.base = base
        self.base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(out_features, rank))
        self.lora_b = nn.Parameter(torch.zeros(rank, in_features))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * (x @ self.lora_b.T) @ self.lora_a.T

    @property
    def weight(self) -> Tensor:
        """The merged weight W0 + (alpha / r) A B, for layers that use a linear map by its matrix."""
        return self.base.weight + self.scale * self.lora_a @ self.lora_b

    @property
    def bias(self) -> Tensor | None:
        return self.base.bias


def inject_lora(module: nn.Module, rank: int, alpha: float) -> list[str]:
    """Wrap every linear layer inside ``module`` in `LoRALinear`; return the wrapped names."""
    targets = [name for name, child in module.named_modules() if isinstance(child, LINEAR_TYPES)]
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        setattr(parent, attr, LoRALinear(getattr(parent, attr), rank, alpha))
    return targets
