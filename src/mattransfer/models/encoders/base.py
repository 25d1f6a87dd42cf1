"""The encoder interface: a graph batch in, one latent vector per crystal out.

An encoder is one file in this package that subclasses `Encoder`, declares its options as a
pydantic ``Config`` and registers itself with `register_encoder`; it is built as ``Encoder(config, graph_settings)``. Fine-tuning methods address its
parts by name: ``embedding`` (atom types), ``layers`` (message passing, in order).
"""

from __future__ import annotations

from typing import Callable, ClassVar

from pydantic import BaseModel
from torch import Tensor, nn

from mattransfer.errors import DataError
from mattransfer.graphs.store import GraphStore

ENCODERS: dict[str, type[Encoder]] = {}


class Encoder(nn.Module):
    Config: ClassVar[type[BaseModel]]
    embedding: nn.Embedding
    layers: nn.ModuleList
    out_dim: int

    def forward(self, batch) -> Tensor:  # (num_graphs, out_dim)
        raise NotImplementedError

    def check_elements(self, store: GraphStore) -> None:
        """Every atomic number in ``store`` must have a row in the embedding table."""
        table_size = self.embedding.num_embeddings
        bad = (store.z >= table_size) | (store.z < 1)
        if bad.any():
            atom = int(bad.nonzero()[0])
            graph = int((store.atom_ptr <= atom).sum()) - 1
            raise DataError(
                f"structure {store.ids[graph]!r} contains element Z={int(store.z[atom])}, outside the"
                f" encoder's embedding table (Z = 1..{table_size - 1}); raise the encoder's max_z."
            )


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    def decorate(cls: type[Encoder]) -> type[Encoder]:
        ENCODERS[name] = cls
        return cls

    return decorate
