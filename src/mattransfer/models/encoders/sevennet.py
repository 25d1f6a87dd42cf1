"""SevenNet-0 (Park et al., JCTC 2024; the 11Jul2024 weights): a NequIP-style E(3)-equivariant interatomic potential.

The encoder is SevenNet's own modules up to its energy readout: the one-hot species embedding, then
five interaction blocks (self-connection, linear, equivariant convolution, linear, gate). The last
block outputs 128 scalars (l = 0) per atom, which SevenNet reduces to an atomic energy; those
scalars are the atom features. The readout, per-species energy shift and the force/stress autograd
are not part of the encoder: a property head replaces them, so positions never need gradients.

Its input is SevenNet's own graph (``sevenn.train.dataload.unlabeled_atoms_to_graph``: every
neighbour within its 5 Å cutoff, with the edge vectors), built once per dataset and cached.
``sevenn`` is imported only when a SevenNet encoder is built or featurized, so ``import mattransfer``
stays fast and a missing package is the one-line error of ``pretrained_weights``.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mattransfer.data.table import PropertyTable
from mattransfer.graphs.build import GraphSettings, StructureGraph, atomic_numbers, pack_graphs
from mattransfer.graphs.store import GraphBatch, GraphStore
from mattransfer.models.encoders.base import Encoder, Pooling, register_encoder, register_pretrained

log = logging.getLogger(__name__)

SEVENNET_GRAPH_VERSION = 1  # bump when the stored graph changes for the same structures
CHECKPOINT = "7net-0_11July2024"  # sevenn's name of the checkpoint in its wheel

# SevenNet's modules that precede the interaction blocks, and the per-block modules, in its order.
# The rest of its sequence (reduce_input_to_hidden onwards) is the energy readout.
EMBEDDING_MODULES = ("edge_embedding", "onehot_idx_to_onehot", "onehot_to_feature_x")
INTERACTION_MODULES = ("self_connection_intro", "self_interaction_1", "convolution", "self_interaction_2",
                       "self_connection_outro", "equivariant_gate")


@lru_cache(maxsize=1)
def _checkpoint() -> Any:
    """sevenn's `SevenNetCheckpoint` of SevenNet-0. Loaded with sevenn's loader, i.e. a full unpickle:
    ``torch.load(weights_only=True)`` refuses the file (it pickles numpy arrays, a torch.device and the
    optimizer state). It is the file shipped inside the installed sevenn wheel, not a download."""
    from sevenn.util import load_checkpoint

    return load_checkpoint(CHECKPOINT)


def _cutoff() -> float:
    return float(_checkpoint().config["cutoff"])


def sevennet_graph(structure: Any, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Z, edge_index (2, E), edge vectors (E, 3)) of one structure, by sevenn's own neighbour search."""
    from pymatgen.io.ase import AseAtomsAdaptor
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    z = atomic_numbers(structure, where)  # refuses disordered and dummy sites with a one-line error
    graph = unlabeled_atoms_to_graph(AseAtomsAdaptor.get_atoms(structure), _cutoff())
    return z, np.asarray(graph["edge_index"], dtype=np.int64), np.asarray(graph["edge_vec"], dtype=np.float32)


def build_sevennet_graphs(table: PropertyTable, progress: bool = True) -> GraphStore:
    """SevenNet graphs of every structure in ``table`` (no cache)."""

    def graph_of(row_id: str, structure: Any) -> StructureGraph:
        z, edges, vectors = sevennet_graph(structure, f"{table.source}: structure {row_id!r}")
        return z, edges, None, vectors

    return pack_graphs(table, graph_of, "SevenNet graphs", progress)


class SevenNetGraph:
    """The featurizer of the SevenNet encoder: `build_sevennet_graphs`."""

    name = "sevennet"  # the cache folder

    def key(self) -> str:
        import sevenn

        # The neighbour search belongs to sevenn: a new sevenn version may change the graph.
        return f"v{SEVENNET_GRAPH_VERSION}:sevenn-{sevenn.__version__}:cutoff={_cutoff()}"

    def build(self, table: PropertyTable, progress: bool = True) -> GraphStore:
        return build_sevennet_graphs(table, progress)

    def load(self, path: Path) -> GraphStore:
        return GraphStore.load(path)


@register_encoder("sevennet")
class SevenNet(Encoder):
    """SevenNet-0's architecture, hyper-parameters from its checkpoint's config; random weights until loaded."""

    unknown_element_advice = "SevenNet-0 was trained on 89 elements; drop the structure or use another encoder"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        # mean: against mean+max+min+std in `heads` runs on phonons, dielectric and piezo (n 100 and 800,
        # 3 seeds) neither was consistently better (docs/results/model-zoo/sevennet.md); mean is 4x smaller.
        pooling: Pooling = "mean"

    def __init__(self, config: Config, graphs: GraphSettings) -> None:
        super().__init__()
        from sevenn.model_build import build_E3_equivariant_model

        sevennet_config = dict(_checkpoint().config)
        # The checkpoint's conv_denominator is 0 ("from the data"); sevenn training sets it to
        # sqrt(avg_num_neigh) of its training set, which 7net-0's config records. Unset, the
        # randomly initialised model divides by zero.
        sevennet_config["conv_denominator"] = [math.sqrt(n) for n in sevennet_config["avg_num_neigh"]]
        full = build_E3_equivariant_model(sevennet_config)  # random init, e3nn's
        modules = dict(full.named_children())
        n_blocks = sevennet_config["num_convolution_layer"]
        self.embedding = nn.ModuleDict({name: modules[name] for name in EMBEDDING_MODULES})
        self.interactions = nn.ModuleList(
            nn.ModuleDict({name: modules[f"{t}_{name}"] for name in INTERACTION_MODULES}) for t in range(n_blocks)
        )
        # Atomic number -> SevenNet's species index (-1 for species it lacks; check_elements runs first).
        # Not persistent: it is architecture, not a weight, and rebuilt from the config.
        self.register_buffer("species_index", full.z_to_onehot_tensor.clone(), persistent=False)
        self.pooling = config.pooling
        self.atom_dim = int(modules[f"{n_blocks - 1}_equivariant_gate"].gate.irreps_out.dim)
        self.elements = frozenset(int(z) for z in sevennet_config["_type_map"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # copy.deepcopy (selection's ensembles, tests) rebuilds e3nn's generated tensor-product code of a
        # model that has run, and torch.fx then registers the code's constants as buffers. They are
        # constants, not weights: kept out of the state dict, a copy saves and reloads like the original.
        for module in self.modules():
            module._non_persistent_buffers_set.update(n for n in module._buffers if n.startswith("_tensor_constant"))

    def featurizer(self) -> SevenNetGraph:
        return SevenNetGraph()

    def blocks(self) -> list[str]:
        return ["embedding", *(f"interactions.{t}" for t in range(len(self.interactions)))]

    # Only the node features pass from one interaction block to the next. The edge embedding and one-hot
    # species, which every block reads, are recomputed from the batch: far cheaper than a block.
    state_parts = {"atom": "atom"}

    def run_blocks(self, batch: GraphBatch, state: dict[str, Tensor] | None = None, start: int = 0,
                   stop: int | None = None) -> dict[str, Tensor]:
        import sevenn._keys as KEY

        stop = len(self.interactions) + 1 if stop is None else stop
        # SevenNet's modules pass one dict along; only the keys its energy path reads are given.
        data: dict[str, Tensor] = {
            KEY.NODE_FEATURE: self.species_index[batch.z],
            KEY.ATOMIC_NUMBERS: batch.z,
            KEY.EDGE_IDX: batch.edge_index,
            KEY.EDGE_VEC: batch.edge_vec,
            KEY.BATCH: batch.batch,
        }
        for module in self.embedding.values():
            data = module(data)
        if start > 0:
            data[KEY.NODE_FEATURE] = state["atom"]
        for block in self.interactions[max(start, 1) - 1:max(stop, 1) - 1]:
            for module in block.values():
                data = module(data)
        return {"atom": data[KEY.NODE_FEATURE]}


def sevennet_state_dict(state: dict[str, Tensor], n_blocks: int) -> dict[str, Tensor]:
    """SevenNet's encoder weights renamed to the `SevenNet` encoder's module names (the readout is left out)."""
    renamed = {}
    for key, value in state.items():
        module, _, rest = key.partition(".")
        if module in EMBEDDING_MODULES:
            renamed[f"embedding.{key}"] = value
        elif module.split("_", 1)[0].isdigit() and int(module.split("_", 1)[0]) < n_blocks:
            t, name = module.split("_", 1)
            renamed[f"interactions.{t}.{name}.{rest}"] = value
    return renamed


@register_pretrained("sevenn:7net-0", "SevenNet-0 (11Jul2024), 89 elements, trained on MPtrj", "sevenn")
def sevennet_0() -> tuple[dict[str, Any], dict[str, Tensor]]:
    checkpoint = _checkpoint()
    # Through sevenn's build_model, not the raw state dict: the 0.9.1 checkpoint's convolution weights
    # are re-ordered by sevenn's backward-compatibility patch (the raw ones give wrong l > 0 features).
    model = checkpoint.build_model()
    return {"name": "sevennet"}, sevennet_state_dict(model.state_dict(), checkpoint.config["num_convolution_layer"])
