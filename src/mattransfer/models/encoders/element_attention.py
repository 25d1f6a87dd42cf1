"""Self-attention over a formula's elements (after CrabNet, Wang et al., npj Comput. Mater. 2021), compositions only.

A formula is a short sequence of tokens, one per element present: the element's embedding (a learned
vector plus a linear map of its 22 standardised Magpie properties, so rare elements start from their
chemistry rather than from noise) joined with a sinusoidal encoding of its fraction and of the fraction's
logarithm (CrabNet's fractional encoding: 0.01 and 0.02 of a dopant differ as much as 0.5 and 1.0 do
not). A few pre-norm transformer layers let every element's vector depend on its partners; the formula's
vector is the fraction-weighted sum of the token vectors.

Batched as dense padded tensors (B, L, d), L the most elements of any formula of the mini-batch (≤ 8 in
matbench_mp_gap), so a mini-batch is a handful of small matrix products: an epoch of 81,534 formulas at
d 64 with 3 layers took 30 s to 2 min on one thread of a shared CPU (docs/results/dft-to-expt).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

from mattransfer.graphs.composition import N_ELEMENTS, CompositionBatch
from mattransfer.models.encoders.base import register_encoder
from mattransfer.models.encoders.elemnet import WholeFormulaEncoder
from mattransfer.models.encoders.magpie_mlp import magpie_table


def fraction_encoding(fraction: Tensor, dim: int) -> Tensor:
    """(n, dim) sinusoids of the fraction (first half) and of log2 of the fraction (second half).

    Each half is ``dim / 2`` sin-cos pairs of geometrically spaced wavelengths over the value scaled to
    [0, 1] (the log over log2 of 1e-4 .. 1), so small fractions stay distinguishable."""
    half = dim // 2
    frequencies = math.pi * torch.logspace(0, math.log10(1000.0), half // 2, device=fraction.device)
    linear = fraction.clamp(0, 1)
    logarithmic = 1 - fraction.clamp_min(1e-4).log2() / math.log2(1e-4)  # 1e-4 → 0, 1 → 1
    parts = []
    for value in (linear, logarithmic):
        angle = value.unsqueeze(1) * frequencies
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1)


class ElementTokens(nn.Module):
    """A token per element present: embedding and Magpie properties, joined with the fraction encoding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        table = magpie_table()
        # standardised once: melting points and atomic numbers are orders of magnitude apart
        self.register_buffer("properties", (table - table.mean(0)) / table.std(0).clamp_min(1e-6))
        self.embedding = nn.Embedding(N_ELEMENTS, dim)
        self.chemistry = nn.Linear(table.shape[1], dim)
        self.mix = nn.Linear(2 * dim, dim)
        self.dim = dim

    def forward(self, z: Tensor, fraction: Tensor) -> Tensor:  # (n_present, dim)
        element = self.embedding(z - 1) + self.chemistry(self.properties[z - 1])
        return self.mix(torch.cat([element, fraction_encoding(fraction, self.dim)], dim=1))


@register_encoder("element-attention")
class ElementAttention(WholeFormulaEncoder):
    unknown_element_advice = f"element fractions cover Z 1..{N_ELEMENTS}"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        dim: int = Field(128, ge=8, description="token width d (a multiple of 4 and of heads)")
        layers: int = Field(3, ge=1, description="transformer layers")
        heads: int = Field(4, ge=1, description="attention heads per layer")
        ff_dim: int = Field(256, ge=1, description="width of each layer's feed-forward part")
        dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the transformer layers")

        @model_validator(mode="after")
        def _divisible(self) -> ElementAttention.Config:
            if self.dim % 4 or self.dim % self.heads:
                raise ValueError(f"dim {self.dim} must be a multiple of 4 and of heads ({self.heads})")
            return self

    def __init__(self, config: Config, graphs=None) -> None:
        super().__init__()
        self.tokens = ElementTokens(config.dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(config.dim, config.heads, config.ff_dim, config.dropout, batch_first=True,
                                       norm_first=True) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)  # pre-norm layers leave their output unnormalised
        self.atom_dim = config.dim
        self.elements = frozenset(range(1, N_ELEMENTS + 1))

    def blocks(self) -> list[str]:
        return ["tokens", *(f"layers.{i}" for i in range(len(self.layers))), "norm"]

    def formula_features(self, batch: CompositionBatch) -> Tensor:
        # CompositionStore.batch lists each formula's elements together (nonzero in row order): dense-able
        h, present = to_dense_batch(self.tokens(batch.z, batch.fraction), batch.batch, batch_size=batch.num_graphs)
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=~present)
        weight, _ = to_dense_batch(batch.fraction, batch.batch, batch_size=batch.num_graphs)  # 0 at padding
        return (self.norm(h) * weight.unsqueeze(2)).sum(1)
