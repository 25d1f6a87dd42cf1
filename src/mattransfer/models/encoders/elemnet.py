"""ElemNet (Jha et al., Sci. Rep. 2018): a deep MLP on element fractions, compositions only.

Each hidden layer is a named block, so ``freeze`` with ``train_last: k`` re-trains the last k layers of a
pre-trained ElemNet, as the DFT → experiment transfer of Jha et al. (Nature Commun. 2019) did."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mattransfer.graphs.composition import N_ELEMENTS, CompositionBatch, ElementFractions
from mattransfer.models.encoders.base import Encoder, register_encoder

# The paper's 17 layers: 16 hidden (below) and the output layer (the head's last linear).
ELEMNET_WIDTHS = [1024] * 4 + [512] * 3 + [256] * 3 + [128] * 3 + [64] * 2 + [32]
# Its dropout (1 - keep probability) after the 1024-, 512-, 256- and 128-wide stages; none after.
ELEMNET_DROPOUT = {1024: 0.2, 512: 0.1, 256: 0.3, 128: 0.2}


class WholeFormulaEncoder(Encoder):
    """An encoder whose output is one vector per formula already: no per-element rows, nothing to pool."""

    pooling = "mean"  # of the one vector: the identity; a pooling asked of `forward` does not apply

    def forward(self, batch: CompositionBatch, pooling: str | None = None) -> Tensor:
        return self.formula_features(batch)

    def formula_features(self, batch: CompositionBatch) -> Tensor:  # (num_graphs, atom_dim)
        raise NotImplementedError

    def featurizer(self) -> ElementFractions:
        return ElementFractions()


def mlp_blocks(in_dim: int, widths: list[int], dropout: list[float]) -> nn.ModuleList:
    """One block per hidden layer: linear, ReLU, then dropout where it is above 0."""
    blocks = nn.ModuleList()
    for width, p in zip(widths, dropout):
        layers: list[nn.Module] = [nn.Linear(in_dim, width), nn.ReLU()]
        blocks.append(nn.Sequential(*layers, nn.Dropout(p)) if p else nn.Sequential(*layers))
        in_dim = width
    return blocks


@register_encoder("elemnet")
class ElemNet(WholeFormulaEncoder):
    unknown_element_advice = f"element fractions cover Z 1..{N_ELEMENTS}"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        widths: list[int] = Field(default_factory=lambda: list(ELEMNET_WIDTHS), min_length=1,
                                  description="hidden layer widths, input side first (default: the paper's 16)")
        dropout: float | None = Field(None, ge=0, lt=1, description="dropout after every hidden layer but the last"
                                      " (default: the paper's per-stage rates)")

    def __init__(self, config: Config, graphs=None) -> None:
        super().__init__()
        n = len(config.widths)
        rates = ([ELEMNET_DROPOUT.get(w, 0.0) for w in config.widths] if config.dropout is None
                 else [config.dropout] * (n - 1) + [0.0])
        self.layers = mlp_blocks(N_ELEMENTS, config.widths, rates)
        self.atom_dim = config.widths[-1]
        self.elements = frozenset(range(1, N_ELEMENTS + 1))

    def blocks(self) -> list[str]:
        return [f"layers.{i}" for i in range(len(self.layers))]

    def formula_features(self, batch: CompositionBatch) -> Tensor:
        x = batch.x
        for block in self.layers:
            x = block(x)
        return x
