"""The output of an encoder's frozen first blocks, computed once per run instead of every epoch.

When ``freeze`` leaves only the last blocks of an encoder to train, its first blocks compute the
same state for a structure in every epoch (they are frozen and in eval mode). `PrefixStore` computes
that state once for every structure of a store and hands each mini-batch its rows, so training runs
only the later blocks: the generalisation of `heads`' latent vectors (training/latents.py) to a
partly frozen encoder. Encoders that declare ``run_blocks`` and ``state_parts`` get it; others train
the whole forward pass, as before.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import torch
from torch import Tensor

from mattransfer.graphs.inputs import InputStore, PrefixBatch
from mattransfer.graphs.store import concat_ranges
from mattransfer.models.encoders.base import Encoder
from mattransfer.models.model import TransferModel

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


class PrefixStore:
    """``store`` whose batches carry the state after the encoder's first ``start`` blocks."""

    def __init__(self, store: InputStore, encoder: Encoder, start: int, device: torch.device,
                 batch_size: int = 256) -> None:
        self.store, self.start, self.ids = store, start, store.ids
        self.pointers = {key: store.parts()[part] for key, part in encoder.state_parts.items()}
        begin = time.perf_counter()
        was_training = encoder.training
        encoder.eval()
        chunks: dict[str, list[Tensor]] = {key: [] for key in self.pointers}
        with torch.no_grad():
            # Consecutive structures, so each state tensor's rows follow the store's own row order.
            for index in torch.arange(len(store)).split(batch_size):
                state = encoder.run_blocks(store.batch(index).to(device), stop=start)
                for key in chunks:
                    chunks[key].append(state[key].cpu())
        encoder.train(was_training)
        self.state = {key: torch.cat(parts) for key, parts in chunks.items()}
        for key, rows in self.state.items():
            if len(rows) != int(self.pointers[key][-1]):
                raise ValueError(f"{type(encoder).__name__}.state_parts: state {key!r} has {len(rows)} rows,"
                                 f" its store part has {int(self.pointers[key][-1])}")
        log.info("computed the %d frozen blocks' output of %d structures once in %.1f s", start, len(store),
                 time.perf_counter() - begin)

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
