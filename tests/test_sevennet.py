"""The SevenNet-0 encoder (`sevenn:7net-0`): its weights are SevenNet's, its features are the ones its
energy readout reads, and it fine-tunes, freezes and checkpoints like any encoder.

Structures are small perturbed crystals: perturbed so that no symmetry zeroes the l = 1, 2 features,
which would hide a mis-loaded equivariant weight (cubic cells get the right energy from l = 0 alone).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor
from torch_geometric.utils import scatter

from mattransfer.data.splits import make_split
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError, DataError
from mattransfer.finetune import METHODS, param_groups
from mattransfer.models.encoders.sevennet import SevenNet, _checkpoint, build_sevennet_graphs
from mattransfer.models.head import HeadConfig
from mattransfer.models.model import TransferModel
from mattransfer.training.job import Dataset, train_and_test
from mattransfer.training.prefix import PrefixStore
from mattransfer.training.trainer import TrainingOptions

def _rock_salt(a: float, cation: str, anion: str) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _crystals(n: int, seed: int = 0) -> list[Structure]:
    """Rock-salt and fcc cells with random strain and rattled atoms (seeded: the tests are repeatable)."""
    rng = np.random.default_rng(seed)
    prototypes = [
        _rock_salt(5.64, "Na", "Cl").get_primitive_structure(),
        _rock_salt(4.21, "Mg", "O").get_primitive_structure(),
        Structure(Lattice.cubic(3.6), ["Cu", "Cu", "Al", "Cu"], [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]),
    ]
    out = []
    for k in range(n):
        structure = prototypes[k % len(prototypes)].copy()
        structure.apply_strain(rng.uniform(-0.04, 0.04, 3))
        for site in range(len(structure)):
            structure.translate_sites([site], rng.normal(0, 0.06, 3), frac_coords=False)
        out.append(structure)
    return out


def _table(structures: list[Structure], name: str = "crystals") -> PropertyTable:
    # Target: volume per atom, which the crystals' features must carry.
    y = np.array([s.volume / len(s) for s in structures])
    return PropertyTable(name=name, target="volume_per_atom", unit="A^3/atom", source="test",
                         ids=[f"{name}-{k}" for k in range(len(structures))], structures=structures, y=y)


@pytest.fixture(scope="module")
def pretrained_7net() -> TransferModel:
    torch.manual_seed(0)  # the fresh head
    return TransferModel.from_pretrained("sevenn:7net-0", HeadConfig(hidden=[8]))


@pytest.fixture(scope="module")
def crystals() -> Dataset:
    table = _table(_crystals(18))
    return Dataset(table, build_sevennet_graphs(table, progress=False))


def _fine_tune(model: TransferModel, data: Dataset, method: str, **options) -> TransferModel:
    options_cls, prepare = METHODS[method]
    opts = options_cls(**options)
    torch.manual_seed(0)
    model = prepare(model, opts)
    split = make_split(data.table.ids, 12, seed=0, dataset=data.table.name)
    training = TrainingOptions(max_epochs=1, patience=1, batch_size=6, lr=1e-2)
    train_and_test(model, data, split, training, param_groups(model, opts, training.lr), seed=0,
                   device=torch.device("cpu"), progress=False)
    return model


def test_atom_features_reproduce_sevennets_own_energy(pretrained_7net):
    import sevenn._keys as KEY
    from sevenn.calculator import SevenNetCalculator

    structures = _crystals(3, seed=1)
    batch = build_sevennet_graphs(_table(structures), progress=False).batch(torch.arange(3))
    encoder = copy.deepcopy(pretrained_7net.encoder).eval()
    reference = _checkpoint().build_model().eval()  # sevenn's whole potential, readout included
    with torch.no_grad():
        # SevenNet's own readout modules on our atom features give the atomic energies.
        data = {KEY.NODE_FEATURE: encoder.atom_features(batch), KEY.ATOM_TYPE: encoder.species_index[batch.z],
                KEY.BATCH: batch.batch}
        for name in ("reduce_input_to_hidden", "reduce_hidden_to_energy", "rescale_atomic_energy"):
            data = reference._modules[name](data)
    ours = scatter(data[KEY.ATOMIC_ENERGY].squeeze(-1), batch.batch, 0, reduce="mean")

    calculator = SevenNetCalculator(reference, file_type="model_instance", device="cpu")
    expected = []
    for structure in structures:
        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = calculator
        expected.append(atoms.get_potential_energy() / len(atoms))
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5, rtol=0)
    assert max(expected) - min(expected) > 0.5  # three different compounds: a real comparison


def test_heads_keeps_every_encoder_weight(pretrained_7net, crystals):
    before = {k: v.clone() for k, v in pretrained_7net.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in pretrained_7net.head.state_dict().items()}
    model = _fine_tune(copy.deepcopy(pretrained_7net), crystals, "heads", lr_head=3e-3)
    after = model.encoder.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"encoder.{key} changed under `heads`"
    assert any(not torch.equal(model.head.state_dict()[k], v) for k, v in head_before.items())


def test_freeze_trains_the_last_block_and_the_checkpoint_reloads_it(pretrained_7net, crystals, tmp_path):
    # A deep copy of a model that has run: it must save and reload like the original (see SevenNet.__setstate__).
    model = _fine_tune(copy.deepcopy(pretrained_7net), crystals, "freeze", train_last=1)
    tuned, original = model.encoder.state_dict(), pretrained_7net.encoder.state_dict()
    assert all(torch.equal(tuned[k], v) for k, v in original.items() if not k.startswith("interactions.4."))
    assert not torch.equal(tuned["interactions.4.self_interaction_2.linear.weight"],
                           original["interactions.4.self_interaction_2.linear.weight"])

    batch = crystals.inputs.batch(torch.arange(len(crystals.inputs)))
    expected = model.eval().predict(batch)
    model.save(tmp_path / "model.ckpt")
    loaded = TransferModel.load(tmp_path / "model.ckpt").eval()
    assert torch.equal(loaded.predict(batch), expected)


def test_prefix_store_batches_give_sevennets_own_output(pretrained_7net, crystals):
    """Node features after the frozen first blocks, computed once and sliced per batch, give the whole
    encoder's atom features for any batch order (what `freeze` trains on)."""
    encoder = copy.deepcopy(pretrained_7net.encoder).eval()
    index = torch.tensor([7, 2, 11, 0, 5])
    with torch.no_grad():
        whole = encoder.atom_features(crystals.inputs.batch(index))
        for start in (1, 3, len(encoder.blocks())):
            prefix = PrefixStore(crystals.inputs, encoder, start, torch.device("cpu"), batch_size=4)
            torch.testing.assert_close(encoder.atom_features(prefix.batch(index)), whole, atol=1e-5, rtol=1e-5)


def test_an_element_sevennet_lacks_is_a_one_line_error_naming_the_structure(pretrained_7net):
    polonium = Structure(Lattice.cubic(3.35), ["Po"], [[0, 0, 0]])  # Z = 84: not among 7net-0's 89 species
    store = build_sevennet_graphs(_table([*_crystals(1), polonium], name="with-po"), progress=False)
    with pytest.raises(DataError) as error:
        pretrained_7net.encoder.check_elements(store)
    message = str(error.value)
    assert "'with-po-1'" in message and "Z=84" in message and "\n" not in message


def test_lora_says_in_one_line_that_sevennet_has_no_linear_it_can_wrap(pretrained_7net):
    options_cls, prepare = METHODS["lora"]
    with pytest.raises(ConfigError, match="SevenNet encoder has no torch.nn.Linear") as error:
        prepare(copy.deepcopy(pretrained_7net), options_cls())
    assert "\n" not in str(error.value)


def test_blocks_are_modules_in_sevennets_order(pretrained_7net):
    blocks = pretrained_7net.encoder.blocks()
    assert blocks == ["embedding", *(f"interactions.{t}" for t in range(5))]
    for name in blocks:
        assert any(p.numel() for p in pretrained_7net.encoder.get_submodule(name).parameters())


def test_random_init_is_sevennets_architecture_with_finite_features(pretrained_7net, crystals):
    torch.manual_seed(0)
    fresh = SevenNet(SevenNet.Config(), pretrained_7net.graphs).eval()
    assert fresh.state_dict().keys() == pretrained_7net.encoder.state_dict().keys()
    for t in range(5):  # 7net-0's sqrt(average neighbour count), not the checkpoint config's 0
        denominator = f"interactions.{t}.convolution.denominator"
        assert torch.equal(fresh.state_dict()[denominator], pretrained_7net.encoder.state_dict()[denominator])
    batch = crystals.inputs.batch(torch.arange(4))
    with torch.no_grad():
        features = fresh.atom_features(batch)
        assert features.shape == (len(batch.z), 128) and torch.isfinite(features).all()
        assert not torch.allclose(features, pretrained_7net.encoder.eval().atom_features(batch))
