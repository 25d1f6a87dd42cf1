"""The prediction head: an MLP from the encoder's latent vector to one number."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: list[int] = Field(default_factory=lambda: [64], description="hidden layer sizes")
    dropout: float = Field(0.0, ge=0, lt=1)


class MLPHead(nn.Sequential):
    def __init__(self, in_dim: int, config: HeadConfig, out_dim: int = 1) -> None:
        layers: list[nn.Module] = []
        for width in config.hidden:
            layers += [nn.Linear(in_dim, width), nn.Softplus()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)

    def forward(self, latent: Tensor) -> Tensor:
        return super().forward(latent).squeeze(-1)
