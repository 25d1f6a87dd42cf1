"""Shared fixtures: an isolated cache, the embedded demo data, tiny models and one small pre-training.

Everything here is sized for a 2-core CPU: CGCNN with 16 features and 2 layers, a few epochs,
tens of structures.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from pymatgen.core import Lattice, Structure

from mattransfer.config import TrainConfig
from mattransfer.data.registry import DataSources
from mattransfer.data.splits import Split, make_split
from mattransfer.data.table import PropertyTable
from mattransfer.finetune import METHODS, param_groups
from mattransfer.graphs.build import GraphSettings, RadiusGraph
from mattransfer.graphs.inputs import cached_inputs
from mattransfer.models.model import TransferModel
from mattransfer.training.job import Dataset, train_and_test
from mattransfer.training.run import run
from mattransfer.training.trainer import TrainingOptions

# CI keeps the offline datasets beside the repository: <root>/../shared/data.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

GRAPHS = {"cutoff": 5.0, "max_neighbors": 8}
MODEL = {
    "encoder": {"name": "cgcnn", "hidden": 16, "n_layers": 2, "n_gaussians": 10},
    "head": {"hidden": [16]},
}
TRAINING = {"max_epochs": 4, "patience": 4, "batch_size": 16, "lr": 5e-3}


# The models here are tiny: intra-op threads only add overhead, and on a busy 2-core runner
# oversubscribed threads make each step many times slower.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory: pytest.TempPathFactory):
    """Caches (demo data, graphs) go to a session tmp dir, never ~/.cache; no user data-sources leak in."""
    saved = {k: os.environ.get(k) for k in ("MATTRANSFER_CACHE", "MATTRANSFER_DATA_SOURCES", "MATMINER_DATA")}
    os.environ["MATTRANSFER_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.pop("MATTRANSFER_DATA_SOURCES", None)
    os.environ.pop("MATMINER_DATA", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def graph_settings() -> GraphSettings:
    return GraphSettings(**GRAPHS)


@pytest.fixture(scope="session")
def demo_energy() -> PropertyTable:
    """The embedded demo (300 EMT crystals), built once per session into the session cache."""
    return DataSources().load("demo_energy")


@pytest.fixture(scope="session")
def demo_volume(demo_energy: PropertyTable) -> PropertyTable:
    return DataSources().load("demo_volume")


@pytest.fixture(scope="session")
def volume_data(demo_volume: PropertyTable, graph_settings: GraphSettings) -> Dataset:
    return Dataset(demo_volume, cached_inputs(demo_volume, RadiusGraph(graph_settings), progress=False))


@pytest.fixture(scope="session")
def volume_split(demo_volume: PropertyTable) -> Split:
    return make_split(demo_volume.ids, 48, seed=0, dataset=demo_volume.name)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., TrainConfig]:
    """A tiny, CPU-only `TrainConfig`; keyword sections are merged over the defaults."""

    def make(output_dir: Path | None = None, **sections: Any) -> TrainConfig:
        raw: dict[str, Any] = {
            "seed": 0,
            "device": "cpu",
            "output_dir": str(output_dir or tmp_path / "run"),
            "data": {"dataset": "demo_energy", "n_samples": 60},
            "graphs": dict(GRAPHS),
            "model": copy.deepcopy(MODEL),
            "training": dict(TRAINING),
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(raw.get(key), dict):
                raw[key] = {**raw[key], **value}
            else:
                raw[key] = value
        return TrainConfig.model_validate(raw)

    return make


@pytest.fixture(scope="session")
def pretrained_ckpt(tmp_path_factory: pytest.TempPathFactory, demo_energy: PropertyTable) -> Path:
    """A tiny CGCNN pre-trained on demo_energy; its batch-norm running stats are no longer the defaults."""
    out = tmp_path_factory.mktemp("pretrain")
    config = TrainConfig.model_validate({
        "seed": 0, "device": "cpu", "output_dir": str(out),
        "data": {"dataset": "demo_energy", "n_samples": 80},
        "graphs": GRAPHS, "model": MODEL, "training": TRAINING,
    })
    run(config, progress=False)
    return out / "model.ckpt"


@pytest.fixture
def pretrained(pretrained_ckpt: Path) -> TransferModel:
    """A fresh copy of the pre-trained model for each test."""
    return TransferModel.load(pretrained_ckpt)


@pytest.fixture
def finetune(volume_data: Dataset, volume_split: Split) -> Callable[..., tuple[TransferModel, dict]]:
    """Apply fine-tuning ``method`` to ``model`` and train it briefly on demo_volume.

    Returns the trained model and a snapshot of its state right after ``prepare`` (before training).
    """

    def apply(model: TransferModel, method: str, epochs: int = 3, **options: Any):
        options_cls, prepare = METHODS[method]
        opts = options_cls(**options)
        torch.manual_seed(0)
        model = prepare(model, opts)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        training = TrainingOptions(max_epochs=epochs, patience=epochs, batch_size=8, lr=1e-2)
        train_and_test(model, volume_data, volume_split, training, param_groups(model, opts, training.lr),
                       seed=0, device=torch.device("cpu"), progress=False)
        return model, before

    return apply


def fcc(element: str, a: float) -> Structure:
    """Conventional fcc cell (4 atoms)."""
    return Structure(Lattice.cubic(a), [element] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def isolated_atom(element: str = "Cu", box: float = 20.0) -> Structure:
    """One atom in a cubic cell so large that it has no neighbour inside any test cutoff."""
    return Structure(Lattice.cubic(box), [element], [[0, 0, 0]])
