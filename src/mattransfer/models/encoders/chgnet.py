"""CHGNet (Deng et al., Nat. Mach. Intell. 2023): the universal potential's graph network as an encoder.

The layers are CHGNet's own modules (``chgnet.model``), arranged as one embedding block and ``n_conv``
interaction blocks so that ``freeze`` can keep a prefix of them. The atom vectors are those CHGNet's
energy readout reads: after the last atom convolution and its readout layer norm. The energy MLP, the
magnetic-moment head and the composition reference energies are not part of the encoder (a fresh head
replaces them). ``chgnet:0.3.0`` loads the weights shipped with the ``chgnet`` package.

Inputs are CHGNet's crystal graphs from its own ``CrystalGraphConverter`` (atom graph within
``atom_cutoff``, bond graph of bonds shorter than ``bond_cutoff`` with the angles between them),
built once per dataset and cached. Bond lengths and angles depend only on the structure, so they are
computed once there, with CHGNet's float32 formulas; the (learnable) radial and angular expansions of
them run in the forward pass.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import Progress
from torch import Tensor, nn

from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError
from mattransfer.graphs.build import GraphSettings, atomic_numbers
from mattransfer.graphs.store import PackedStore, concat_ranges
from mattransfer.models.encoders.base import Encoder, Pooling, register_encoder, register_pretrained

log = logging.getLogger(__name__)

CHGNET_GRAPH_FORMAT_VERSION = 1  # bump when the stored layout or the geometry formulas change
N_ELEMENTS = 94  # rows of CHGNet's atom embedding: Z = 1..94


def _chgnet(module: str) -> ModuleType:
    """``chgnet.<module>``, imported on first use: ``import mattransfer`` stays fast and works without it."""
    try:
        return importlib.import_module(f"chgnet.{module}")
    except ImportError as exc:
        raise ConfigError(f"the chgnet encoder needs the 'chgnet' package ({exc}); install it with"
                          " `pip install 'mattransfer[universal]'` (or `pip install chgnet`).") from exc


@dataclass
class CHGNetBatch:
    """Crystal graphs of a mini-batch, indices global to the batch (CHGNet's ``BatchedGraph`` layout)."""

    z: Tensor  # (n_atoms,) atomic numbers
    atom_graph: Tensor  # (n_directed, 2) [centre atom, neighbour atom]
    directed2undirected: Tensor  # (n_directed,) the undirected bond of each directed one
    bond_length: Tensor  # (n_bonds,) Å, one per undirected bond
    bond_graph: Tensor  # (n_angles, 3) [centre atom, bond i, bond j], undirected bond indices
    angle: Tensor  # (n_angles,) radians between bonds i and j
    batch: Tensor  # (n_atoms,) structure index of each atom
    num_graphs: int

    def to(self, device: torch.device | str) -> CHGNetBatch:
        return CHGNetBatch(*(getattr(self, f.name).to(device) for f in fields(self)[:-1]), self.num_graphs)


@dataclass
class CHGNetGraphStore(PackedStore):
    """CHGNet graphs of ``ids`` in one block: indices local to each structure, four pointer arrays."""

    ids: list[str]
    z: Tensor
    atom_graph: Tensor
    directed2undirected: Tensor
    bond_length: Tensor
    bond_graph: Tensor
    angle: Tensor
    atom_ptr: Tensor  # (G + 1,) into z
    directed_ptr: Tensor  # into atom_graph, directed2undirected
    bond_ptr: Tensor  # into bond_length
    angle_ptr: Tensor  # into bond_graph, angle

    def _gather(self, index: Tensor) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The rows of the structures at ``index`` (local indices) and each structure's row counts."""
        counts, rows = {}, {}
        for part, ptr in self.parts().items():
            counts[part] = ptr[index + 1] - ptr[index]
            rows[part] = concat_ranges(ptr[index], counts[part])
        return {
            "z": self.z[rows["atom"]], "atom_graph": self.atom_graph[rows["directed"]],
            "directed2undirected": self.directed2undirected[rows["directed"]],
            "bond_length": self.bond_length[rows["bond"]], "bond_graph": self.bond_graph[rows["angle"]],
            "angle": self.angle[rows["angle"]],
        }, counts

    def subset(self, index: Tensor) -> CHGNetGraphStore:
        parts, counts = self._gather(index)
        zero = torch.zeros(1, dtype=torch.long)
        ptrs = {f"{part}_ptr": torch.cat([zero, torch.cumsum(n, 0)]) for part, n in counts.items()}
        return CHGNetGraphStore(ids=[self.ids[k] for k in index.tolist()], **parts, **ptrs)

    def batch(self, index: Tensor) -> CHGNetBatch:
        parts, counts = self._gather(index)
        first = {part: torch.cumsum(n, 0) - n for part, n in counts.items()}  # each structure's offset

        def shift(offsets: Tensor, per: str) -> Tensor:
            return torch.repeat_interleave(offsets, counts[per], output_size=int(counts[per].sum()))

        atom_shift_d, bond_shift_d = shift(first["atom"], "directed"), shift(first["bond"], "directed")
        atom_shift_a, bond_shift_a = shift(first["atom"], "angle"), shift(first["bond"], "angle")
        bond_graph = parts["bond_graph"] + torch.stack([atom_shift_a, bond_shift_a, bond_shift_a], dim=1)
        return CHGNetBatch(
            z=parts["z"], atom_graph=parts["atom_graph"] + atom_shift_d[:, None],
            directed2undirected=parts["directed2undirected"] + bond_shift_d, bond_length=parts["bond_length"],
            bond_graph=bond_graph, angle=parts["angle"],
            batch=torch.repeat_interleave(torch.arange(len(index)), counts["atom"], output_size=len(parts["z"])),
            num_graphs=len(index),
        )

    def parts(self) -> dict[str, Tensor]:
        return {"atom": self.atom_ptr, "directed": self.directed_ptr, "bond": self.bond_ptr, "angle": self.angle_ptr}


def _geometry(graph: Any, atom_graph: Tensor) -> tuple[Tensor, Tensor]:
    """Undirected bond lengths and bond-pair angles of a ``CrystalGraph`` (``atom_graph``: its (n, 2) atom
    graph), by CHGNet's own float32 formulas (``BondEncoder.forward``, ``BatchedGraph.from_graphs``,
    ``AngleEncoder.forward``)."""
    with torch.no_grad():
        cart = graph.atom_frac_coord @ graph.lattice
        neighbour = cart[atom_graph[:, 1]] + graph.neighbor_image.reshape(-1, 3) @ graph.lattice
        vectors = cart[atom_graph[:, 0]] - neighbour
        lengths = torch.norm(vectors, dim=1)
        unit = vectors / lengths[:, None]
        bond_length = lengths.index_select(0, graph.undirected2directed.long())
        if len(graph.bond_graph) == 0:
            return bond_length, torch.zeros(0)
        pairs = graph.bond_graph.long()
        cosine = torch.sum(unit[pairs[:, 2]] * unit[pairs[:, 4]], dim=1) * (1 - 1e-6)  # 1 - 1e-6: acos stability
        return bond_length, torch.acos(cosine)


class CHGNetGraphs:
    """The featurizer of the chgnet encoder: CHGNet's ``CrystalGraphConverter`` on every structure."""

    name = "chgnet-graphs"  # the cache folder

    def __init__(self, atom_cutoff: float, bond_cutoff: float) -> None:
        self.atom_cutoff, self.bond_cutoff = atom_cutoff, bond_cutoff

    def key(self) -> str:
        return f"v{CHGNET_GRAPH_FORMAT_VERSION}:atom {self.atom_cutoff}:bond {self.bond_cutoff}"

    def build(self, table: PropertyTable, progress: bool = True) -> CHGNetGraphStore:
        # An atom with no neighbour inside the cutoff keeps its embedding; CHGNet's default is to refuse
        # the structure, which would stop a whole dataset for one row: we log it instead.
        converter = _chgnet("graph").CrystalGraphConverter(
            atom_graph_cutoff=self.atom_cutoff, bond_graph_cutoff=self.bond_cutoff, algorithm="fast",
            on_isolated_atoms="ignore")
        parts: dict[str, list[Tensor]] = {
            k: [] for k in ("z", "atom_graph", "d2u", "bond_length", "bond_graph", "angle")}
        start = time.perf_counter()
        with Progress(disable=not progress, transient=True) as bar:
            task = bar.add_task(f"CHGNet graphs {table.name}", total=len(table))
            for k, (row_id, structure) in enumerate(zip(table.ids, table.structures)):
                z = atomic_numbers(structure, f"{table.source}: structure {row_id!r}")  # disorder: one-line error
                graph = converter(structure, graph_id=row_id)
                atom_graph = graph.atom_graph.reshape(-1, 2).long()  # a structure without bonds has a 1-d one
                isolated = len(z) - len(torch.unique(atom_graph[:, 0]))  # not graph.num_isolated_atoms: it fails then
                if isolated:
                    log.warning("%s: structure %r has %d atom(s) with no neighbour within %g Å", table.source,
                                row_id, isolated, self.atom_cutoff)
                bond_length, angle = _geometry(graph, atom_graph)
                parts["z"].append(torch.from_numpy(z))
                parts["atom_graph"].append(atom_graph)
                parts["d2u"].append(graph.directed2undirected.long())
                parts["bond_length"].append(bond_length)
                # [centre atom, undirected bond i, undirected bond j]: the columns CHGNet's layers read.
                parts["bond_graph"].append(graph.bond_graph.reshape(-1, 5)[:, [0, 1, 3]].long())
                parts["angle"].append(angle)
                if k % 100 == 0:
                    bar.update(task, completed=k)
        log.info("built %d CHGNet graphs of %s in %.1f s", len(table), table.name, time.perf_counter() - start)

        def ptr(chunks: list[Tensor]) -> Tensor:
            return torch.tensor([0, *np.cumsum([len(c) for c in chunks])], dtype=torch.long)

        def cat(chunks: list[Tensor], empty: Tensor) -> Tensor:
            return torch.cat(chunks) if chunks else empty

        return CHGNetGraphStore(
            ids=list(table.ids), z=cat(parts["z"], torch.zeros(0, dtype=torch.long)),
            atom_graph=cat(parts["atom_graph"], torch.zeros(0, 2, dtype=torch.long)),
            directed2undirected=cat(parts["d2u"], torch.zeros(0, dtype=torch.long)),
            bond_length=cat(parts["bond_length"], torch.zeros(0)),
            bond_graph=cat(parts["bond_graph"], torch.zeros(0, 3, dtype=torch.long)),
            angle=cat(parts["angle"], torch.zeros(0)),
            atom_ptr=ptr(parts["z"]), directed_ptr=ptr(parts["d2u"]), bond_ptr=ptr(parts["bond_length"]),
            angle_ptr=ptr(parts["angle"]),
        )

    def load(self, path: Path) -> CHGNetGraphStore:
        return CHGNetGraphStore.load(path)


class Embedding(nn.Module):
    """CHGNet's input encoders: atom embedding, radial bases of bonds (atom and bond graph), angular basis."""

    def __init__(self, config: CHGNet.Config) -> None:
        super().__init__()
        encoders = _chgnet("model.encoders")
        dim = config.hidden
        self.atom_embedding = encoders.AtomEmbedding(atom_feature_dim=dim, max_num_elements=N_ELEMENTS)
        self.bond_basis_expansion = encoders.BondEncoder(
            atom_graph_cutoff=config.atom_cutoff, bond_graph_cutoff=config.bond_cutoff, num_radial=config.num_radial,
            cutoff_coeff=config.cutoff_coeff, learnable=True)
        self.bond_embedding = nn.Linear(config.num_radial, dim, bias=False)
        self.bond_weights_ag = nn.Linear(config.num_radial, dim, bias=False)
        self.bond_weights_bg = nn.Linear(config.num_radial, dim, bias=False)
        self.angle_basis_expansion = encoders.AngleEncoder(num_angular=config.num_angular, learnable=True)
        self.angle_embedding = nn.Linear(config.num_angular, dim, bias=False)

    def forward(self, batch: CHGNetBatch) -> dict[str, Tensor]:
        """CHGNet's ``_compute`` up to the message passing: features and weights of atoms, bonds, angles."""
        rbf_ag = self.bond_basis_expansion.rbf_expansion_ag(batch.bond_length)
        rbf_bg = self.bond_basis_expansion.rbf_expansion_bg(batch.bond_length)
        angle_basis = self.angle_basis_expansion.fourier_expansion(batch.angle)
        return {
            "atom": self.atom_embedding(batch.z - 1),  # row 0 is H
            "bond": self.bond_embedding(rbf_ag),
            "weights_ag": self.bond_weights_ag(rbf_ag),
            "weights_bg": self.bond_weights_bg(rbf_bg),
            "angle": self.angle_embedding(angle_basis),
        }


class Interaction(nn.Module):
    """One CHGNet interaction: atom convolution, then bond convolution, then angle update.

    Interaction ``index`` of ``n_conv`` keeps only the parts whose output reaches the atom vectors: the
    last one is an atom convolution and the layer norm CHGNet applies before its readout; the one before
    it has no angle update, since no later layer reads angles (CHGNet computes that update and discards it).
    """

    def __init__(self, config: CHGNet.Config, index: int) -> None:
        super().__init__()
        functions, layers = _chgnet("model.functions"), _chgnet("model.layers")
        dim = config.hidden
        # CHGNet 0.3.0's settings (`CHGNet.load` passes mlp_out_bias=False for it): silu, layer-norm gates.
        shared = {"dropout": 0.0, "activation": "silu", "norm": None, "gMLP_norm": "layer"}
        self.atom_conv = layers.AtomConv(atom_fea_dim=dim, bond_fea_dim=dim, hidden_dim=dim, use_mlp_out=True,
                                         mlp_out_bias=False, resnet=True, **shared)
        self.norm = functions.find_normalization("layer", dim=dim) if index == config.n_conv - 1 else None
        self.bond_conv = (layers.BondConv(atom_fea_dim=dim, bond_fea_dim=dim, angle_fea_dim=dim, hidden_dim=dim,
                                          use_mlp_out=True, mlp_out_bias=False, resnet=True, **shared)
                          if index < config.n_conv - 1 else None)
        self.angle_update = (layers.AngleUpdate(atom_fea_dim=dim, bond_fea_dim=dim, angle_fea_dim=dim, hidden_dim=0,
                                                resnet=True, **shared)
                             if index < config.n_conv - 2 else None)

    def forward(self, state: dict[str, Tensor], batch: CHGNetBatch) -> dict[str, Tensor]:
        atom = self.atom_conv(atom_feas=state["atom"], bond_feas=state["bond"], bond_weights=state["weights_ag"],
                              atom_graph=batch.atom_graph, directed2undirected=batch.directed2undirected)
        if self.norm is not None:
            atom = self.norm(atom)
        bond, angle = state["bond"], state["angle"]
        if len(batch.angle) and self.bond_conv is not None:  # as CHGNet: no angles, no bond or angle update
            bond = self.bond_conv(atom_feas=atom, bond_feas=bond, bond_weights=state["weights_bg"], angle_feas=angle,
                                  bond_graph=batch.bond_graph)
            if self.angle_update is not None:
                angle = self.angle_update(atom_feas=atom, bond_feas=bond, angle_feas=angle, bond_graph=batch.bond_graph)
        return {**state, "atom": atom, "bond": bond, "angle": angle}


@register_encoder("chgnet")
class CHGNet(Encoder):
    unknown_element_advice = "drop the structure or choose an encoder that covers the element"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        hidden: int = Field(64, ge=1, description="atom, bond and angle feature size")
        n_conv: int = Field(4, ge=1, description="interaction blocks")
        num_radial: int = Field(31, ge=1, description="radial (Bessel) basis functions of a bond length")
        num_angular: int = Field(31, ge=1, description="angular (Fourier) basis functions; odd")
        atom_cutoff: float = Field(6.0, gt=0, description="atom graph cutoff, Å")
        bond_cutoff: float = Field(3.0, gt=0, description="bonds shorter than this form the bond graph (angles), Å")
        cutoff_coeff: int = Field(8, ge=1, description="smoothness of the radial cutoff")
        # mean+max+min+std: on phonons at n 800 (3 seeds) `heads` reaches a test MAE of 124 ± 2 cm^-1 with it
        # and 166 ± 3 mean-pooled; kernel ridge on the frozen features 69 ± 2 and 74 ± 3 (bench/README.md).
        pooling: Pooling = "mean+max+min+std"

    def __init__(self, config: Config, graphs: GraphSettings) -> None:
        super().__init__()
        if config.num_angular % 2 != 1:
            raise ConfigError(f"chgnet encoder: num_angular must be odd (got {config.num_angular}).")
        self.embedding = Embedding(config)
        self.interactions = nn.ModuleList(Interaction(config, i) for i in range(config.n_conv))
        self.atom_dim = config.hidden
        self.pooling = config.pooling
        self.elements = frozenset(range(1, N_ELEMENTS + 1))
        self.cutoffs = (config.atom_cutoff, config.bond_cutoff)

    def featurizer(self) -> CHGNetGraphs:
        return CHGNetGraphs(*self.cutoffs)

    def blocks(self) -> list[str]:
        return ["embedding", *(f"interactions.{i}" for i in range(len(self.interactions)))]

    state_parts = {"atom": "atom", "bond": "bond", "weights_ag": "bond", "weights_bg": "bond", "angle": "angle"}

    def run_blocks(self, batch: CHGNetBatch, state: dict[str, Tensor] | None = None, start: int = 0,
                   stop: int | None = None) -> dict[str, Tensor]:
        stop = len(self.interactions) + 1 if stop is None else stop
        state = self.embedding(batch) if start == 0 else state
        for interaction in self.interactions[max(start, 1) - 1:max(stop, 1) - 1]:
            state = interaction(state, batch)
        return state


# CHGNet's state-dict prefixes → this encoder's; the energy MLP, magmom head and composition model are dropped
# (a fresh head replaces them).
_EMBEDDING_KEYS = ("atom_embedding", "bond_basis_expansion", "bond_embedding", "bond_weights_ag", "bond_weights_bg",
                   "angle_basis_expansion", "angle_embedding")
_LAYER_KEYS = {"atom_conv_layers": "atom_conv", "bond_conv_layers": "bond_conv", "angle_layers": "angle_update"}
_DROPPED_KEYS = ("composition_model", "site_wise", "mlp")


def encoder_state(chgnet_state: dict[str, Tensor], n_conv: int) -> dict[str, Tensor]:
    """A CHGNet model's state dict renamed to this encoder's modules, readout parts left out."""
    state = {}
    for key, value in chgnet_state.items():
        head, _, rest = key.partition(".")
        if head in _EMBEDDING_KEYS:
            state[f"embedding.{key}"] = value
        elif head in _LAYER_KEYS:
            index, _, rest = rest.partition(".")
            if head == "angle_layers" and int(index) == n_conv - 2:
                continue  # its output feeds no later layer (see `Interaction`)
            state[f"interactions.{index}.{_LAYER_KEYS[head]}.{rest}"] = value
        elif head == "readout_norm":
            state[f"interactions.{n_conv - 1}.norm.{rest}"] = value
        elif head not in _DROPPED_KEYS:
            raise ValueError(f"CHGNet weight {key!r} has no place in the chgnet encoder")
    return state


def load_chgnet(version: str) -> Any:
    """The package's pre-trained CHGNet model, on the CPU, in eval mode."""
    from chgnet.model import CHGNet as PackageCHGNet

    with contextlib.redirect_stdout(io.StringIO()):  # chgnet prints its parameter count when it builds a model
        model = PackageCHGNet.load(model_name=version, use_device="cpu", verbose=False)
    return model.eval()


@register_pretrained("chgnet:0.3.0", "CHGNet 0.3.0, the MPtrj-trained universal potential", "chgnet")
def chgnet_0_3_0() -> tuple[dict[str, Any], dict[str, Tensor]]:
    model = load_chgnet("0.3.0")
    args = model.model_args
    options = {"name": "chgnet", "hidden": args["atom_fea_dim"], "n_conv": args["n_conv"],
               "num_radial": args["num_radial"], "num_angular": args["num_angular"],
               "atom_cutoff": float(args["atom_graph_cutoff"]), "bond_cutoff": float(args["bond_graph_cutoff"]),
               "cutoff_coeff": args["cutoff_coeff"]}
    return options, encoder_state(model.state_dict(), args["n_conv"])
