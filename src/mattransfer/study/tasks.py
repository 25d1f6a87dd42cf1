"""Tasks: one training each, keyed by a hash of everything that determines its result.

A pre-training or fine-tuning is the same task whichever part asks for it. Parts add tasks to a
`Plan`, which keeps one task per hash and records every part it belongs to. Subsets are drawn by
`make_split` from (dataset, size, seed): a scratch baseline trains on the very subset of the
transfer runs of the same (target, size, seed), and each seed draws its own subsets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Literal

from mattransfer.featurizers.features import FEATURES_VERSION
from mattransfer.errors import ConfigError
from mattransfer.study.data import PreparedData, data_key
from mattransfer.study.parts.base import method_setting
from mattransfer.training.job import ZERO_SHOT

if TYPE_CHECKING:  # the spec imports the parts, which plan with this module
    from mattransfer.study.spec import StudySpec

TASK_FORMAT = 1  # bump when a code change alters what a finished task would compute
THROUGH_FEATURES = "+source"  # a feature baseline's method suffix when a pre-training's prediction is a feature


@dataclass
class Task:
    """One training: a pre-training, a transfer fine-tune, a scratch baseline (a fine-tune without source),
    a feature baseline (kind "baseline": a scikit-learn model on matminer features, method its name), or a
    pre-training tested as it is on another dataset (kind and method "zero-shot": no training, size 0)."""

    kind: Literal["pretrain", "finetune", "baseline", "zero-shot"]
    dataset: str  # trained and tested on
    size: int  # samples drawn from the dataset's pool: train + val
    seed: int
    method: str  # "pretrain", "scratch", "zero-shot", a fine-tuning method or a label of one (see ``runs``)
    options: dict[str, Any] = field(default_factory=dict)
    runs: str | None = None  # the fine-tuning method a labelled task runs (``method`` is then the label)
    aux_lambda: float | None = 0.0  # of the pre-training; None for scratch, which has none
    source: str | None = None  # pre-training dataset of a transfer fine-tune
    pretrain_size: int | None = None
    pretrain: str | None = None  # hash of the pre-training a transfer fine-tune starts from
    pretrained: str | None = None  # or a package's pre-trained model it starts from (chgnet:0.3.0)
    hash: str = ""
    parts: set[int] = field(default_factory=set)
    notes: set[str] = field(default_factory=set)  # caps applied to the requested sizes

    @property
    def aux_weight(self) -> float:
        """λ of the auxiliary loss this task trains with: a pre-training's own; fine-tunes have none."""
        return (self.aux_lambda or 0.0) if self.kind == "pretrain" else 0.0

    def describe(self) -> str:
        aux = f" λ={self.aux_lambda:g}" if self.aux_lambda else ""
        if self.kind == "pretrain":
            return f"pretrain {self.dataset}{aux} n={self.size} seed {self.seed}"
        if self.method == "scratch" or self.kind == "baseline":
            return f"{self.method} {self.dataset} n={self.size} seed {self.seed}"
        if self.kind == "zero-shot":
            return f"{self.method} {self.source}{aux}→{self.dataset} seed {self.seed}"
        if self.pretrained:
            return f"{self.method} {self.pretrained}→{self.dataset} n={self.size} seed {self.seed}"
        return f"{self.method} {self.source}{aux}→{self.dataset} n={self.size} seed {self.seed}"

    @property
    def data_key(self) -> str:
        """Which prepared data the task reads: a pre-trained model's own inputs, or the study encoder's."""
        return data_key(self.dataset, self.pretrained)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "parts": sorted(self.parts), "notes": sorted(self.notes)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Task:
        return cls(**{**raw, "parts": set(raw["parts"]), "notes": set(raw["notes"])})


# Options added since TASK_FORMAT 1, at the values that compute what was computed before them (their defaults
# but for clip_to_train_range, on since): left out of a task's hash, so that the tasks of a study run before
# they existed keep their hashes, and their finished results.
NEW_DEFAULTS: dict[str, Any] = {
    "input_norm": False,  # model.head
    "elements": "learned", "atom_descriptors": False,  # model.encoder (cgcnn)
    "schedule": "constant", "warmup_epochs": 0, "plateau_factor": 0.5, "plateau_patience": 10,  # training
    "target_transform": "none", "clip_to_train_range": False, "ema_decay": 0.0,
}


def _without_new_defaults(content: Any) -> Any:
    if isinstance(content, dict):
        return {k: _without_new_defaults(v) for k, v in content.items()
                if not (k in NEW_DEFAULTS and v == NEW_DEFAULTS[k])}
    return content


class Plan:
    """The study's tasks by hash, in the order they were first added."""

    def __init__(self, tasks: list[Task] | None = None) -> None:
        self.tasks: dict[str, Task] = {}
        for task in tasks or []:
            self.tasks[task.hash] = task

    def add(self, task: Task, part: int) -> Task:
        """Add ``task`` to ``part``; an equal task already planned is kept and gains the part. A label is not
        part of the hash (it changes no result): one fine-tune under two labels is an error naming both."""
        kept = self.tasks.setdefault(task.hash, task)
        if kept.method != task.method:
            raise ConfigError(f"{task.describe()} is planned as {kept.method!r} too (the same method and options):"
                              " give the setting one label in every part")
        kept.parts.add(part)
        kept.notes |= task.notes
        return kept

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks.values())

    def __len__(self) -> int:
        return len(self.tasks)

    def in_part(self, part: int) -> list[Task]:
        return [t for t in self if part in t.parts]

    def to_json(self) -> list[dict[str, Any]]:
        return [t.to_json() for t in self]

    @classmethod
    def from_json(cls, raw: list[dict[str, Any]]) -> Plan:
        return cls([Task.from_json(t) for t in raw])


class Planner:
    """Expands a spec's parts into tasks over its prepared datasets: the task constructors the parts plan with."""

    def __init__(self, spec: StudySpec, data: dict[str, PreparedData]) -> None:
        self.spec, self.data = spec, data
        self._shared = {
            "format": TASK_FORMAT,
            "split": {
                "test_fraction": spec.test_fraction, "test_seed": spec.test_seed, "val_fraction": spec.val_fraction,
            },
            "graphs": spec.graphs.model_dump(),
            "model": spec.model.model_dump(),
        }

    def plan(self) -> Plan:
        """Every enabled part's tasks, but those a part plans once the results it waits for are in."""
        plan = Plan()
        for part in self.spec.parts():
            part.plan(self, plan)
        return plan

    # Tasks

    def pretrain(self, key: str, requested: int, seed: int, aux_lambda: float = 0.0) -> Task:
        size, notes = self._capped(key, requested, "pretrain_size")
        task = Task("pretrain", key, size, seed, "pretrain", aux_lambda=aux_lambda, source=key,
                    pretrain_size=size, notes=notes)
        task.hash = self._hash(kind="pretrain", dataset=key, data=self.data[key].fingerprint, size=size, seed=seed,
                               training=self.spec.pretrain.model_dump(), aux_lambda=aux_lambda)
        return task

    def finetune(self, pretrain: Task | None, key: str, requested: int, seed: int, label: str,
                 options: dict[str, Any]) -> Task:
        """A transfer fine-tune from ``pretrain``, or with ``pretrain=None`` the scratch baseline; ``label``
        and ``options``: an entry of a part's `Methods`."""
        size, notes = self._capped(key, requested, "finetune_size")
        method, options = method_setting(label, options)
        task = Task("finetune", key, size, seed, label, options, runs=None if method == label else method,
                    aux_lambda=None, notes=notes)
        if pretrain is not None:
            task.source, task.pretrain_size, task.pretrain = pretrain.dataset, pretrain.size, pretrain.hash
            task.aux_lambda = pretrain.aux_lambda
            task.notes |= pretrain.notes
        task.hash = self._hash(kind="finetune", dataset=key, data=self.data[key].fingerprint, size=size, seed=seed,
                               training=self.spec.finetune.model_dump(), method=method, options=options,
                               pretrain=task.pretrain)
        return task

    def universal(self, name: str, key: str, requested: int, seed: int, label: str, options: dict[str, Any]) -> Task:
        """A fine-tune of the package's pre-trained model ``name`` (its encoder reads inputs of its own)."""
        size, notes = self._capped(key, requested, "finetune_size")
        method, options = method_setting(label, options)
        task = Task("finetune", key, size, seed, label, options, runs=None if method == label else method,
                    aux_lambda=None, source=name, pretrained=name, notes=notes)
        task.hash = self._hash(kind="finetune", dataset=key, data=self.data[task.data_key].fingerprint, size=size,
                               seed=seed, training=self.spec.finetune.model_dump(), method=method, options=options,
                               pretrained=name)
        return task

    def scratch(self, key: str, requested: int, seed: int) -> Task:
        return self.finetune(None, key, requested, seed, "scratch", {})

    def baseline(self, key: str, requested: int, seed: int, model: str, pretrain: Task | None = None) -> Task:
        """Feature baseline ``model`` on the subset a fine-tune of (key, size, seed) draws; with ``pretrain``,
        that model's prediction is one more feature (transfer through features; method ``<model>+source``)."""
        size, notes = self._capped(key, requested, "finetune_size")
        task = Task("baseline", key, size, seed, model, aux_lambda=None, notes=notes)
        through = {}
        if pretrain is not None:
            task.method, task.runs = f"{model}{THROUGH_FEATURES}", model
            task.source, task.pretrain_size, task.pretrain = pretrain.dataset, pretrain.size, pretrain.hash
            task.notes |= pretrain.notes
            through = {"pretrain": pretrain.hash}  # only then: the plain baselines keep their hashes
        task.hash = self._hash(kind="baseline", dataset=key, data=self.data[key].fingerprint, size=size, seed=seed,
                               model=model, features=FEATURES_VERSION, **through)
        return task

    def zero_shot(self, pretrain: Task, key: str) -> Task:
        """``pretrain``'s model tested as it is on ``key``'s fixed test set (its seed: the pre-training's)."""
        task = Task("zero-shot", key, 0, pretrain.seed, ZERO_SHOT, aux_lambda=pretrain.aux_lambda,
                    source=pretrain.dataset, pretrain_size=pretrain.size, pretrain=pretrain.hash,
                    notes=set(pretrain.notes))
        task.hash = self._hash(kind="zero-shot", dataset=key, data=self.data[key].fingerprint, pretrain=pretrain.hash)
        return task

    def transfer(self, plan: Plan, part: int, pretrain: Task, target: str, sizes: list[int],
                 methods: dict[str, dict[str, Any]], seed: int) -> None:
        """Fine-tunes of ``pretrain`` on ``target`` at each size, with their scratch baselines."""
        for size in sizes:
            plan.add(self.scratch(target, size, seed), part)
            for method, options in methods.items():
                plan.add(self.finetune(pretrain, target, size, seed, method, options), part)

    def _capped(self, key: str, requested: int, what: str) -> tuple[int, set[str]]:
        pool = self.data[key].pool
        if requested <= pool:
            return requested, set()
        return pool, {f"{what} {requested} capped at {pool} ({key}: samples outside the test set)"}

    def _hash(self, **content: Any) -> str:
        text = json.dumps(_without_new_defaults({**self._shared, **content}), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
