"""The encoder interface: a graph batch in, one latent vector per crystal out.

An encoder is one file in this package that subclasses `Encoder`, declares its options as a
pydantic ``Config`` and registers itself with `register_encoder`; it is built as ``Encoder(config, graph_settings)``. Fine-tuning methods address its
parts by name: ``embedding`` (atom types), ``layers`` (message passing, in order).
"""

from __future__ import annotations

from typing import Callable, ClassVar

from pydantic import BaseModel
from torch import Tensor, nn
from torch_geometric.nn import global_add_pool, global_max_pool, global_mean_pool

from mattransfer.errors import DataError
from mattransfer.graphs.store import GraphStore

ENCODERS: dict[str, type[Encoder]] = {}

# Atom features → one vector per crystal.
POOLING = {"mean": global_mean_pool, "sum": global_add_pool, "max": global_max_pool}


class Encoder(nn.Module):
    Config: ClassVar[type[BaseModel]]
    embedding: nn.Embedding
    layers: nn.ModuleList
    out_dim: int
    pooling: str  # a POOLING key: how `forward` turns atom features into the crystal's vector

    def atom_features(self, batch) -> Tensor:  # (num_atoms, out_dim)
        raise NotImplementedError

    def forward(self, batch, pooling: str | None = None) -> Tensor:  # (num_graphs, out_dim)
        """The crystal's latent vector; ``pooling`` overrides the encoder's own (for embeddings only)."""
        return POOLING[pooling or self.pooling](self.atom_features(batch), batch.batch, size=batch.num_graphs)

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
