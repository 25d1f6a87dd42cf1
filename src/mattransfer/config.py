"""The options file of ``mattransfer train`` (metatrain's shape: a ``finetune`` section turns a
pre-training into a fine-tuning). Unknown keys and wrong types are errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mattransfer.data.readers import Reader
from mattransfer.errors import ConfigError, format_validation_error, read_yaml
from mattransfer.finetune import METHODS, MethodOptions
from mattransfer.graphs.build import GraphSettings
from mattransfer.models.model import ModelConfig
from mattransfer.training.trainer import COMPILE_HELP, TrainingOptions


class FormulaExclusion(BaseModel):
    """Rows of another dataset whose formulas (compared as element fractions: SnPb4Se5 = Sn0.2Pb0.8Se1) a run's
    data must not hold: a DFT pre-training kept apart from an experimental test set (``rows: test``, that
    dataset's fixed test set) or from all of it."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="registry key of the other dataset, e.g. expt_gap_comp")
    rows: Literal["test", "all"] = Field("test", description="its fixed test set, or all its rows")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="how its fixed test set is drawn (as its runs draw it)")
    test_seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _key_alone(cls, raw: Any) -> Any:
        return {"dataset": raw} if isinstance(raw, str) else raw  # `- expt_gap_comp`: its test set


class DataConfig(BaseModel):
    """A registry key (``dataset``) or a file (``read_from``); then how many samples to draw.

    The test set is the data's fixed ``test_fraction`` (the ids of lowest seeded hash, the same for
    every run on the data) or a file of its own (``test_set``); the validation set is ``val_fraction``
    of the samples or a file (``validation_set``). Files are read like ``read_from`` (same reader and
    columns). A number for ``test_set`` / ``validation_set`` is a fraction, as in metatrain.
    """

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(None, description="registry key, e.g. phonons (see `mattransfer datasets`)")
    read_from: Path | None = Field(None, description="a data file: matminer JSON, extxyz or CSV")
    reader: Reader | None = None
    target: str | None = Field(None, description="target column / atoms.info key (files only)")
    unit: str = ""
    structure_column: str = "structure"
    id_column: str | None = None
    n_samples: int | None = Field(None, ge=2, description="samples drawn from the non-test pool (default: all)")
    test_set: Path | None = Field(None, description="a file of test structures, scored instead of a fraction of the data")
    validation_set: Path | None = Field(None, description="a file of validation structures (early stopping)")
    test_fraction: float | None = Field(
        None, ge=0, lt=1, description="fraction of the data held out as the fixed test set: 0.1, or 0 with a test_set file")
    val_fraction: float | None = Field(
        None, ge=0, lt=1, description="fraction of the samples used for validation: 0.1, or 0 with a validation_set file")
    test_seed: int = Field(0, description="seed of the fixed test set; keep it to compare experiments")
    exclude_formulas_of: list[FormulaExclusion] = Field(
        default_factory=list, description="remove every row whose formula (element fractions) is in these datasets' test sets"
                                          " (or all their rows) before drawing; the count is in metrics.json")

    @model_validator(mode="before")
    @classmethod
    def _set_as_fraction(cls, raw: Any) -> Any:
        # `test_set: 0.2` is metatrain's spelling of `test_fraction: 0.2`: one field holds it.
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for key, fraction in (("test_set", "test_fraction"), ("validation_set", "val_fraction")):
            value = raw.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if raw.get(fraction) is not None and raw[fraction] != value:
                    raise ValueError(f"`{key}: {value}` is a fraction and `{fraction}: {raw[fraction]}` another; give one")
                raw[fraction], raw[key] = value, None
        return raw

    @model_validator(mode="after")
    def _one_source(self) -> DataConfig:
        if (self.dataset is None) == (self.read_from is None):
            raise ValueError("give exactly one of `dataset` (a registry key) or `read_from` (a file)")
        if self.read_from is not None and self.target is None:
            raise ValueError("`target` is required with `read_from` (the column or atoms.info key to learn)")
        for key, fraction, name in (("test_set", "test_fraction", "test"), ("validation_set", "val_fraction", "validation")):
            path, value = getattr(self, key), getattr(self, fraction)
            if path is not None and value:
                raise ValueError(f"`{key}` is a file, so the {name} set is that file: `{fraction}` must be 0 or absent")
            if path is None and value == 0:
                raise ValueError(f"`{fraction}: 0` leaves no {name} set: give `{key}: FILE` or a fraction above 0")
            setattr(self, fraction, 0.0 if path is not None else (0.1 if value is None else value))
        return self


class FinetuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["scratch", "full", "heads", "freeze", "lora", "last_layer"]
    read_from: str = Field(description="checkpoint of the pre-trained model, or a package's pre-trained model by name"
                                       " (e.g. chgnet:0.3.0; `mattransfer models` lists them)")
    allow_test_overlap: bool = Field(
        False, description="accept test structures the pre-training trained on (the count is recorded either way)")
    config: dict[str, Any] = Field(default_factory=dict, validate_default=True, description="the method's options")

    @field_validator("read_from", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, Path) else value

    @field_validator("config")
    @classmethod
    def _method_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        # A field validator, not a model one: errors of the method's options then carry their full
        # key (finetune.config.rank), not finetune.rank, which is no key of the file.
        method = info.data.get("method")
        if method is None:  # the method itself is invalid and reported as such
            return value
        return METHODS[method][0](**value).model_dump()

    def options(self) -> MethodOptions:
        return METHODS[self.method][0](**self.config)


class ObjectiveConfig(BaseModel):
    """Losses trained beside the target's (pre-training only: a fine-tune trains the target alone)."""

    model_config = ConfigDict(extra="forbid")

    bravais_weight: float = Field(0.0, ge=0, description="λ × cross-entropy of a Bravais-lattice classifier on the"
                                                          " latent (structure-biased pre-training)")


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 …")
    compile: bool = Field(False, description=COMPILE_HELP)
    threads: int | None = Field(None, ge=1, description="torch threads; default: the cores not busy (`--threads` overrides)")
    output_dir: Path = Path("runs/run")
    data_sources: Path | None = Field(None, description="YAML with data_dir and per-key local files")
    data: DataConfig
    graphs: GraphSettings = Field(default_factory=GraphSettings)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingOptions = Field(default_factory=TrainingOptions)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    finetune: FinetuneConfig | None = None

    @model_validator(mode="after")
    def _objective_in_pretraining(self) -> TrainConfig:
        if self.finetune is not None and self.objective.bravais_weight:
            raise ValueError("objective.bravais_weight is for pre-training; a fine-tune trains the target alone")
        return self

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_config(path: Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and validate an options file. Relative paths in it are relative to the working directory."""
    return load_options(path, TrainConfig, overrides)


Options = TypeVar("Options", bound=BaseModel)


def load_options(path: Path, model: type[Options], overrides: dict[str, Any] | None = None) -> Options:
    """Read a YAML options file into ``model``; any problem is a `ConfigError` naming the file and key."""
    path = Path(path)
    raw = read_yaml(path, "options file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level.")
    return config_from_dict({**raw, **(overrides or {})}, path, model)


def config_from_dict(raw: dict[str, Any], source: Path | str, model: type[Options] = TrainConfig) -> Options:
    """Validate options given as a mapping into ``model``; errors name ``source`` and the key."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc
