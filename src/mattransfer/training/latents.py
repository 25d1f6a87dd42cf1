"""Latent vectors of a frozen encoder, cached on disk per structure.

A `heads` fine-tune trains only the head, so the encoder's output for a structure is the same in
every such run: with a pre-trained universal encoder (CHGNet, SevenNet) computing it is most of the
run. The cache (`structure_cache`) holds, per encoder (a hash of its class, pooling and weights), the
vector of every structure it has seen, keyed by the structure's content: another seed or sample size of
the same dataset encodes only the structures not seen before.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path

import torch
from torch import Tensor

from mattransfer.graphs.inputs import InputStore
from mattransfer.models.model import TransferModel
from mattransfer.paths import cache_dir
from mattransfer.training.structure_cache import cached_rows

log = logging.getLogger(__name__)


def encoder_hash(model: TransferModel) -> str:
    """Identity of what the encoder computes: its class, options and every weight and buffer."""
    digest = hashlib.sha256(f"{type(model.encoder).__name__}:{model.config.encoder}".encode())
    for name, tensor in sorted(model.encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:20]


def cached_latents(model: TransferModel, keys: list[str], inputs: InputStore, rows: Tensor | None = None,
                   batch_size: int = 256) -> Tensor:
    """The encoder's output (len(inputs), out_dim) for the rows of ``inputs``, whose content hashes are
    ``keys`` (`graphs.inputs.row_keys`), encoding only the structures the cache lacks. The model's
    device does the encoding; the result is on it.

    ``rows``: the positions the caller reads (default: every row). The others are NaN, never encoded: a study
    prepares every row of a dataset (Part 2 pre-trains on up to the whole 36,737-row MP snapshot) while a
    `heads` fine-tune reads its split's 1-5k, and encoding the whole store was most of its time
    (bench/README.md, "Study wall time").
    """
    def encode(positions: list[int]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        start = time.perf_counter()
        latent = model.embed(inputs.subset(torch.tensor(positions)), batch_size=batch_size).cpu()
        log.info("encoded %d structures in %.1f s", len(positions), time.perf_counter() - start)
        return {"latent": latent}, {"latent": torch.ones(len(positions), dtype=torch.long)}

    wanted = list(range(len(keys))) if rows is None else rows.tolist()
    read = cached_rows(cache_file(model), keys, wanted, encode)[0]["latent"]
    device = model.target_mean.device
    if rows is None:
        return read.to(device)
    latent = torch.full((len(keys), read.shape[1]), float("nan"), dtype=read.dtype)
    latent[rows] = read
    return latent.to(device)


def cache_file(model: TransferModel) -> Path:
    """Where ``model``'s encoder keeps its latent vectors."""
    return cache_dir() / "latents" / f"{encoder_hash(model)}.pt"
