"""The encoder contract: a new encoder, with a featurizer of its own, is one file plus its registration.

The toy encoder below is that file. It reads composition-like inputs (a list of atomic numbers per
structure, no graph at all), and trains, fine-tunes and freezes through `mattransfer train` and the
fine-tune methods without any other module knowing it exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import pytest
import torch
import yaml
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from mattransfer.cli import main
from mattransfer.data.table import PropertyTable
from mattransfer.fileio import atomic_path
from mattransfer.graphs.inputs import positions_of
from mattransfer.models.encoders import ENCODERS, Encoder, register_encoder
from mattransfer.models.encoders.base import Pooling, pool
from mattransfer.models.model import TransferModel


@dataclass
class AtomsBatch:
    z: Tensor
    batch: Tensor
    num_graphs: int

    def to(self, device: torch.device | str) -> AtomsBatch:
        return AtomsBatch(self.z.to(device), self.batch.to(device), self.num_graphs)


@dataclass
class AtomsStore:
    """The species of every structure, nothing else."""

    ids: list[str]
    z: Tensor
    atom_ptr: Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def positions(self, ids: Sequence[str]) -> Tensor:
        return positions_of(self.ids, ids)

    def _parts(self, index: Tensor) -> list[Tensor]:
        return [self.z[self.atom_ptr[k]:self.atom_ptr[k + 1]] for k in index.tolist()]

    def subset(self, index: Tensor) -> AtomsStore:
        parts = self._parts(index)
        ptr = torch.tensor([0, *torch.tensor([len(p) for p in parts]).cumsum(0).tolist()])
        return AtomsStore([self.ids[k] for k in index.tolist()], torch.cat(parts), ptr)

    def batch(self, index: Tensor) -> AtomsBatch:
        parts = self._parts(index)
        owner = torch.cat([torch.full((len(p),), k) for k, p in enumerate(parts)])
        return AtomsBatch(torch.cat(parts), owner, len(parts))

    def elements(self) -> list[set[int]]:
        return [set(p.tolist()) for p in self._parts(torch.arange(len(self)))]

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save({f.name: getattr(self, f.name) for f in fields(self)}, tmp)


class Species:
    name = "toy-species"
    builds = 0  # how many tables were featurized (the cache must serve the second run)

    def key(self) -> str:
        return "v1"

    def build(self, table: PropertyTable, progress: bool = True) -> AtomsStore:
        Species.builds += 1
        z = [torch.tensor(s.atomic_numbers) for s in table.structures]
        ptr = torch.tensor([0, *torch.tensor([len(t) for t in z]).cumsum(0).tolist()])
        return AtomsStore(list(table.ids), torch.cat(z), ptr)

    def load(self, path: Path) -> AtomsStore:
        return AtomsStore(**torch.load(path, weights_only=True))


class ToyEncoder(Encoder):
    class Config(BaseModel):
        model_config = ConfigDict(extra="forbid")
        hidden: int = 8
        pooling: Pooling = "mean+max"

    def __init__(self, config: Config, graphs) -> None:
        super().__init__()
        self.embedding = nn.Embedding(90, config.hidden)
        self.mix = nn.Linear(config.hidden, config.hidden)
        self.atom_dim, self.pooling, self.elements = config.hidden, config.pooling, frozenset(range(1, 90))

    def featurizer(self) -> Species:
        return Species()

    def blocks(self) -> list[str]:
        return ["embedding", "mix"]

    def atom_features(self, batch: AtomsBatch) -> Tensor:
        return torch.tanh(self.mix(self.embedding(batch.z)))


@pytest.fixture
def toy_encoder():
    register_encoder("toy")(ToyEncoder)
    yield
    del ENCODERS["toy"]


def _train(tmp_path: Path, name: str, **sections) -> dict:
    options = {"seed": 0, "device": "cpu", "output_dir": str(tmp_path / name),
               "data": {"dataset": sections.pop("dataset", "demo_energy"), "n_samples": 60},
               "training": {"max_epochs": 3, "patience": 3, "batch_size": 16}, **sections}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(options))
    assert main(["-q", "--threads", "1", "train", str(path)]) == 0
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_a_registered_encoder_trains_fine_tunes_and_freezes_by_its_blocks(toy_encoder, tmp_path):
    Species.builds = 0
    metrics = _train(tmp_path, "pretrain", model={"encoder": {"name": "toy", "hidden": 8}, "head": {"hidden": [8]}})
    assert metrics["n_test"] > 0 and metrics["test"]["mae"] > 0
    model = TransferModel.load(tmp_path / "pretrain" / "model.ckpt")
    assert type(model.encoder) is ToyEncoder and model.encoder.out_dim == 16  # mean+max of 8

    checkpoint = str(tmp_path / "pretrain" / "model.ckpt")
    _train(tmp_path, "freeze", dataset="demo_volume",
           finetune={"method": "freeze", "read_from": checkpoint, "config": {"train_last": 1}})
    tuned = TransferModel.load(tmp_path / "freeze" / "model.ckpt")
    # `train_last: 1` froze the first of the toy's two blocks: bit-identical; the last one trained.
    assert torch.equal(tuned.encoder.embedding.weight, model.encoder.embedding.weight)
    assert not torch.equal(tuned.encoder.mix.weight, model.encoder.mix.weight)
    # demo_volume has the same structures as demo_energy: its rows came from the featurizer's cache.
    assert Species.builds == 1


def test_models_lists_encoders_and_an_unknown_pretrained_name_lists_the_available(capsys, tmp_path):
    assert main(["models"]) == 0
    assert "cgcnn" in capsys.readouterr().out
    options = tmp_path / "x.yaml"
    options.write_text(yaml.safe_dump({"data": {"dataset": "demo_volume", "n_samples": 30}, "device": "cpu",
                                       "finetune": {"method": "heads", "read_from": "nosuch:1.0"}}))
    assert main(["-q", "train", str(options)]) == 2
    error = capsys.readouterr().err.strip()
    assert "nosuch:1.0" in error and "available" in error and len(error.splitlines()) == 1
