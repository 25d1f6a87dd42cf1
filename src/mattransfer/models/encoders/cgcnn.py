"""CGCNN (Xie & Grossman, PRL 2018): gated graph convolutions over a Gaussian-expanded distance graph."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch_geometric.nn import CGConv, global_add_pool, global_max_pool, global_mean_pool
from torch_geometric.nn.models.schnet import GaussianSmearing

from mattransfer.graphs.build import GraphSettings
from mattransfer.graphs.store import GraphBatch
from mattransfer.models.encoders.base import Encoder, register_encoder

POOLING = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}


@register_encoder("cgcnn")
class CGCNN(Encoder):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        hidden: int = Field(64, ge=1, description="atom feature size")
        n_layers: int = Field(3, ge=1, description="graph convolution layers")
        n_gaussians: int = Field(40, ge=2, description="Gaussians in the distance expansion")
        max_z: int = Field(100, ge=1, description="largest atomic number in the embedding table")
        batch_norm: bool = True
        pooling: Literal["mean", "sum", "max"] = "mean"

    def __init__(self, config: Config, graphs: GraphSettings) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.max_z + 1, config.hidden)
        self.expansion = GaussianSmearing(0.0, graphs.cutoff, config.n_gaussians)
        self.layers = nn.ModuleList(
            CGConv(config.hidden, dim=config.n_gaussians, batch_norm=config.batch_norm)
            for _ in range(config.n_layers)
        )
        self.pool = POOLING[config.pooling]
        self.out_dim = config.hidden

    def forward(self, batch: GraphBatch) -> Tensor:
        x = self.embedding(batch.z)
        edge_attr = self.expansion(batch.distance)
        for conv in self.layers:
            x = F.softplus(conv(x, batch.edge_index, edge_attr))
        return self.pool(x, batch.batch, size=batch.num_graphs)
