"""The output of an encoder's frozen first blocks, computed once instead of every epoch, and kept on disk.

When ``freeze`` leaves only the last blocks of an encoder to train, its first blocks compute the
same state for a structure in every epoch (they are frozen and in eval mode). `PrefixStore` holds
that state for every structure of a store and hands each mini-batch its rows, so training runs
only the later blocks: the generalisation of `heads`' latent vectors (training/latents.py) to a
partly frozen encoder. Encoders that declare ``run_blocks`` and ``state_parts`` get it; others train
the whole forward pass, as before.

The state is also the same in every run of the same encoder: `cached_prefix` keeps it on disk per
structure, keyed by the structure's content, in the latent cache's store (`structure_cache`). Another seed or sample size
computes only the structures not seen before; the fixed test set (3,674 structures of eform and
bandgap, which share their structures) is computed once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from mattransfer.graphs.inputs import InputStore, PrefixBatch
from mattransfer.graphs.store import concat_ranges
from mattransfer.models.encoders.base import Encoder
from mattransfer.models.model import TransferModel
from mattransfer.paths import cache_dir
from mattransfer.training.latents import encoder_hash
from mattransfer.training.structure_cache import cached_rows

log = logging.getLogger(__name__)


def frozen_blocks(model: TransferModel) -> int:
    """How many of the encoder's first blocks are frozen, when it can start from their output (else 0)."""
    encoder = model.encoder
    if not encoder.state_parts:  # it cannot start from a state
        return 0
    frozen = set(model.frozen)
    count = 0
    for name in encoder.blocks():
        if "encoder" not in frozen and f"encoder.{name}" not in frozen:
            break
        count += 1
    return count


def prefix_state(store: InputStore, encoder: Encoder, start: int, device: torch.device,
                 batch_size: int = 256) -> dict[str, Tensor]:
    """The state after ``encoder``'s first ``start`` blocks for every structure of ``store``, in its row order (CPU)."""
    begin = time.perf_counter()
    was_training = encoder.training
    encoder.eval()
    chunks: dict[str, list[Tensor]] = {key: [] for key in encoder.state_parts}
    with torch.no_grad():
        # Consecutive structures, so each state tensor's rows follow the store's own row order.
        for index in torch.arange(len(store)).split(batch_size):
            state = encoder.run_blocks(store.batch(index).to(device), stop=start)
            for key in chunks:
                chunks[key].append(state[key].cpu())
    encoder.train(was_training)
    log.info("computed the %d frozen blocks' output of %d structures in %.1f s", start, len(store),
             time.perf_counter() - begin)
    return {key: torch.cat(parts) for key, parts in chunks.items()}


def cached_prefix(model: TransferModel, start: int, keys: list[str], store: InputStore, device: torch.device,
                  batch_size: int = 256) -> dict[str, Tensor]:
    """`prefix_state` of ``store``, whose rows have the content hashes ``keys`` (`graphs.inputs.row_keys`),
    computing only the structures the disk cache of ``model``'s encoder lacks (`structure_cache`)."""
    encoder = model.encoder
    path = prefix_cache_file(model, start)

    def compute(positions: list[int]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        subset = store.subset(torch.tensor(positions))
        counts = {key: subset.parts()[part].diff() for key, part in encoder.state_parts.items()}
        return prefix_state(subset, encoder, start, device, batch_size), counts

    state, counts = cached_rows(path, keys, list(range(len(keys))), compute)
    for key, part in encoder.state_parts.items():
        if not torch.equal(counts[key], store.parts()[part].diff()):
            raise ValueError(f"{path}: its {key!r} rows do not match these inputs' structures; delete the file"
                             " and run again.")
    return state


def prefix_cache_file(model: TransferModel, start: int) -> Path:
    """Where the output of ``model``'s encoder's first ``start`` blocks is kept."""
    return cache_dir() / "prefix" / f"{encoder_hash(model)}-{start}.pt"


class PrefixStore:
    """``store`` whose batches carry the state after the encoder's first ``start`` blocks: ``state`` as
    `prefix_state` (or `cached_prefix`) gives it, else computed here."""

    def __init__(self, store: InputStore, encoder: Encoder, start: int, device: torch.device,
                 batch_size: int = 256, state: dict[str, Tensor] | None = None) -> None:
        self.store, self.start, self.ids = store, start, store.ids
        self.pointers = {key: store.parts()[part] for key, part in encoder.state_parts.items()}
        self.state = prefix_state(store, encoder, start, device, batch_size) if state is None else state
        for key, rows in self.state.items():
            if len(rows) != int(self.pointers[key][-1]):
                raise ValueError(f"{type(encoder).__name__}.state_parts: state {key!r} has {len(rows)} rows,"
                                 f" its store part has {int(self.pointers[key][-1])}")

    def __len__(self) -> int:
        return len(self.store)

    def positions(self, ids: Sequence[str]) -> Tensor:
        return self.store.positions(ids)

    def elements(self) -> list[set[int]]:
        return self.store.elements()

    def batch(self, index: Tensor) -> PrefixBatch:
        state = {}
        for key, rows in self.state.items():
            pointer = self.pointers[key]
            state[key] = rows[concat_ranges(pointer[index], pointer[index + 1] - pointer[index])]
        return PrefixBatch(self.store.batch(index), state, self.start)
