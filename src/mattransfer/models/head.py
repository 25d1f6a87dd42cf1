"""The prediction head: an MLP from the encoder's latent vector to one number."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class HeadConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: list[int] = Field(default_factory=lambda: [64], description="hidden layer sizes")
    dropout: float = Field(0.0, ge=0, lt=1)
    input_norm: bool = Field(False, description="standardise each latent feature (batch norm) before the MLP;"
                                                " the default for packages' pre-trained encoders")


class MLPHead(nn.Sequential):
    def __init__(self, in_dim: int, config: HeadConfig, out_dim: int = 1) -> None:
        # A frozen package encoder's features have no common scale (a std-pooled block beside a mean-pooled
        # one): unstandardised, CHGNet's head had not converged after 500 epochs (bench/README.md).
        layers: list[nn.Module] = [nn.BatchNorm1d(in_dim)] if config.input_norm else []
        for width in config.hidden:
            layers += [nn.Linear(in_dim, width), nn.Softplus()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)

    def forward(self, latent: Tensor) -> Tensor:
        return super().forward(latent).squeeze(-1)
