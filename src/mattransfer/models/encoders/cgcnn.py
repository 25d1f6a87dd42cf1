"""CGCNN (Xie & Grossman, PRL 2018): gated graph convolutions over a Gaussian-expanded distance graph.

The defaults are not the paper's (measured in docs/results/recipe, "The default since session 10"): each
element starts from a linear map of its Magpie properties instead of a learned vector, the readout also
pools each atom's unconvolved descriptors, and it pools by mean, max, min and std. ``elements: learned,
atom_descriptors: false, pooling: mean`` is the default of before (``added_options``: what a checkpoint
without these options computed).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch_geometric.nn import CGConv
from torch_geometric.nn.models.schnet import GaussianSmearing
from torch_geometric.utils import scatter

from mattransfer.graphs.build import GraphSettings, RadiusGraph
from mattransfer.graphs.store import GraphBatch
from mattransfer.models.encoders.base import Encoder, Pooling, register_encoder
from mattransfer.models.encoders.magpie_mlp import magpie_table


def edge_linear(weight: Tensor, bias: Tensor, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
    """``F.linear([x_i, x_j, e_ij], weight, bias)`` on every edge j → i, its atom blocks applied once per atom.

    The atom blocks run on about 12x fewer rows than the edges and are gathered, so only the
    ``edge_attr`` block stays per edge.
    """
    h = x.shape[1]
    source, target = edge_index
    # index_select, not x[index]: its backward is a scatter-add, not a sorting index_put.
    return (
        F.linear(edge_attr, weight[:, 2 * h:], bias)
        + (x @ weight[:, :h].T).index_select(0, target)
        + (x @ weight[:, h:2 * h].T).index_select(0, source)
    )


class FactorizedCGConv(CGConv):
    """PyG's `CGConv` with the same parameters, computed with its linear maps split by input block.

    CGConv applies ``lin_f`` and ``lin_s`` to ``[x_i, x_j, e_ij]`` on every edge. The atom blocks
    are applied once per atom instead (about 12x fewer rows) and gathered, so only the Gaussian
    block stays per edge: 1.7-2.1x the training throughput of `CGConv` on phonons
    (bench/training_throughput.py). The state dict is CGConv's, so checkpoints are unchanged, and
    a `LoRALinear` in place of ``lin_f``/``lin_s`` works through its merged ``weight``/``bias``.
    """

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        weight = torch.cat([self.lin_f.weight, self.lin_s.weight])  # (2h, 2h + n_gaussians)
        bias = torch.cat([self.lin_f.bias, self.lin_s.bias])
        gate, signal = edge_linear(weight, bias, x, edge_index, edge_attr).chunk(2, dim=1)
        # .to: under bfloat16 autocast the messages are bfloat16 and are summed into the float32 atoms
        out = torch.zeros_like(x).index_add_(0, edge_index[1], (gate.sigmoid() * F.softplus(signal)).to(x.dtype))
        out = out if self.bn is None else self.bn(out)
        return out + x


def element_properties(max_z: int) -> Tensor:
    """(max_z + 1, 22) the elements' Magpie properties, standardised over the elements; row Z is element Z
    (Z 0 and Z beyond the table read zeros, the mean)."""
    table = magpie_table()
    table = (table - table.mean(0)) / table.std(0)
    rows = torch.zeros(max_z + 1, table.shape[1])
    known = min(max_z, table.shape[0])
    rows[1:known + 1] = table[:known]
    return rows


class ElementEmbedding(nn.Module):
    """Each element's starting atom vector: a learned one per atomic number (``weight``, as nn.Embedding's), a
    linear map of the element's 22 Magpie properties (atomic weight, electronegativity, radii, ...;
    standardised over the elements), or their sum. The properties let the few samples of a rare element
    borrow from elements that resemble it, which a learned vector of its own cannot. Checkpoints of the
    learned-only embedding (an nn.Embedding) load unchanged. ``keep_properties`` keeps the table (``properties``)
    for other readers even when the vectors do not use it.
    """

    def __init__(self, max_z: int, dim: int, elements: str, keep_properties: bool = False) -> None:
        super().__init__()
        parts = elements.split("+")
        self.weight: nn.Parameter | None = None
        if "learned" in parts:
            self.weight = nn.Parameter(torch.empty(max_z + 1, dim))
            nn.init.normal_(self.weight)  # nn.Embedding's initialisation: the same draws as before
        self.property_map: nn.Linear | None = None
        if "magpie" in parts or keep_properties:
            self.register_buffer("properties", element_properties(max_z))
        if "magpie" in parts:
            self.property_map = nn.Linear(self.properties.shape[1], dim)

    def forward(self, z: Tensor) -> Tensor:
        learned = None if self.weight is None else F.embedding(z, self.weight)
        if self.property_map is None:
            return learned
        mapped = self.property_map(self.properties[z])
        return mapped if learned is None else learned + mapped


@register_encoder("cgcnn")
class CGCNN(Encoder):
    unknown_element_advice = "raise the encoder's max_z"
    added_options = {"pooling": "mean", "elements": "learned", "atom_descriptors": False}

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        hidden: int = Field(64, ge=1, description="atom feature size")
        n_layers: int = Field(3, ge=1, description="graph convolution layers")
        n_gaussians: int = Field(40, ge=2, description="Gaussians in the distance expansion")
        max_z: int = Field(100, ge=1, description="largest atomic number in the embedding table")
        elements: Literal["learned", "magpie", "learned+magpie"] = Field(
            "magpie", description="each element's starting vector: learned per element, a linear map of its"
            " Magpie properties, or both summed")
        batch_norm: bool = True
        pooling: Pooling = "mean+max+min+std"
        atom_descriptors: bool = Field(
            True, description="the readout also pools each atom's own descriptors, unconvolved: its element's 22"
            " standardised Magpie properties and its nearest-neighbour distance")

    def __init__(self, config: Config, graphs: GraphSettings) -> None:
        super().__init__()
        self.embedding = ElementEmbedding(config.max_z, config.hidden, config.elements,
                                          keep_properties=config.atom_descriptors)
        self.expansion = GaussianSmearing(0.0, graphs.cutoff, config.n_gaussians)
        self.layers = nn.ModuleList(
            FactorizedCGConv(config.hidden, dim=config.n_gaussians, batch_norm=config.batch_norm)
            for _ in range(config.n_layers)
        )
        self.pooling = config.pooling
        self.atom_descriptors = config.atom_descriptors
        self.atom_dim = config.hidden + (self.embedding.properties.shape[1] + 1 if config.atom_descriptors else 0)
        self.elements = frozenset(range(1, config.max_z + 1))
        self.graph_settings = graphs

    def featurizer(self) -> RadiusGraph:
        return RadiusGraph(self.graph_settings)

    def blocks(self) -> list[str]:
        return ["embedding", *(f"layers.{i}" for i in range(len(self.layers)))]

    state_parts = {"atom": "atom"}

    def run_blocks(self, batch: GraphBatch, state: dict[str, Tensor] | None = None, start: int = 0,
                   stop: int | None = None) -> dict[str, Tensor]:
        stop = len(self.layers) + 1 if stop is None else stop
        x = self.embedding(batch.z) if start == 0 else state["atom"]
        if stop > max(start, 1):
            edge_attr = self.expansion(batch.distance)
            for conv in self.layers[max(start, 1) - 1:stop - 1]:
                x = F.softplus(conv(x, batch.edge_index, edge_attr))
        if self.atom_descriptors and start < stop == len(self.layers) + 1:  # once, by the call running the last block
            x = torch.cat([x, self.descriptors(batch)], dim=1)
        return {"atom": x}

    def descriptors(self, batch: GraphBatch) -> Tensor:
        """(n_atoms, 23): an atom's element properties and the distance to its nearest neighbour (Å; 0 alone).
        Targets set by the lightest atom or the shortest bond (a phonon band's top) read them directly."""
        nearest = scatter(batch.distance, batch.edge_index[1], 0, dim_size=batch.z.shape[0], reduce="min")
        return torch.cat([self.embedding.properties[batch.z], nearest.unsqueeze(1)], dim=1)
