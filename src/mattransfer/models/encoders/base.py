"""The encoder contract: structures in (through the encoder's own featurizer), one vector per crystal out.

An encoder is one file in this package (or a small subpackage) that subclasses `Encoder`, declares
its options as a pydantic ``Config`` and registers itself with `register_encoder`; it is built as
``Encoder(config, graph_settings)`` with random weights. It declares:

- ``featurizer()``: what turns structures into its input store (`graphs.inputs`), cached on disk;
- ``atom_features(batch)``: per-atom vectors of a mini-batch of that store; or instead
  ``run_blocks`` and ``state_parts``, which run its blocks one after another on a state of named tensors
  (then a ``freeze`` of the first blocks computes their output once, not every epoch: `training.prefix`);
- ``blocks()``: its parts in order, input side first (``freeze`` freezes a prefix of them);
- ``elements``: the atomic numbers it has weights for (others are a one-line error naming the structure);
- ``pooling`` (a `pool` spec): how atom vectors become the crystal's vector, which the head reads.

Pre-trained weights that ship with a package register with `register_pretrained` under a
package-qualified name (``chgnet:0.3.0``), which ``finetune.read_from`` accepts in place of a checkpoint.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Sequence

import torch
from pydantic import AfterValidator, BaseModel, Field
from torch import Tensor, nn
from torch_geometric.utils import scatter

from mattransfer.errors import ConfigError, DataError
from mattransfer.graphs.inputs import Featurizer, InputBatch, InputStore, PrefixBatch

ENCODERS: dict[str, type[Encoder]] = {}

POOLINGS = ("mean", "sum", "max", "min", "std")
POOLING_HELP = ("how atom vectors become the crystal's vector: mean, sum, max, min, std, or several joined"
                " by '+' (concatenated, e.g. mean+max+min+std)")


def pooling_parts(pooling: str) -> list[str]:
    """The reductions a pooling spec concatenates; a bad spec is a ValueError naming it."""
    parts = pooling.split("+")
    bad = [p for p in parts if p not in POOLINGS]
    if bad or len(set(parts)) != len(parts):
        raise ValueError(f"pooling {pooling!r}: expected one of {', '.join(POOLINGS)}, or several joined by '+'")
    return parts


def _valid_pooling(value: str) -> str:
    pooling_parts(value)
    return value


# The type of an encoder option that names its pooling.
Pooling = Annotated[str, AfterValidator(_valid_pooling), Field(description=POOLING_HELP)]


def pool(atoms: Tensor, index: Tensor, size: int, pooling: str) -> Tensor:
    """(size, n_parts × d) crystal vectors from (n_atoms, d) atom vectors grouped by ``index``."""
    out = []
    for part in pooling_parts(pooling):
        if part == "std":  # population std; 0 for a one-atom cell
            # from the centred values: E[x²] - E[x]² cancels to float noise (~1e-3 after the root) for a
            # feature that is constant over a crystal, such as an element property in an elemental solid
            mean = scatter(atoms, index, 0, dim_size=size, reduce="mean")
            centred = atoms - mean[index]
            out.append(scatter(centred * centred, index, 0, dim_size=size, reduce="mean").clamp_min(1e-12).sqrt())
        else:
            out.append(scatter(atoms, index, 0, dim_size=size, reduce=part))
    return torch.cat(out, dim=1)


class Encoder(nn.Module):
    Config: ClassVar[type[BaseModel]]
    atom_dim: int  # size of the per-atom vectors
    pooling: str  # a `pool` spec
    elements: frozenset[int]  # atomic numbers the encoder has weights for
    unknown_element_advice: ClassVar[str] = ""  # what to do about an element outside ``elements``
    # Options added after checkpoints of the encoder were first written, at the values that compute what those
    # checkpoints computed: a saved config without one reads as this value, not as today's default.
    added_options: ClassVar[dict[str, Any]] = {}

    def featurizer(self) -> Featurizer:
        """What turns structures into this encoder's input store."""
        raise NotImplementedError

    def blocks(self) -> list[str]:
        """Names of the encoder's parts (relative to it), in order from the input side."""
        raise NotImplementedError

    # What each tensor of ``run_blocks``' state is indexed by: the name of a row kind of the encoder's input
    # store (``store.parts()``: "atom", "edge", ...), whose pointer array gives each structure's rows.
    state_parts: ClassVar[dict[str, str]] = {}

    def run_blocks(self, batch: InputBatch, state: dict[str, Tensor] | None = None, start: int = 0,
                   stop: int | None = None) -> dict[str, Tensor]:
        """The state after blocks ``start``..``stop`` - 1 (`blocks`), from ``state`` (None: from ``batch``
        alone, ``start`` 0); its ``"atom"`` entry after the last block is the atom features."""
        raise NotImplementedError

    def atom_features(self, batch: InputBatch | PrefixBatch) -> Tensor:  # (num_atoms, atom_dim)
        if isinstance(batch, PrefixBatch):
            return self.run_blocks(batch.inputs, batch.state, batch.start)["atom"]
        return self.run_blocks(batch)["atom"]

    @property
    def out_dim(self) -> int:
        return self.atom_dim * len(pooling_parts(self.pooling))

    def forward(self, batch: InputBatch, pooling: str | None = None) -> Tensor:  # (num_graphs, out_dim)
        """The crystal's vector; ``pooling`` overrides the encoder's own (for embeddings only)."""
        return pool(self.atom_features(batch), batch.batch, batch.num_graphs, pooling or self.pooling)

    def check_elements(self, store: InputStore) -> None:
        """Every structure of ``store`` must consist of elements the encoder has weights for."""
        for row_id, elements in zip(store.ids, store.elements()):
            unknown = elements - self.elements
            if unknown:
                raise DataError(
                    f"structure {row_id!r} contains element Z={min(unknown)}, which the {type(self).__name__}"
                    f" encoder has no weights for (it knows Z = {min(self.elements)}..{max(self.elements)}"
                    f"{'' if len(self.elements) == max(self.elements) - min(self.elements) + 1 else ', with gaps'})"
                    f"{'; ' + self.unknown_element_advice if self.unknown_element_advice else ''}.")


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    def decorate(cls: type[Encoder]) -> type[Encoder]:
        ENCODERS[name] = cls
        return cls

    return decorate


@dataclass(frozen=True)
class Pretrained:
    """Weights that ship with a package: ``load()`` gives the encoder options (with ``name``) and its state dict."""

    description: str
    package: str  # what to pip install when it is missing
    load: Callable[[], tuple[dict[str, Any], dict[str, Tensor]]]


PRETRAINED: dict[str, Pretrained] = {}


def register_pretrained(name: str, description: str, package: str
                        ) -> Callable[[Callable[[], tuple[dict[str, Any], dict[str, Tensor]]]], Callable]:
    def decorate(load: Callable[[], tuple[dict[str, Any], dict[str, Tensor]]]) -> Callable:
        PRETRAINED[name] = Pretrained(description, package, load)
        return load

    return decorate


def pretrained_weights(name: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The encoder options and weights of a registered pre-trained model; one-line errors otherwise."""
    if name not in PRETRAINED:
        available = ", ".join(f"{key} ({p.description})" for key, p in sorted(PRETRAINED.items()))
        raise ConfigError(f"{name!r} is neither a checkpoint file nor a known pre-trained model; available: {available}.")
    entry = PRETRAINED[name]
    try:
        return entry.load()
    except ImportError as exc:
        raise ConfigError(f"{name}: needs the {entry.package!r} package ({exc}); install it with"
                          f" `pip install 'mattransfer[universal]'` (or `pip install {entry.package}`).") from exc


def load_weights_only(path: Path, kind: str, allowed: Sequence[type] = ()) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, plain types and the ``allowed`` classes; anything
    else (which could run code when unpickled) and unreadable files are one-line errors naming ``kind``."""
    if not path.is_file():
        raise ConfigError(f"{kind} {path} not found.")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+)", str(exc))  # torch names the global it would not import
        if refused is None:
            raise ConfigError(f"{path}: not a readable {kind} (corrupt pickle data).") from exc
        raise ConfigError(
            f"{path}: refused: the {kind} holds {refused.group(1)}, not only tensors and plain types, and"
            " could run code when loaded (mattransfer never unpickles more)."
        ) from exc
    except Exception as exc:
        reason = str(exc).split(". ")[0]  # torch adds paragraphs of advice
        raise ConfigError(f"{path}: not a readable {kind} ({type(exc).__name__}: {reason}).") from exc
