"""The label-selection simulation: DP-GEN's select → label → fine-tune loop on data whose labels are known
but hidden until picked, against random choice with the same budget and the same first picks.

For each target, seed and strategy a chain of iterations runs: fine-tune the ensemble on the labelled
set, test it on the dataset's fixed test set (never in the pool, the labelled set or validation),
measure the members' deviation on the pool and its actual error there, then pick (``deviation``: the
candidates between the trust levels; ``random``: as many, uniformly). A chain stops when no candidate
is left (DP-GEN's rule) or the label budget is reached. Every iteration is one JSON record written
atomically as it finishes, holding the labelled ids it trained on and its picks, so a killed
simulation resumes from the last finished iteration of every chain.

    <dir>/spec.yaml
    <dir>/.lock           held by the run writing here (`StudyDir.lock`)
    <dir>/records/<target>/<strategy>/seed<k>/<iteration>.json
    <dir>/results.csv     one row per record (no per-structure arrays)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from scipy.stats import spearmanr

from mattransfer.config import load_options
from mattransfer.data.registry import DataSources
from mattransfer.data.splits import fixed_test_ids, test_overlap
from mattransfer.fileio import write_atomic, write_json
from mattransfer.models.model import TransferModel, load_source
from mattransfer.selection import (
    SelectionSettings, deviation, ensemble_predictions, pick_candidates, pick_random, shared_latent, train_ensemble,
)
from mattransfer.study.layout import StudyDir
from mattransfer.training.job import Dataset, featurize, resolve_device

log = logging.getLogger(__name__)

Strategy = Literal["deviation", "random"]
STRATEGY_CODE = {"deviation": 0, "random": 1}  # seeds a strategy's own random stream


class SimulationTarget(BaseModel):
    """A dataset to simulate on, the pre-trained model its members start from, and its trust levels."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="registry key, e.g. phonons")
    read_from: Path = Field(description="checkpoint of the pre-trained model")
    lo: float | None = Field(None, ge=0, description="lower trust level (default: the selection section's)")
    hi: float | None = Field(None, gt=0, description="upper trust level (default: the selection section's)")


class SimulationSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data_sources: Path | None = Field(None, description="YAML with data_dir and per-key local files")
    targets: list[SimulationTarget]
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    strategies: list[Strategy] = Field(default_factory=lambda: ["deviation", "random"])
    budget: int = Field(800, ge=2, description="label budget: a chain stops once it has this many labels")
    selection: SelectionSettings = Field(default_factory=SelectionSettings)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    test_seed: int = 0
    device: str = "cpu"

    @field_validator("seeds", "targets")
    @classmethod
    def _not_empty(cls, value: list) -> list:
        if not value:
            raise ValueError("give at least one")
        return value

    @model_validator(mode="after")
    def _trust_levels_in_order(self) -> SimulationSpec:
        for k, target in enumerate(self.targets):
            lo, hi = target.lo if target.lo is not None else self.selection.lo, target.hi or self.selection.hi
            if lo >= hi:
                raise ValueError(f"targets.{k} ({target.dataset}): lo ({lo}) must be below hi ({hi})")
        return self

    def settings(self, target: SimulationTarget) -> SelectionSettings:
        """The selection settings of ``target``: its own trust levels where it gives them."""
        update = {k: v for k, v in (("lo", target.lo), ("hi", target.hi)) if v is not None}
        return SelectionSettings.model_validate({**self.selection.model_dump(), **update})


def load_simulation_spec(path: Path) -> SimulationSpec:
    return load_options(path, SimulationSpec)


def record_path(root: Path, target: str, strategy: str, seed: int, iteration: int) -> Path:
    return Path(root) / "records" / target / strategy / f"seed{seed}" / f"{iteration:03d}.json"


def simulate(spec: SimulationSpec, out: Path) -> pd.DataFrame:
    """Run every chain of ``spec`` that is not finished in ``out``; write and return the results table."""
    out = Path(out)
    with StudyDir(out).lock():  # one writer per simulation directory, as for a study
        return _simulate(spec, out)


def _simulate(spec: SimulationSpec, out: Path) -> pd.DataFrame:
    write_atomic(out / "spec.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    sources = DataSources.from_yaml(spec.data_sources) if spec.data_sources else DataSources.from_env()
    device = resolve_device(spec.device)
    for target in spec.targets:
        if all(_chain_finished(out, target.dataset, strategy, seed) for strategy in spec.strategies for seed in spec.seeds):
            continue  # nothing to do: skip loading the data
        start = time.perf_counter()
        pretrained = load_source(target.read_from)
        table = sources.load(target.dataset)
        data = Dataset(table, featurize(pretrained, table))
        settings = spec.settings(target)
        latent = shared_latent(pretrained, settings, data, device)
        test = fixed_test_ids(table.ids, spec.test_fraction, spec.test_seed)
        # test structures the pre-training saw (None: a checkpoint older than training records cannot say)
        overlap = test_overlap(pretrained.training_data, table, test) if pretrained.training_data else None
        log.info("%s: %d rows, %d test (%s in the pre-training), data and embeddings in %.1f s", target.dataset,
                 len(table), len(test), "unknown" if overlap is None else overlap["same_structure"],
                 time.perf_counter() - start)
        for seed in spec.seeds:
            for strategy in spec.strategies:
                run_chain(out, pretrained, data, test, settings, strategy, seed, spec.budget, device, latent,
                          test_in_pretraining=None if overlap is None else overlap["same_structure"])
    table = results_table(out)
    write_atomic(out / "results.csv", table.to_csv(index=False))
    return table


def _chain_finished(out: Path, target: str, strategy: str, seed: int) -> bool:
    records = sorted(record_path(out, target, strategy, seed, 0).parent.glob("*.json"))
    return bool(records) and json.loads(records[-1].read_text())["stop"] is not None


def run_chain(out: Path, pretrained: TransferModel, data: Dataset, test: list[str], settings: SelectionSettings,
              strategy: Strategy, seed: int, budget: int, device: torch.device,
              latent: torch.Tensor | None = None, test_in_pretraining: int | None = None) -> None:
    """One chain of iterations, resumed after its last recorded iteration."""
    name = data.table.name
    test_set = set(test)
    pool_all = [i for i in data.table.ids if i not in test_set]
    # The first picks depend on the seed alone: both strategies start from the same labelled set.
    labelled = pick_random(pool_all, settings.init_pick, np.random.default_rng(seed))
    y = dict(zip(data.table.ids, data.table.y))
    for iteration in range(budget + 1):
        path = record_path(out, name, strategy, seed, iteration)
        if path.exists():
            record = json.loads(path.read_text())
            if record["stop"] is not None:
                return
            labelled = record["labelled"] + record["picked"]
            continue
        start = time.perf_counter()
        labelled_set = set(labelled)
        pool = [i for i in pool_all if i not in labelled_set]
        members, metrics = train_ensemble(pretrained, data, labelled, settings, seed, device, test=test, latent=latent)
        fitted = time.perf_counter()
        test_pred = ensemble_predictions(members, data, test, device, latent)
        pool_pred = ensemble_predictions(members, data, pool, device, latent)
        y_test, y_pool = np.array([y[i] for i in test]), np.array([y[i] for i in pool])
        pool_dev = deviation(pool_pred)
        pool_err = np.abs(pool_pred.mean(axis=0) - y_pool)  # known to the simulation, never to the picks
        rng = np.random.default_rng([seed, iteration, STRATEGY_CODE[strategy]])
        room = budget - len(labelled)
        picks = pick_candidates(pool, pool_dev, settings, rng, max_pick=min(settings.max_pick, max(room, 0)))
        if strategy == "random":
            picked = pick_random(pool, min(settings.max_pick, room), rng) if room > 0 else []
        else:
            picked = picks.ids
        # DP-GEN's rule (no candidate left) ends a deviation chain; the random baseline runs to the budget
        stop = ("budget" if room <= 0 else "no candidates" if not picked
                else "pool exhausted" if len(picked) == len(pool) else None)
        rho, p_value = spearmanr(pool_dev, pool_err) if len(pool) > 2 and np.ptp(pool_dev) > 0 else (np.nan, np.nan)
        record = {
            "target": name, "unit": data.table.unit, "strategy": strategy, "seed": seed, "iteration": iteration,
            "n_labelled": len(labelled), "n_test": len(test), "test_in_pretraining": test_in_pretraining,
            "n_pool": len(pool),
            "test_mae_ensemble": float(np.mean(np.abs(test_pred.mean(axis=0) - y_test))),
            "test_mae_member": float(np.mean(np.abs(test_pred[0] - y_test))),
            "test_mae_members": [float(np.mean(np.abs(p - y_test))) for p in test_pred],
            "test_deviation_mean": float(deviation(test_pred).mean()),
            "pool_deviation_mean": float(pool_dev.mean()), "pool_deviation_max": float(pool_dev.max()),
            "pool_mae": float(pool_err.mean()), "spearman_rho": float(rho), "spearman_p": float(p_value),
            "lo": picks.lo, "hi": picks.hi, "n_candidates": picks.n_candidates, "n_picked": len(picked),
            "stop": stop, "fit_seconds": fitted - start, "wall_seconds": time.perf_counter() - start,
            "member_best_epochs": [m["best_epoch"] for m in metrics],
            "labelled": list(labelled), "picked": picked,
            "pool_ids": pool, "pool_deviation": pool_dev.tolist(), "pool_abs_error": pool_err.tolist(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)
        log.info("%s %s seed %d it %d: %d labelled, test MAE %.4g (member %.4g), pool dev %.3g/%.3g, %d candidates,"
                 " %d picked, %.1f s%s", name, strategy, seed, iteration, len(labelled), record["test_mae_ensemble"],
                 record["test_mae_member"], record["pool_deviation_mean"], record["pool_deviation_max"],
                 picks.n_candidates, len(picked), record["wall_seconds"], f", stop: {stop}" if stop else "")
        if stop is not None:
            return
        labelled = labelled + picked


ARRAYS = ("test_mae_members", "member_best_epochs", "labelled", "picked", "pool_ids", "pool_deviation", "pool_abs_error")


def read_records(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "records").glob("*/*/*/*.json"))]


def results_table(out: Path) -> pd.DataFrame:
    """One row per finished iteration, per-structure arrays left out."""
    rows = [{k: v for k, v in r.items() if k not in ARRAYS} for r in read_records(out)]
    return pd.DataFrame(rows).sort_values(["target", "strategy", "seed", "iteration"]).reset_index(drop=True)


def calibration_table(out: Path) -> pd.DataFrame:
    """Per pool structure and iteration: its deviation and the ensemble mean's actual absolute error."""
    frames = [pd.DataFrame({"target": r["target"], "unit": r["unit"], "strategy": r["strategy"], "seed": r["seed"],
                            "iteration": r["iteration"], "deviation": r["pool_deviation"],
                            "abs_error": r["pool_abs_error"]}) for r in read_records(out)]
    return pd.concat(frames, ignore_index=True)
