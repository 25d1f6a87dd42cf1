"""Fixed test sets and train/val subsets drawn from the rest.

The test set of a dataset is a property of each id: an id is in it when its seeded hash ranks in
the lowest ``test_fraction``. It therefore does not depend on row order or on which experiment asks,
and every experiment on a dataset tests on the same ids. Training and validation samples come only
from the other ids; `Split` refuses to exist with an overlap.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from mattransfer.data.table import PropertyTable, composition_key
from mattransfer.errors import DataError, LeakError
from mattransfer.fileio import write_json


def fixed_test_ids(ids: Sequence[str], fraction: float = 0.1, seed: int = 0) -> list[str]:
    """The dataset's test ids: the ``ceil(fraction * n)`` ids of lowest seeded hash, in hash order.

    ``fraction`` 0 means no test ids (the test set is another file).
    """
    if not 0 <= fraction < 1:
        raise DataError(f"test_fraction must be at least 0 and below 1, got {fraction}.")
    ranked = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    return ranked[: math.ceil(fraction * len(ids))]


@dataclass(frozen=True)
class Split:
    """Disjoint train / val / test ids of one experiment."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    test_fraction: float = 0.1  # how the fixed test set was drawn (`fixed_test_ids`)
    test_seed: int = 0

    def __post_init__(self) -> None:
        assert_disjoint(self.train, self.val, self.test)

    def to_json(self, path: Path) -> None:
        write_json(path, asdict(self))

    @classmethod
    def from_json(cls, path: Path) -> Split:
        raw = json.loads(Path(path).read_text())
        return cls(tuple(raw["train"]), tuple(raw["val"]), tuple(raw["test"]),
                   raw.get("test_fraction", 0.1), raw.get("test_seed", 0))


def assert_disjoint(train: Sequence[str], val: Sequence[str], test: Sequence[str]) -> None:
    test_set = set(test)
    for name, part in (("train", train), ("val", val)):
        leaked = test_set.intersection(part)
        if leaked:
            raise LeakError(f"{len(leaked)} test ids in the {name} split (e.g. {sorted(leaked)[:3]}).")
    overlap = set(train).intersection(val)
    if overlap:
        raise LeakError(f"{len(overlap)} ids in both train and val (e.g. {sorted(overlap)[:3]}).")


def make_split(
    ids: Sequence[str],
    n_samples: int | None,
    seed: int,
    *,
    dataset: str = "dataset",
    test_fraction: float = 0.1,
    val_fraction: float = 0.1,
    test_seed: int = 0,
) -> Split:
    """Draw ``n_samples`` from the non-test pool with ``seed`` and split them into train and val.

    ``n_samples=None`` takes the whole pool. Asking for more than the pool holds is an error:
    callers that want a cap apply it themselves and record it. ``val_fraction`` 0 puts every sample
    in train (the validation set is another file).
    """
    test = fixed_test_ids(ids, test_fraction, test_seed)
    test_set = set(test)
    pool = [i for i in ids if i not in test_set]
    n = len(pool) if n_samples is None else n_samples
    if n > len(pool):
        raise DataError(
            f"{dataset}: {n} samples requested but the pool outside the fixed {test_fraction:.0%} test"
            f" set holds {len(pool)} (dataset size {len(ids)})."
        )
    needed = 2 if val_fraction > 0 else 1
    if n < needed:
        raise DataError(f"{dataset}: at least {needed} samples are needed (train{' and val' * (needed == 2)}), got {n}.")
    rng = np.random.default_rng(seed)
    chosen = [pool[i] for i in rng.permutation(len(pool))[:n]]
    n_val = min(max(1, round(n * val_fraction)), n - 1) if val_fraction > 0 else 0
    return Split(train=tuple(chosen[n_val:]), val=tuple(chosen[:n_val]), test=tuple(test),
                 test_fraction=test_fraction, test_seed=test_seed)


def without_compositions(table: PropertyTable, compositions: set[str], reason: str) -> PropertyTable:
    """``table`` without the rows whose `composition_key` is in ``compositions``; their count is ``dropped[reason]``.

    By element fractions, not reduced formulas: pymatgen writes Sn0.2Pb0.8Se1 and SnPb4Se5 differently."""
    keep = [i for i, c in zip(table.ids, table.row_compositions()) if composition_key(c) not in compositions]
    kept = table.subset(keep)
    kept.dropped[reason] = len(table) - len(keep)
    return kept


def without_formulas_of(table: PropertyTable, other: PropertyTable, reason: str) -> PropertyTable:
    """``table`` without the rows whose composition is that of a row of ``other`` (`without_compositions`)."""
    return without_compositions(table, {composition_key(c) for c in other.row_compositions()}, reason)


def training_record(table: PropertyTable, split: Split) -> dict:
    """What a model was trained on, as plain types for its checkpoint: the dataset, how its test set
    was drawn, and the identities (structure key, reduced formula) of its train and val rows."""
    rows = table.subset(list(split.train) + list(split.val))
    return {"dataset": table.name, "target": table.target, "unit": table.unit,
            "test_fraction": split.test_fraction, "test_seed": split.test_seed,
            "ids": rows.ids, **rows.identities()}


def test_overlap(records: list[dict], table: PropertyTable, test_ids: Sequence[str]) -> dict:
    """How many of ``test_ids`` a model has seen in training: same structure, and same reduced formula.

    ``records`` are the model's `training_record`s (a fine-tuned model carries its pre-training's too).
    """
    seen = {kind: set().union(*(r[kind] for r in records)) for kind in ("structure", "formula")}
    subset = table.subset(list(test_ids))
    test = subset.identities()
    same = [i for i, key in zip(subset.ids, test["structure"]) if key in seen["structure"]]
    return {"n_test": len(test["structure"]), "same_structure": len(same),
            "same_formula": sum(f in seen["formula"] for f in test["formula"]), "examples": same[:5]}

