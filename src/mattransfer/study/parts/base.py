"""The part contract: a study part is one file in this package, found by its key in the study file.

A part subclasses `Part` (a pydantic section of the study file, validated like every study option,
``enabled`` included) and registers itself with ``@register_part("part1", number=1)``: the name is its
key in the study YAML (``part1:``), the number its tag in the plan (``plan.json``) and the results
table's ``part`` column. It declares:

- its options, as the section's fields;
- ``check(spec)``: what it needs of the rest of the study (its datasets among the study's …), a ValueError;
- ``plan(planner, plan)``: its tasks, made by the `Planner`'s constructors (``pretrain``, ``finetune``,
  ``scratch``, ``baseline``, ``universal``, ``transfer``, ``zero_shot``) and added with
  ``plan.add(task, self.number)``; a task another part also plans is one task in both.

A part's fine-tuning methods are a `Methods` field: method names, or labels that name their method inside
(``freeze-2: {method: freeze, train_last: 2}``) for several settings of one method; the label is the
results' ``method`` and the task's description, the method and its options what runs and what is hashed.

and where it needs them (the defaults do nothing):

- deferred planning: ``waits_for(planner, plan)`` the tasks whose results the rest of its plan reads, and
  ``plan_deferred(planner, plan, results, study)``, called once they are all done (Part 2 picks its
  targets from Part 1's gains); such a part's tasks run after the other parts';
- what the study prepares for it: ``bravais_labels()`` (datasets that need Bravais labels),
  ``pretrained_models()`` (package models whose inputs are prepared), ``feature_baselines(spec)``,
  ``formula_exclusions()`` ((source, target) pairs: the source prepared without the compositions of the
  target's fixed test set, under the data key `study.data.without_test_formulas` names);
- ``after_tasks(spec, plan, study, data)``: work once the tasks ran (Part 1's transferability scores);
- ``status(study)``: entries of its own for ``mattransfer study status``.

Its report section is a plug-in of `mattransfer.report.parts`, registered under the same name.
``parts/__init__.py`` imports each part file; their order there is the order of planning and of the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Callable, ClassVar, Sequence

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from mattransfer.finetune import METHODS
from mattransfer.training.baselines import MODELS as BASELINE_MODELS
from mattransfer.training.job import ZERO_SHOT

if TYPE_CHECKING:  # the parts' collaborators import the study spec, which imports the parts
    import pandas as pd

    from mattransfer.study.data import PreparedData
    from mattransfer.study.layout import StudyDir
    from mattransfer.study.spec import StudySpec
    from mattransfer.study.tasks import Plan, Planner, Task


def _methods(value: Any) -> dict[str, dict[str, Any]]:
    """``[heads, full]``, ``{freeze: {train_last: 2}, ...}`` or, for several settings of one method, labels
    naming it (``{freeze-1: {method: freeze, train_last: 1}, ...}``) → validated, complete options per label.

    A label's entry keeps ``method`` (what runs); the label is what the results and the report show. An entry
    whose key is its method has no ``method`` key, so it plans the tasks (and hashes) it always did.
    """
    if isinstance(value, list):
        value = {name: {} for name in value}
    if not isinstance(value, dict) or not value:
        raise ValueError("give a non-empty list of method names or a mapping of method (or label) → options")
    methods: dict[str, dict[str, Any]] = {}
    for label, options in value.items():
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"options of {label!r}: give a mapping (got {options!r})")
        options = dict(options or {})
        method = options.pop("method", label)
        if "scratch" in (label, method):
            raise ValueError("scratch baselines are always run; list only transfer methods")
        if label == ZERO_SHOT:
            raise ValueError(f"{label!r} names the rows of a pre-trained model without fine-tuning; choose another"
                             " label")
        if method not in METHODS:
            raise ValueError(f"{label!r}: unknown method {method!r}; available: {sorted(set(METHODS) - {'scratch'})}")
        if label != method and label in METHODS:
            raise ValueError(f"{label!r} is the name of a method, so it cannot run {method!r}; choose another label")
        try:
            complete = METHODS[method][0](**options).model_dump()
        except ValidationError as exc:
            raise ValueError(f"options of {label!r}: {exc.errors()[0]['msg']} (got {options!r})") from exc
        methods[label] = complete if label == method else {"method": method, **complete}
    same = [(a, b) for i, a in enumerate(methods) for b in list(methods)[i + 1:] if method_setting(a, methods[a])
            == method_setting(b, methods[b])]
    if same:
        raise ValueError(f"{same[0][0]!r} and {same[0][1]!r} are the same method with the same options: keep one")
    return methods


def method_setting(label: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The fine-tuning method an entry of a `Methods` mapping runs, and its options (``method`` taken out)."""
    options = dict(options)
    return options.pop("method", label), options


def _sizes(sizes: list[int]) -> list[int]:
    if not sizes or min(sizes) < 2:
        raise ValueError("sizes must be a non-empty list of integers >= 2 (one train and one val sample)")
    return sizes


Methods = Annotated[dict[str, dict[str, Any]], BeforeValidator(_methods)]
Sizes = Annotated[list[int], AfterValidator(_sizes)]


def distinct_of(names: list[str], known: Sequence[str], what: str) -> list[str]:
    """``names`` when each is one of ``known`` and none repeats; else a ValueError saying what is allowed."""
    if any(n not in known for n in names) or len(set(names)) != len(names):
        raise ValueError(f"give distinct {what} of {list(known)} (got {names})")
    return names


# Feature baselines of a part (`training.baselines`' models on matminer features), each named once.
Baselines = Annotated[list[str], AfterValidator(lambda names: distinct_of(names, BASELINE_MODELS, "baseline models"))]


def distinct_seeds(seeds: list[int] | None) -> list[int] | None:
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ValueError("give a non-empty list of distinct seeds")
    return seeds


def in_study(spec: StudySpec, where: str, keys: list[str]) -> None:
    """A ValueError naming ``where`` when any of ``keys`` is not one of the study's datasets."""
    outside = sorted(set(keys) - set(spec.datasets))
    if outside:
        raise ValueError(f"{where}: {outside} not in the study's datasets {spec.datasets}")


class Section(BaseModel):
    """A block of study options: unknown keys are errors naming the key."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class Part(Section):
    """A study part: its options, the tasks it plans, and the hooks it needs (see the module docstring)."""

    name: ClassVar[str]
    number: ClassVar[int]

    enabled: bool = True

    def check(self, spec: StudySpec) -> None:
        """Raise a ValueError when the rest of ``spec`` does not fit this part (called when enabled)."""

    def plan(self, planner: Planner, plan: Plan) -> None:
        raise NotImplementedError

    def waits_for(self, planner: Planner, plan: Plan) -> list[Task] | None:
        """The planned tasks whose results the rest of this part's plan reads; None: it plans everything at once."""
        return None

    def plan_deferred(self, planner: Planner, plan: Plan, results: pd.DataFrame, study: StudyDir) -> None:
        """Add the rest of the part's tasks, once every task of ``waits_for`` is done (``results``: their table)."""

    def bravais_labels(self) -> set[str]:
        """Datasets whose Bravais-lattice labels the part's tasks train on."""
        return set()

    def pretrained_models(self) -> list[str]:
        """Packages' pre-trained models the part fine-tunes (their inputs are prepared for every dataset)."""
        return []

    def feature_baselines(self, spec: StudySpec) -> dict[str, int]:
        """The datasets the part plans feature baselines on, each with the largest fine-tune size they draw
        (the matminer features of those rows are prepared)."""
        return {}

    def formula_exclusions(self) -> list[tuple[str, str]]:
        """(source, target): datasets to prepare without the compositions of another's fixed test set."""
        return []

    def after_tasks(self, spec: StudySpec, plan: Plan, study: StudyDir, data: dict[str, PreparedData]) -> None:
        """Work on the finished tasks, after each run of the study."""

    @classmethod
    def status(cls, study: StudyDir) -> dict[str, Any]:
        """Entries of the study's status (`study_status`) that this part adds."""
        return {}


PARTS: dict[str, type[Part]] = {}


def register_part(name: str, number: int) -> Callable[[type[Part]], type[Part]]:
    def decorate(cls: type[Part]) -> type[Part]:
        taken = {p.number: key for key, p in PARTS.items() if key != name}
        if number in taken:
            raise ValueError(f"part {name!r}: number {number} is {taken[number]!r}'s")
        cls.name, cls.number = name, number
        PARTS[name] = cls
        return cls

    return decorate
