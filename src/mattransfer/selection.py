"""Choosing what to label next: the ``simplify`` step of DP-GEN, for property models.

Several members are fine-tuned from one pre-trained model on the labelled samples, differing only by
their seed (initialisation of what trains, batch order, and which tenth of the labelled set validates
them). Their spread on an unlabelled structure, the standard deviation of the members' predictions in
the target's unit, says how unsure the fine-tuned model is there. As in DP-GEN, a structure whose
deviation lies below the lower trust level ``lo`` is already predicted well, one above ``hi`` is out of
reach, and the candidates in between are what to label next: at most ``max_pick`` of them, at random.
With nothing labelled yet, ``init_pick`` structures are picked at random. No candidate left: stop.

`select` is the step a user runs between two batches of DFT calculations (``mattransfer select``);
`pick_candidates`, `train_ensemble` and `ensemble_predictions` are the parts the simulation reuses.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from mattransfer.config import load_options
from mattransfer.data.readers import Reader, read_frame
from mattransfer.data.splits import Split
from mattransfer.data.table import PropertyTable
from mattransfer.errors import DataError
from mattransfer.fileio import write_atomic, write_json
from mattransfer.finetune import METHODS
from mattransfer.models.model import TransferModel, load_source
from mattransfer.training.job import Dataset, Job, execute, featurize, predict_batches, resolve_device, run_log
from mattransfer.training.trainer import Batches, EmbeddingBatches, TrainingOptions

log = logging.getLogger(__name__)


class EnsembleOptions(BaseModel):
    """The members: how many, how each is fine-tuned, and their seeds."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(4, ge=2, description="number of members (DP-GEN uses 4)")
    method: str = Field("last_layer", validate_default=True,
                        description="fine-tune method of every member (default: only the head's output layer trains)")
    config: dict[str, Any] = Field(default_factory=dict, validate_default=True, description="the method's options")
    seeds: list[int] | None = Field(None, description="member seeds (default: seed·1000 + k); equal seeds give equal members")

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}; available: {sorted(METHODS)}")
        return value

    @field_validator("config")
    @classmethod
    def _method_options(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        method = info.data.get("method")
        return value if method is None else METHODS[method][0](**value).model_dump()

    @model_validator(mode="after")
    def _seeds_match_size(self) -> EnsembleOptions:
        if self.seeds is not None and len(self.seeds) != self.size:
            raise ValueError(f"{len(self.seeds)} seeds for {self.size} members")
        return self

    def member_seeds(self, seed: int) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [seed * 1000 + k for k in range(self.size)]


class SelectionSettings(BaseModel):
    """What `select` and the simulation share: the ensemble, its training, the trust levels and pick sizes."""

    model_config = ConfigDict(extra="forbid")

    ensemble: EnsembleOptions = Field(default_factory=EnsembleOptions)
    training: TrainingOptions = Field(default_factory=lambda: TrainingOptions(lr=3e-3))
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of the labelled set each member validates on")
    levels: Literal["absolute", "quantile"] = Field(
        "absolute", description="lo/hi in the target's unit, or as quantiles of the pool's deviations")
    lo: float = Field(0.0, ge=0, description="lower trust level: deviation at or below it is predicted well")
    hi: float = Field(float("inf"), gt=0, description="upper trust level: deviation at or above it is out of reach")
    max_pick: int = Field(100, ge=1, description="most candidates picked per iteration (DP-GEN's fp_task_max)")
    init_pick: int = Field(100, ge=2, description="random picks when nothing is labelled (init_pick_number)")

    @model_validator(mode="after")
    def _levels_in_order(self) -> SelectionSettings:
        if self.lo >= self.hi:
            raise ValueError(f"lo ({self.lo}) must be below hi ({self.hi})")
        if self.levels == "quantile" and not (self.lo <= 1 and (self.hi <= 1 or self.hi == float("inf"))):
            raise ValueError("quantile trust levels lie between 0 and 1")
        return self


@dataclass
class Picks:
    """One selection step: the picked ids and what the pool looked like."""

    ids: list[str]
    lo: float  # trust levels in the target's unit
    hi: float
    n_candidates: int


def trust_levels(deviation: np.ndarray, settings: SelectionSettings) -> tuple[float, float]:
    """``lo`` and ``hi`` in the target's unit (quantile levels are resolved on ``deviation``)."""
    if settings.levels == "absolute" or len(deviation) == 0:
        return settings.lo, settings.hi
    hi = float(np.quantile(deviation, settings.hi)) if np.isfinite(settings.hi) else float("inf")
    return float(np.quantile(deviation, settings.lo)), hi


def pick_candidates(ids: Sequence[str], deviation: np.ndarray, settings: SelectionSettings,
                    rng: np.random.Generator, max_pick: int | None = None) -> Picks:
    """At most ``max_pick`` ids at random among those with ``lo < deviation < hi``.

    Strict on both sides: a deviation of exactly zero (identical members) is never a candidate.
    """
    lo, hi = trust_levels(deviation, settings)
    candidates = np.flatnonzero((deviation > lo) & (deviation < hi))
    n = min(len(candidates), settings.max_pick if max_pick is None else max_pick)
    chosen = np.sort(rng.choice(candidates, size=n, replace=False)) if n else np.array([], dtype=int)
    return Picks([ids[i] for i in chosen], lo, hi, len(candidates))


def pick_random(ids: Sequence[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` ids (or all of them) uniformly at random: the first picks, and the baseline strategy."""
    chosen = np.sort(rng.choice(len(ids), size=min(n, len(ids)), replace=False))
    return [ids[i] for i in chosen]


def member_split(labelled: Sequence[str], seed: int, val_fraction: float, test: Sequence[str] = ()) -> Split:
    """A member's train/val split of the labelled ids; members with different seeds validate on different tenths."""
    if len(labelled) < 2:
        raise DataError(f"at least 2 labelled samples are needed to fine-tune (one train, one val), got {len(labelled)}.")
    order = np.random.default_rng(seed).permutation(len(labelled))
    n_val = min(max(1, round(len(labelled) * val_fraction)), len(labelled) - 1)
    chosen = [labelled[i] for i in order]
    return Split(train=tuple(chosen[n_val:]), val=tuple(chosen[:n_val]), test=tuple(test))


def shared_latent(pretrained: TransferModel, settings: SelectionSettings, data: Dataset,
                  device: torch.device) -> torch.Tensor | None:
    """The encoder's output for every structure of ``data`` when the members' method freezes the encoder.

    Every member then shares it: the pool and the labelled set are encoded once, not once per member.
    """
    options_cls, prepare = METHODS[settings.ensemble.method]
    probe = prepare(copy.deepcopy(pretrained), options_cls(**settings.ensemble.config))
    if "encoder" not in probe.frozen:
        return None
    return probe.to(device).embed(data.inputs)


def train_ensemble(
    pretrained: TransferModel, data: Dataset, labelled: Sequence[str], settings: SelectionSettings, seed: int,
    device: torch.device, *, test: Sequence[str] = (), latent: torch.Tensor | None = None,
    run_dir: Path | None = None,
) -> tuple[list[TransferModel], list[dict]]:
    """Fine-tune the members on ``labelled``; returns them and each one's metrics (val, and test if given)."""
    members, metrics = [], []
    for k, member_seed in enumerate(settings.ensemble.member_seeds(seed)):
        split = member_split(labelled, member_seed, settings.val_fraction, test)
        member_dir = run_dir / "members" / str(k) if run_dir else None
        if member_dir:
            member_dir.mkdir(parents=True, exist_ok=True)
        job = Job(model=pretrained.config, graphs=pretrained.graphs, training=settings.training, seed=member_seed,
                  method=settings.ensemble.method, options=settings.ensemble.config, allow_test_overlap=True,
                  description=f"member {k}")
        outcome = execute(job, data, split, source=copy.deepcopy(pretrained), device=device, run_dir=member_dir,
                          progress=False, latent=latent)
        model, member_metrics = outcome.model, {"seed": member_seed, **outcome.summary}
        if member_dir:
            model.cpu().save(member_dir / "model.ckpt")
            write_json(member_dir / "metrics.json", member_metrics)
        members.append(model)
        metrics.append(member_metrics)
    return members, metrics


def ensemble_predictions(members: list[TransferModel], data: Dataset, ids: Sequence[str], device: torch.device,
                         latent: torch.Tensor | None = None) -> np.ndarray:
    """Every member's predictions for ``ids`` in the target's unit: shape (members, len(ids))."""
    if not len(ids):
        return np.zeros((len(members), 0))
    positions = data.inputs.positions(ids)
    batches = Batches(data.inputs, positions, torch.zeros(len(ids)), 512, device)
    if latent is not None:
        batches = EmbeddingBatches(batches, members[0].encoder, latent)
    return np.stack([predict_batches(m.to(device), batches).numpy() for m in members])


def deviation(predictions: np.ndarray) -> np.ndarray:
    """DP-GEN's model deviation of a scalar: the members' standard deviation (population, ddof 0).

    Taken about the first member's prediction (the std does not change under a shift) so that identical
    members give exactly zero, not the rounding error of their mean.
    """
    return (predictions - predictions[:1]).std(axis=0)


# ---------------------------------------------------------------- `mattransfer select`


class DataFile(BaseModel):
    """A data file as ``train`` reads it: matminer JSON, extxyz or CSV with a CIF/POSCAR column."""

    model_config = ConfigDict(extra="forbid")

    read_from: Path
    reader: Reader | None = None
    structure_column: str = "structure"
    id_column: str | None = None


class LabelledFile(DataFile):
    target: str = Field(description="target column / atoms.info key")
    unit: str = ""


class SelectConfig(SelectionSettings):
    """The options file of ``mattransfer select``."""

    read_from: Path = Field(description="checkpoint of the pre-trained model")
    labelled: LabelledFile | None = Field(None, description="labelled structures so far (absent or empty: none)")
    pool: DataFile = Field(description="unlabelled structures to choose from")
    seed: int = 0
    device: str = "cpu"
    output_dir: Path = Path("runs/select")

    def resolved(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def load_select_config(path: Path) -> SelectConfig:
    """Read and validate a ``select`` options file; unknown keys and wrong types name the key."""
    return load_options(path, SelectConfig)


def _read_labelled(spec: LabelledFile | None) -> PropertyTable | None:
    """The labelled table, or None when there is none yet (no file given, an empty file, no rows)."""
    if spec is None or (spec.read_from.exists() and spec.read_from.stat().st_size == 0):
        return None
    frame = read_frame(spec.read_from, spec.reader, spec.structure_column)
    if frame.empty:
        return None
    return PropertyTable.from_frame(frame, name=spec.read_from.name.split(".")[0], target=spec.target,
                                    unit=spec.unit, source=str(spec.read_from),
                                    structure_column=spec.structure_column, id_column=spec.id_column)


def select(config: SelectConfig) -> pd.DataFrame:
    """One selection step on the user's files: fine-tune the ensemble on the labelled structures, rank the
    pool by deviation, and write the picks.

    Writes to ``output_dir``: ``selected.csv`` (id, formula, deviation, mean prediction of the picks),
    ``pool.csv`` (the same for every pool structure, with ``candidate``), ``selection.json`` (counts, trust
    levels in the unit, wall time), ``config.yaml``, ``train.log`` and ``members/<k>/`` (checkpoint,
    history, metrics). Returns the picks as in ``selected.csv``.
    """
    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_log(run_dir):
        start = time.perf_counter()
        write_atomic(run_dir / "config.yaml", yaml.safe_dump(config.resolved(), sort_keys=False))
        rng = np.random.default_rng(config.seed)
        labelled = _read_labelled(config.labelled)
        pool = PropertyTable.unlabelled(read_frame(config.pool.read_from, config.pool.reader, config.pool.structure_column),
                                        name="pool", source=str(config.pool.read_from),
                                        structure_column=config.pool.structure_column, id_column=config.pool.id_column)
        known = set(labelled.ids) if labelled else set()
        already = [i for i in pool.ids if i in known]
        if already:  # never pick what is labelled already
            log.info("%d pool structures are labelled already and are not candidates (first: %s)", len(already), already[:5])
            pool = pool.subset([i for i in pool.ids if i not in known])
        if not len(pool):
            raise DataError(f"{config.pool.read_from}: every pool structure is labelled already; nothing to choose from.")
        frame = pd.DataFrame({"id": pool.ids, "formula": [s.composition.reduced_formula for s in pool.structures]})
        if labelled is None:
            chosen = set(pick_random(pool.ids, config.init_pick, rng))
            frame["deviation"], frame["mean_prediction"], frame["candidate"] = np.nan, np.nan, True
            summary = {"labelled": 0, "lo": None, "hi": None, "n_candidates": len(pool)}
            log.info("nothing labelled yet: %d structures picked at random from %d", len(chosen), len(pool))
        else:
            pretrained = load_source(config.read_from)
            device = resolve_device(config.device)
            # one table (pool targets NaN) so that one graph store serves training and ranking
            joined, _ = labelled.concat(dataclasses.replace(pool, target=labelled.target, unit=labelled.unit), "pool:")
            data = Dataset(joined, featurize(pretrained, joined))
            latent = shared_latent(pretrained, config, data, device)
            members, _ = train_ensemble(pretrained, data, labelled.ids, config, config.seed, device,
                                        latent=latent, run_dir=run_dir)
            predictions = ensemble_predictions(members, data, pool.ids, device, latent)
            frame["deviation"], frame["mean_prediction"] = deviation(predictions), predictions.mean(axis=0)
            picks = pick_candidates(pool.ids, frame["deviation"].to_numpy(), config, rng)
            chosen = set(picks.ids)
            frame["candidate"] = (frame["deviation"] > picks.lo) & (frame["deviation"] < picks.hi)
            summary = {"labelled": len(labelled), "target": labelled.target, "unit": labelled.unit,
                       "lo": picks.lo, "hi": picks.hi, "n_candidates": picks.n_candidates}
            log.info("%d labelled, %d in the pool: deviation mean %.4g, max %.4g %s; %d candidates in (%.4g, %.4g),"
                     " %d picked", len(labelled), len(pool), frame["deviation"].mean(), frame["deviation"].max(),
                     labelled.unit, picks.n_candidates, picks.lo, picks.hi, len(chosen))
        frame["picked"] = frame["id"].isin(chosen)
        write_atomic(run_dir / "pool.csv", frame.to_csv(index=False))
        selected = frame[frame["picked"]].sort_values("deviation", ascending=False)[["id", "formula", "deviation", "mean_prediction"]]
        write_atomic(run_dir / "selected.csv", selected.to_csv(index=False))
        write_json(run_dir / "selection.json", {**summary, "pool": len(pool), "picked": len(selected),
                                                 "stop": len(selected) == 0, "wall_seconds": time.perf_counter() - start})
        return selected.reset_index(drop=True)

