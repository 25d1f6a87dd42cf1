"""Fixed test sets: never trained on, identical for every experiment on a dataset."""

from __future__ import annotations

import math
import random

import pytest
import torch

from mattransfer.data.splits import Split, fixed_test_ids, make_split
from mattransfer.errors import DataError, LeakError
from mattransfer.finetune import param_groups
from mattransfer.models.model import ModelConfig, TransferModel
from mattransfer.training import job as run_module
from mattransfer.training.job import train_and_test
from mattransfer.training.trainer import TrainingOptions

from conftest import MODEL

IDS = [f"mp-{i}" for i in range(500)]
POOL = 500 - math.ceil(0.1 * 500)


def test_fixed_test_size_and_membership():
    test = fixed_test_ids(IDS, 0.1, seed=0)
    assert len(test) == 50
    assert len(set(test)) == 50
    assert set(test) <= set(IDS)
    assert fixed_test_ids(IDS, 0.1, seed=1) != test  # the test seed does select another set


@pytest.mark.parametrize("n_samples", [2, 10, 97, 300, POOL, None])
def test_test_ids_never_in_train_or_val(n_samples):
    test = set(fixed_test_ids(IDS))
    for seed in range(25):
        split = make_split(IDS, n_samples, seed, dataset="ids")
        assert set(split.test) == test
        assert not test & set(split.train)
        assert not test & set(split.val)
        assert not set(split.train) & set(split.val)
        assert len(split.train) + len(split.val) == (POOL if n_samples is None else n_samples)
        assert len(split.train) >= 1 and len(split.val) >= 1


def test_test_set_independent_of_seed_size_and_row_order():
    reference = make_split(IDS, 20, seed=0).test
    shuffled = list(IDS)
    for k in range(10):
        random.Random(k).shuffle(shuffled)
        assert fixed_test_ids(shuffled) == fixed_test_ids(IDS)
        for seed, n in ((k, 5), (k + 100, 200), (3 * k, None)):
            assert make_split(shuffled, n, seed).test == reference
    # Different seeds draw different training sets from the same pool.
    assert make_split(IDS, 50, seed=0).train != make_split(IDS, 50, seed=1).train


def test_same_seed_same_split():
    assert make_split(IDS, 40, seed=7) == make_split(IDS, 40, seed=7)


@pytest.mark.parametrize(
    "train, val, test, message",
    [
        (("a", "b"), ("c",), ("b",), "train"),
        (("a",), ("c", "d"), ("d",), "val"),
        (("a", "b"), ("b",), ("z",), "train and val"),
    ],
)
def test_split_with_overlap_raises(train, val, test, message):
    with pytest.raises(LeakError, match=message):
        Split(train=train, val=val, test=test)


def test_leaky_split_file_is_refused(tmp_path):
    path = tmp_path / "split.json"
    Split(("a", "b"), ("c",), ("d",)).to_json(path)
    assert Split.from_json(path) == Split(("a", "b"), ("c",), ("d",))
    path.write_text('{"train": ["a", "d"], "val": ["c"], "test": ["d"]}')
    with pytest.raises(LeakError, match="'d'"):
        Split.from_json(path)


def _leaky_split(split: Split) -> Split:
    """A Split whose train holds a test id, built around the dataclass check (as a bug elsewhere might)."""
    leaky = object.__new__(Split)
    for name, value in (("train", split.train + split.test[:1]), ("val", split.val), ("test", split.test)):
        object.__setattr__(leaky, name, value)
    return leaky


def test_train_and_test_refuses_test_id_in_train(volume_data, volume_split, graph_settings, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("fit must not start on a leaky split")

    monkeypatch.setattr(run_module, "fit", no_training)
    model = TransferModel(ModelConfig(**MODEL), graph_settings)
    training = TrainingOptions(max_epochs=1)
    leaky = _leaky_split(volume_split)
    with pytest.raises(LeakError, match="test ids in the train split"):
        train_and_test(model, volume_data, leaky, training, param_groups(model, None, 1e-3),
                       seed=0, device=torch.device("cpu"), progress=False)
    # The clean split passes the check and reaches fit.
    with pytest.raises(AssertionError, match="leaky"):
        train_and_test(model, volume_data, volume_split, training, param_groups(model, None, 1e-3),
                       seed=0, device=torch.device("cpu"), progress=False)


def test_more_samples_than_pool_names_dataset_and_pool():
    with pytest.raises(DataError) as info:
        make_split(IDS, POOL + 1, seed=0, dataset="phonons")
    message = str(info.value)
    assert "phonons" in message
    assert str(POOL) in message and str(POOL + 1) in message
    make_split(IDS, POOL, seed=0)  # exactly the pool is fine


def test_too_few_samples_and_bad_fraction():
    with pytest.raises(DataError, match="at least 2"):
        make_split(IDS, 1, seed=0, dataset="x")
    with pytest.raises(DataError, match="test_fraction"):
        fixed_test_ids(IDS, 1.5)
