"""`StudySpec`: the study file. Datasets, sizes, seeds, shared settings and one section per study part.

Validated like the training options: unknown keys and wrong values are errors naming the key. The
parts' sections (``part1:``, ``part2:`` …) are those the parts in `study.parts` declare, each under its name.
Built-in presets live in ``presets/*.yaml``; `write_preset` copies one for editing.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, create_model, field_validator, model_validator

from mattransfer.data.registry import REGISTRY
from mattransfer.errors import ConfigError, format_validation_error, read_yaml
from mattransfer.graphs.build import GraphSettings
from mattransfer.models.model import ModelConfig
from mattransfer.study.parts import PARTS, Part, Section, Sizes
from mattransfer.study.parts.base import distinct_seeds
from mattransfer.training.trainer import COMPILE_HELP, TrainingOptions

PRESETS = ("paper", "quick", "dft-to-expt")


class StudyOptions(Section):
    """What a study's parts share: its datasets, subset sizes and seeds, and the settings of every task."""

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
        return distinct_seeds(seeds)

    def parts(self) -> list[Part]:
        """The enabled parts' sections, in the registry's order."""
        sections = (getattr(self, name) for name in PARTS)
        return [section for section in sections if section.enabled]

    @model_validator(mode="after")
    def _parts_fit_the_study(self) -> StudyOptions:
        for part in self.parts():
            part.check(self)
        return self


# The study file: the shared options and every registered part's section under its name.
StudySpec = create_model(
    "StudySpec", __base__=StudyOptions, __module__=__name__,
    **{name: (part, Field(default_factory=part)) for name, part in PARTS.items()},
)


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
