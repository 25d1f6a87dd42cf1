"""The CHGNet encoder plug-in: the package's pre-trained weights, wrapped, fine-tuned and checkpointed.

A few hand-built crystals and the first 40 phonons structures of the offline data: CHGNet costs about
20 ms per small structure forward on one CPU thread.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from matminer.utils.io import store_dataframe_as_json
from pymatgen.core import Lattice, Structure
from torch_geometric.utils import scatter

from mattransfer.cli import main
from mattransfer.data.registry import DataSources
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError, DataError
from mattransfer.graphs.inputs import row_keys
from mattransfer.models.encoders.base import pretrained_weights
from mattransfer.models.encoders.chgnet import CHGNetGraphs, load_chgnet
from mattransfer.models.lora import LoRALinear
from mattransfer.models.model import TransferModel
from mattransfer.training.job import featurize, predict_structures
from mattransfer.training.prefix import PrefixStore, cached_prefix

from conftest import SHARED_DATA, fcc, isolated_atom

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"offline datasets not at {SHARED_DATA}")


@pytest.fixture(scope="module")
def pretrained_chgnet() -> TransferModel:
    return TransferModel.from_pretrained("chgnet:0.3.0")


@pytest.fixture
def chgnet(pretrained_chgnet: TransferModel) -> TransferModel:
    return copy.deepcopy(pretrained_chgnet)


def _table(structures: list, name: str = "chgnet-test") -> PropertyTable:
    frame = pd.DataFrame({"structure": structures, "y": np.arange(len(structures), dtype=float)},
                         index=[f"s{k}" for k in range(len(structures))])
    return PropertyTable.from_frame(frame, name=name, target="y", unit="eV", source=name)


def _crystals() -> list[Structure]:
    """Metals, an ionic and a covalent crystal, an oxide: different bonding, different energies."""
    return [
        fcc("Cu", 3.61),
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]),
        Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
        Structure(Lattice.tetragonal(2.9, 3.1), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.52]]),
    ]


@pytest.fixture(scope="module")
def phonons_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PropertyTable]:
    """The first 40 phonons rows as a file of their own (a data file the CLI reads) and as a table."""
    phonons = DataSources(data_dir=SHARED_DATA).load("phonons")
    frame = pd.DataFrame({"structure": list(phonons.structures[:40]), "y": phonons.y[:40]}, index=phonons.ids[:40])
    path = tmp_path_factory.mktemp("chgnet") / "phonons40.json.gz"
    store_dataframe_as_json(frame, str(path), compression="gz", orient="split", pbar=False)
    return path, PropertyTable.from_frame(frame, name="phonons40", target="y", unit="cm^-1", source=str(path))


def test_wrapped_chgnet_reproduces_the_package_energies(chgnet):
    """Atom features through CHGNet's own energy readout and reference energies give `predict_structure`'s
    energy per atom: the weights loaded into the right places and the cached graphs are CHGNet's."""
    structures = _crystals()
    store = CHGNetGraphs(6.0, 3.0).build(_table(structures), progress=False)
    batch = store.batch(torch.tensor([3, 0, 4, 1, 2]))  # out of order: every index shift is exercised
    reference = load_chgnet("0.3.0")
    with torch.no_grad():
        atoms = chgnet.encoder.eval().atom_features(batch)
        energy = scatter(reference.mlp(atoms).squeeze(1), batch.batch, 0, reduce="mean")
        graphs = [reference.graph_converter(structures[k]) for k in (3, 0, 4, 1, 2)]
        energy = energy + reference.composition_model(graphs)
    expected = [reference.predict_structure(structures[k], task="e")["e"] for k in (3, 0, 4, 1, 2)]
    np.testing.assert_allclose(energy.numpy(), expected, atol=1e-5, rtol=0)
    assert energy.std() > 0.1  # different crystals, different energies: not a constant that matches by luck


def test_a_structure_without_bonds_batches_beside_others(chgnet):
    structures = [_crystals()[3], isolated_atom("Cu"), _crystals()[1]]
    store = CHGNetGraphs(6.0, 3.0).build(_table(structures), progress=False)
    assert store.bond_ptr[2] == store.bond_ptr[1]  # the isolated atom has no bond and no angle
    encoder = chgnet.encoder.eval()
    with torch.no_grad():
        together = encoder(store.batch(torch.arange(3)))
        alone = torch.cat([encoder(store.batch(torch.tensor([k]))) for k in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert together.shape == (3, 4 * 64)  # mean+max+min+std of 64 features


def test_blocks_train_with_gradients_and_lora_wraps_chgnet_linears(chgnet):
    store = CHGNetGraphs(6.0, 3.0).build(_table(_crystals()[:4]), progress=False)
    batch = store.batch(torch.arange(4))
    assert chgnet.encoder.blocks() == ["embedding", *(f"interactions.{i}" for i in range(4))]
    chgnet.eval()
    before = chgnet.encoder(batch).detach()  # the encoder's: a training pass moves the head's batch-norm statistics

    chgnet.train()
    chgnet(batch).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in chgnet.encoder.parameters())

    wrapped = chgnet.add_lora(rank=2, alpha=4.0)
    assert any(name.startswith("interactions.3.atom_conv") for name in wrapped)
    assert all(isinstance(chgnet.encoder.get_submodule(name), LoRALinear) for name in wrapped)
    chgnet.zero_grad()
    chgnet.eval()
    torch.testing.assert_close(chgnet.encoder(batch), before)  # adapters start at zero
    chgnet.train()
    chgnet(batch).sum().backward()
    trained = [n for n, p in chgnet.encoder.named_parameters() if p.grad is not None]
    assert trained and all("lora_" in n for n in trained)


def _train(tmp_path: Path, data: Path, name: str, finetune: dict) -> Path:
    options = {"seed": 0, "device": "cpu", "output_dir": str(tmp_path / name),
               "data": {"dataset": None, "read_from": str(data), "target": "y", "unit": "cm^-1", "n_samples": 24},
               "training": {"max_epochs": 2, "patience": 2, "batch_size": 8}, "finetune": finetune}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(options))
    assert main(["-q", "--threads", "1", "train", str(path)]) == 0
    return tmp_path / name


@needs_shared_data
def test_heads_fine_tune_leaves_every_chgnet_weight_bit_identical(pretrained_chgnet, phonons_file, tmp_path):
    run_dir = _train(tmp_path, phonons_file[0], "heads",
                     {"method": "heads", "read_from": "chgnet:0.3.0", "config": {"lr_head": 0.01}})
    tuned = TransferModel.load(run_dir / "model.ckpt")
    original = pretrained_chgnet.encoder.state_dict()
    assert tuned.encoder.state_dict().keys() == original.keys()
    assert all(torch.equal(value, original[key]) for key, value in tuned.encoder.state_dict().items())
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["mae"] > 0


@needs_shared_data
def test_a_fine_tuned_chgnet_checkpoint_predicts_what_it_was_tested_with(pretrained_chgnet, phonons_file, tmp_path):
    run_dir = _train(tmp_path, phonons_file[0], "freeze", {"method": "freeze", "read_from": "chgnet:0.3.0",
                                           "config": {"train_last": 1}})
    tuned = TransferModel.load(run_dir / "model.ckpt")
    # train_last: 1 trained the last interaction only; the blocks before it are the package's weights.
    for block in ("embedding", "interactions.2"):
        ours, theirs = (m.encoder.get_submodule(block).state_dict() for m in (tuned, pretrained_chgnet))
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    last = tuned.encoder.get_submodule("interactions.3").state_dict()
    assert not all(torch.equal(v, pretrained_chgnet.encoder.get_submodule("interactions.3").state_dict()[k])
                   for k, v in last.items())

    tested = pd.read_csv(run_dir / "test_predictions.csv")
    table = phonons_file[1].subset(list(tested["id"]))
    predicted = pd.Series(predict_structures(tuned, table), index=table.ids)[tested["id"]]
    np.testing.assert_allclose(predicted, tested["y_pred"], rtol=1e-6)


def test_an_element_chgnet_lacks_is_one_line_naming_structure_and_element(chgnet):
    table = _table([fcc("Cu", 3.61), fcc("Am", 4.9)])  # americium, Z = 95
    with pytest.raises(DataError) as error:
        featurize(chgnet, table, cache=False)
    message = str(error.value)
    assert "'s1'" in message and "Z=95" in message and "\n" not in message


def test_an_unknown_pretrained_name_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"'chgnet:9\.9'.*available: .*chgnet:0\.3\.0"):
        pretrained_weights("chgnet:9.9")


def test_a_package_model_gets_a_head_that_standardises_its_features_unless_the_options_give_one():
    from mattransfer.models.head import HeadConfig

    assert isinstance(TransferModel.from_pretrained("chgnet:0.3.0").head[0], torch.nn.BatchNorm1d)
    plain = TransferModel.from_pretrained("chgnet:0.3.0", HeadConfig(hidden=[8]))
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.head)


def test_prefix_store_batches_give_chgnets_own_output(chgnet):
    """Atom, bond and angle state of the frozen first blocks, computed once and sliced per batch, gives
    the whole encoder's output for any batch order (a structure without bonds included); so does the state
    read back from the disk cache, half of it cached by an earlier run."""
    structures = [*_crystals(), isolated_atom("Cu")]
    featurizer = CHGNetGraphs(6.0, 3.0)
    store = featurizer.build(_table(structures), progress=False)
    keys = row_keys(_table(structures), featurizer)
    encoder, cpu = chgnet.encoder.eval(), torch.device("cpu")
    index = torch.tensor([3, 5, 0, 4, 1, 2])
    with torch.no_grad():
        whole = encoder.atom_features(store.batch(index))
        for start in (1, 3, len(encoder.blocks())):
            cached_prefix(chgnet, start, keys[3:], store.subset(torch.arange(3, len(store))), cpu)
            for state in (None, cached_prefix(chgnet, start, keys, store, cpu)):
                prefix = PrefixStore(store, encoder, start, cpu, batch_size=2, state=state)
                # atom vectors, not pooled ones: the std of a crystal's identical atoms is sqrt of rounding noise
                torch.testing.assert_close(encoder.atom_features(prefix.batch(index)), whole, atol=1e-5, rtol=1e-5)
