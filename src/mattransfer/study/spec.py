"""`StudySpec`: the study file. Datasets, sizes, seeds, shared settings and the four parts.

Validated like the training options: unknown keys and wrong values are errors naming the key.
Built-in presets live in ``presets/*.yaml``; `write_preset` copies one for editing.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Sequence

import yaml
from pydantic import (
    AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator,
)

from mattransfer.data.registry import REGISTRY
from mattransfer.errors import ConfigError, format_validation_error, read_yaml
from mattransfer.finetune import METHODS
from mattransfer.graphs.build import GraphSettings
from mattransfer.models.encoders import PRETRAINED
from mattransfer.models.model import ModelConfig
from mattransfer.training.baselines import MODELS as BASELINE_MODELS
from mattransfer.training.trainer import COMPILE_HELP, TrainingOptions
from mattransfer.training.transferability import SCORES as TRANSFER_SCORES

PRESETS = ("paper", "quick")


def _methods(value: Any) -> dict[str, dict[str, Any]]:
    """``[heads, full]`` or ``{freeze: {layers: 2}, ...}`` → validated, complete options per method."""
    if isinstance(value, list):
        value = {name: {} for name in value}
    if not isinstance(value, dict) or not value:
        raise ValueError("give a non-empty list of method names or a mapping of method → options")
    methods = {}
    for name, options in value.items():
        if name == "scratch":
            raise ValueError("scratch baselines are always run; list only transfer methods")
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; available: {sorted(set(METHODS) - {'scratch'})}")
        try:
            methods[name] = METHODS[name][0](**(options or {})).model_dump()
        except ValidationError as exc:
            raise ValueError(f"options of {name!r}: {exc.errors()[0]['msg']} (got {options!r})") from exc
    return methods


def _sizes(sizes: list[int]) -> list[int]:
    if not sizes or min(sizes) < 2:
        raise ValueError("sizes must be a non-empty list of integers >= 2 (one train and one val sample)")
    return sizes


Methods = Annotated[dict[str, dict[str, Any]], BeforeValidator(_methods)]
Sizes = Annotated[list[int], AfterValidator(_sizes)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)



def _distinct_of(names: list[str], known: Sequence[str], what: str) -> list[str]:
    """``names`` when each is one of ``known`` and none repeats; else a ValueError saying what is allowed."""
    if any(n not in known for n in names) or len(set(names)) != len(names):
        raise ValueError(f"give distinct {what} of {list(known)} (got {names})")
    return names

class Part1(_Section):
    """Every dataset pre-trained, then fine-tuned on every other one; scratch on the same subsets.

    ``sources``: the datasets pre-trained (default: all); every dataset stays a target. ``[]`` leaves the
    universal models and the baselines as Part 1's only rows beside scratch (no pre-training at all).

    ``baselines``: scikit-learn models on matminer features (`training.baselines`), fitted on the same
    subsets (train + val ids) and scored on the same test sets: the non-transfer yardsticks.
    ``scores``: transferability scores of every transfer cell (`study.transferability`), after the tasks.

    ``universal``: packages' pre-trained models (`mattransfer models`), each a further source for every
    dataset, fine-tuned with ``universal_methods``.
    """

    enabled: bool = True
    sources: list[str] | None = Field(None, description="datasets pre-trained as sources (default: every dataset)")
    methods: Methods = Field(default_factory=lambda: ["heads", "full"])
    universal: list[str] = Field(default_factory=list, description="pre-trained models by name, e.g. chgnet:0.3.0")
    universal_methods: Methods = Field(default_factory=lambda: ["heads"])
    baselines: list[str] = Field(
        default_factory=lambda: ["extra_trees", "hist_gb"],
        description=f"feature baselines (no transfer) on every fine-tune subset, as reference rows, of"
                    f" {', '.join(BASELINE_MODELS)}; [] turns them off",
    )

    scores: list[str] = Field(
        default_factory=lambda: list(TRANSFER_SCORES),
        description="transferability scores of each source's frozen features on each fine-tune subset"
                    " (transferability.csv), correlated with the gains in the report; [] turns them off",
    )

    @field_validator("baselines")
    @classmethod
    def _known_baselines(cls, names: list[str]) -> list[str]:
        return _distinct_of(names, BASELINE_MODELS, "baseline models")

    @field_validator("scores")
    @classmethod
    def _known_scores(cls, names: list[str]) -> list[str]:
        return _distinct_of(names, TRANSFER_SCORES, "scores")

    @field_validator("universal")
    @classmethod
    def _known_models(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in PRETRAINED]
        if unknown:
            raise ValueError(f"unknown pre-trained models {unknown}; available: {sorted(PRETRAINED)}")
        return names


class Part2(_Section):
    """Pre-training size scaling for ``sources``, fine-tuned on their best and worst Part 1 targets.

    The targets are picked from Part 1's mean transfer gain (over sizes and seeds) of ``method``,
    which Part 2 also fine-tunes with.
    """

    enabled: bool = True
    sources: list[str] = Field(default_factory=lambda: ["eform", "bandgap"])
    pretrain_sizes: Sizes = Field(default_factory=lambda: [1000, 5000, 10000, 50000, 100000])
    finetune_size: int = Field(900, ge=2)
    method: str = "full"


class Part3(_Section):
    """Representation vs prediction: fine-tuning methods compared on linked and unlinked pairs."""

    enabled: bool = True
    pairs: list[tuple[str, str]] = Field(
        default_factory=lambda: [("gvrh", "phonons"), ("phonons", "gvrh"), ("bandgap", "phonons")],
        description="(source, target) pairs",
    )
    methods: Methods = Field(
        default_factory=lambda: {"full": {}, "heads": {}, "freeze": {"layers": 2}, "lora": {"rank": 8, "alpha": 16}}
    )
    finetune_sizes: Sizes | None = Field(None, description="default: the study's finetune_sizes")
    seeds: list[int] | None = Field(None, description="default: the study's seeds; more where methods differ little")

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError("give a non-empty list of distinct seeds")
        return seeds


class Part4(_Section):
    """Structure-biased pre-training: regression + λ·cross-entropy of the Bravais lattice."""

    enabled: bool = True
    source: str = "bandgap"
    target: str = "gvrh"
    lambdas: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.3, 1.0])
    pretrain_size: int = Field(941, ge=2)
    methods: Methods = Field(default_factory=lambda: ["heads", "full"])
    finetune_sizes: Sizes | None = Field(None, description="default: the study's finetune_sizes")

    @field_validator("lambdas")
    @classmethod
    def _non_negative(cls, lambdas: list[float]) -> list[float]:
        if not lambdas or min(lambdas) < 0:
            raise ValueError("lambdas must be a non-empty list of weights >= 0")
        return lambdas


class StudySpec(_Section):
    """A study: its datasets, subset sizes and seeds, the settings every task shares, and Parts 1-4."""

    datasets: list[str] = Field(description="registry keys (see `mattransfer datasets`)")
    data_sources: Path | None = Field(
        None,
        description="data-sources YAML, relative to the working directory;"
        " default: $MATTRANSFER_DATA_SOURCES or $MATMINER_DATA",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    test_fraction: float = Field(0.1, gt=0, lt=1)
    test_seed: int = Field(0, description="seed of the fixed test sets")
    val_fraction: float = Field(0.1, gt=0, lt=1)
    pretrain_cap: int = Field(941, ge=2, description="pre-training samples, at most (capped at the pool)")
    finetune_sizes: Sizes = Field(default_factory=lambda: [10, 100, 200, 500, 800])
    device: str = Field("auto", description="auto, cpu, cuda …")
    compile: bool = Field(False, description=COMPILE_HELP)
    graphs: GraphSettings = Field(default_factory=GraphSettings)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: TrainingOptions = Field(default_factory=TrainingOptions)
    finetune: TrainingOptions = Field(default_factory=TrainingOptions)
    part1: Part1 = Field(default_factory=Part1)
    part2: Part2 = Field(default_factory=Part2)
    part3: Part3 = Field(default_factory=Part3)
    part4: Part4 = Field(default_factory=Part4)

    @property
    def part1_sources(self) -> list[str]:
        """The datasets Part 1 pre-trains."""
        return self.datasets if self.part1.sources is None else self.part1.sources

    @field_validator("datasets")
    @classmethod
    def _known_datasets(cls, datasets: list[str]) -> list[str]:
        unknown = [d for d in datasets if d not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown dataset keys {unknown}; known keys: {sorted(REGISTRY)}")
        if len(set(datasets)) != len(datasets) or len(datasets) < 2:
            raise ValueError("give at least two distinct dataset keys")
        return datasets

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError("give a non-empty list of distinct seeds")
        return seeds

    @model_validator(mode="after")
    def _parts_use_study_datasets(self) -> StudySpec:
        named = {
            "part1.sources": self.part1.sources or [],
            "part2.sources": self.part2.sources if self.part2.enabled else [],
            "part3.pairs": [key for pair in self.part3.pairs for key in pair] if self.part3.enabled else [],
            "part4.source/target": [self.part4.source, self.part4.target] if self.part4.enabled else [],
        }
        for where, keys in named.items():
            outside = sorted(set(keys) - set(self.datasets))
            if outside:
                raise ValueError(f"{where}: {outside} not in the study's datasets {self.datasets}")
        if self.part3.enabled and any(source == target for source, target in self.part3.pairs):
            raise ValueError("part3.pairs: a pair needs two different datasets")
        if self.part4.enabled and self.part4.source == self.part4.target:
            raise ValueError("part4: source and target must differ")
        if self.part2.enabled:
            if not self.part1.enabled:
                raise ValueError("part2 picks its targets from Part 1's results: enable part1 too")
            outside = sorted(set(self.part2.sources) - set(self.part1_sources))
            if outside:
                raise ValueError(f"part2.sources {outside} are not Part 1 sources (part1.sources): Part 2 picks their"
                                 " targets from their Part 1 gains")
            if self.part2.method not in self.part1.methods:
                raise ValueError(
                    f"part2.method {self.part2.method!r} must be one of part1.methods {list(self.part1.methods)}"
                )
        return self


def load_spec(path_or_preset: str | Path) -> StudySpec:
    """A study file, or a built-in preset by name (`PRESETS`)."""
    path = Path(path_or_preset)
    if not path.exists() and str(path_or_preset) in PRESETS:
        return _parse(_preset_text(str(path_or_preset)), f"preset {path_or_preset!r}")
    if not path.exists():
        raise ConfigError(f"{path}: no such study file; built-in presets are {', '.join(PRESETS)}.")
    return _validate(read_yaml(path, "study file"), path)


def write_preset(name: str, path: str | Path, overwrite: bool = False) -> Path:
    """Copy preset ``name`` (with its comments) to ``path``, to edit and run as a study file."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists; choose another path or overwrite it explicitly.")
    text = _preset_text(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"cannot write the preset to {path}: {exc.strerror or exc}") from exc
    return path


def _preset_text(name: str) -> str:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}.")
    return (resources.files("mattransfer.study") / "presets" / f"{name}.yaml").read_text()


def _parse(text: str, source: Path | str) -> StudySpec:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc}).") from exc
    return _validate(raw, source)


def _validate(raw: Any, source: Path | str) -> StudySpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of study options at the top level.")
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc
