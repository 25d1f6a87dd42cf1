"""An MLP on Magpie statistics of the element fractions (Ward et al. 2016), compositions only.

The statistics (minimum, maximum, range, mean, mean absolute deviation and mode over a formula's elements
of 22 element properties, as matminer's ``ElementProperty.from_preset("magpie")``) are computed inside the
model from the element fractions (a few scatter reductions over the elements of each formula of a
batch), then an MLP reads them. Its inputs are the same cached store of dense fractions as ElemNet's.

The stronger composition model here: the element properties carry chemistry that an element-fraction
network must learn from data, which a few thousand experimental gaps do not hold (measured in
docs/results/dft-to-expt).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn
from torch_geometric.utils import scatter

from mattransfer.graphs.composition import N_ELEMENTS, CompositionBatch
from mattransfer.models.encoders.base import register_encoder
from mattransfer.models.encoders.elemnet import WholeFormulaEncoder, mlp_blocks

N_STATISTICS = 6  # minimum, maximum, range, mean, avg_dev, mode


def magpie_table() -> Tensor:
    """(N_ELEMENTS, 22) Magpie element properties, Z 1..N_ELEMENTS; a missing value is the property's mean."""
    return _magpie_table().clone()  # a copy: a module's buffer is overwritten in place when weights load


@lru_cache(maxsize=1)
def _magpie_table() -> Tensor:
    from matminer.featurizers.composition import ElementProperty  # seconds to import: only to build the model
    from pymatgen.core import Element

    preset = ElementProperty.from_preset("magpie")
    properties = preset.data_source.all_elemental_props
    table = np.array([[properties[name].get(Element.from_Z(z).symbol, np.nan) for name in preset.features]
                      for z in range(1, N_ELEMENTS + 1)], dtype=np.float64)
    table = np.where(np.isnan(table), np.nanmean(table, axis=0), table)
    return torch.tensor(table, dtype=torch.float32)


def magpie_statistics(batch: CompositionBatch, table: Tensor) -> Tensor:
    """(B, 6 × P) statistics of the properties ``table`` (E, P) over each formula's elements, weighted by
    their fractions. Reduced over the elements present (a few per formula), not over all E columns."""
    size, owner = batch.num_graphs, batch.batch
    values = table[batch.z - 1]  # (n_present, P)
    weight = batch.fraction.unsqueeze(1)

    def reduce(v: Tensor, how: str) -> Tensor:
        return scatter(v, owner, 0, dim_size=size, reduce=how)

    minimum, maximum = reduce(values, "min"), reduce(values, "max")
    mean = reduce(weight * values, "sum")
    avg_dev = reduce(weight * (values - mean[owner]).abs(), "sum")
    # matminer's mode: the property of the most abundant element (the smallest value among ties)
    most = (batch.fraction == reduce(batch.fraction, "max")[owner]).unsqueeze(1)
    mode = reduce(torch.where(most, values, torch.full_like(values, float("inf"))), "min")
    return torch.cat([minimum, maximum, maximum - minimum, mean, avg_dev, mode], dim=1)


@register_encoder("magpie-mlp")
class MagpieMLP(WholeFormulaEncoder):
    unknown_element_advice = f"element fractions cover Z 1..{N_ELEMENTS}"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        widths: list[int] = Field(default_factory=lambda: [512, 512, 256, 128], min_length=1,
                                  description="hidden layer widths, input side first")
        dropout: float = Field(0.1, ge=0, lt=1, description="dropout after every hidden layer but the last")
        fractions: bool = Field(True, description="give the MLP the element fractions beside the statistics")

    def __init__(self, config: Config, graphs=None) -> None:
        super().__init__()
        self.register_buffer("properties", magpie_table())  # saved with the weights: the features travel along
        self.fractions = config.fractions
        n_in = N_STATISTICS * self.properties.shape[1] + (N_ELEMENTS if config.fractions else 0)
        self.norm = nn.BatchNorm1d(n_in)  # the statistics span orders of magnitude (melting points, numbers)
        n = len(config.widths)
        self.layers = mlp_blocks(n_in, config.widths, [config.dropout] * (n - 1) + [0.0])
        self.atom_dim = config.widths[-1]
        self.elements = frozenset(range(1, N_ELEMENTS + 1))

    def blocks(self) -> list[str]:
        return ["norm", *(f"layers.{i}" for i in range(len(self.layers)))]

    def formula_features(self, batch: CompositionBatch) -> Tensor:
        features = magpie_statistics(batch, self.properties)
        h = self.norm(torch.cat([features, batch.x], dim=1) if self.fractions else features)
        for block in self.layers:
            h = block(h)
        return h
