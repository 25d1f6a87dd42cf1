"""``mattransfer matbench TASK``: the official Matbench v0.1 protocol (Dunn et al., npj Comput. Mater. 2020).

The five folds are the matbench package's own (``matbench_v0.1_validation.json``, read through
`MatbenchTask.validation`), never re-derived. Each fold trains one model through `training.run.run`
(the one training path) on the fold's train ids, with a seeded ``data.val_fraction`` of them for early
stopping, and tests it on the fold's test ids; or, with ``--baseline``, fits a feature model of
`training.baselines` on all the fold's train ids (`training.baselines.run_split`, the same run-directory
files). Both go through one fold loop and one set of summaries. A fold's run directory is finished when its
``metrics.json`` exists (written last and atomically): a rerun keeps it and skips the fold.

The tasks get their frame from us (`MatbenchTask.df`): the offline copies are indexed by matbench ids
(mb-phonons-0001 …) already, and matbench's ``load()`` would download. The official results file is
written by `MatbenchBenchmark.record` / ``to_file``, so it is the format the leaderboard reads.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from mattransfer.config import TrainConfig, config_from_dict
from mattransfer.data.readers import read_frame
from mattransfer.data.registry import DataSources
from mattransfer.data.splits import Split
from mattransfer.data.table import PropertyTable
from mattransfer.errors import ConfigError, DataError, read_yaml
from mattransfer.fileio import atomic_path, write_atomic, write_json
from mattransfer.featurizers import COMPOSITION_SETS, FEATURE_SETS, table_features
from mattransfer.training.baselines import MODELS as BASELINES
from mattransfer.training.baselines import make_model, run_split, source_predictions

log = logging.getLogger("mattransfer")

N_FOLDS = 5


@dataclass(frozen=True)
class MatbenchTask:
    """A Matbench v0.1 task mattransfer runs: the files it may load from and the leaderboard's best MAEs."""

    name: str
    files: tuple[str, ...]  # in a data directory, first found wins (a partial copy: results.md says so)
    leaderboard: tuple[tuple[str, float], ...]  # (model, mean MAE over the five folds), matbench.materialsproject.org


TASKS: dict[str, MatbenchTask] = {
    task.name: task
    for task in [
        MatbenchTask("matbench_phonons", ("matbench_phonons.json.gz",),
                     (("MEGNet", 28.76), ("coNGN", 28.89), ("ALIGNN", 29.54), ("CGCNN", 57.76))),
        MatbenchTask("matbench_dielectric", ("matbench_dielectric.json.gz",),
                     (("MODNet", 0.2711), ("coGN", 0.3088), ("ALIGNN", 0.3449), ("CGCNN", 0.5988))),
        MatbenchTask("matbench_log_gvrh", ("matbench_log_gvrh.json.gz", "matbench_log_gvrh_partial.json.gz"),
                     (("coNGN", 0.0670), ("ALIGNN", 0.0715))),
        # Composition only: composition encoders (elemnet, magpie-mlp) run it; a structure encoder gets the table's error.
        MatbenchTask("matbench_expt_gap", ("matbench_expt_gap.json.gz",),
                     (("Darwin", 0.2865), ("CrabNet", 0.3310), ("MODNet", 0.3327))),
    ]
}


def task_of(name: str) -> MatbenchTask:
    if name not in TASKS:
        raise ConfigError(f"unknown Matbench task {name!r}; tasks: {', '.join(TASKS)}.")
    return TASKS[name]


def fold_ids(task: str) -> list[tuple[list[str], list[str]]]:
    """(train ids, test ids) of each of the five folds, as the matbench package defines them."""
    from matbench.task import MatbenchTask as PackageTask

    package_task = PackageTask(task, autoload=False)
    return [(list(package_task.validation[key].train), list(package_task.validation[key].test))
            for key in package_task.folds_map.values()]


def task_file(task: MatbenchTask, sources: DataSources) -> Path | None:
    """The task's file in ``sources.data_dir``; None without a data directory (matbench downloads it)."""
    if sources.data_dir is None:
        return None
    for name in task.files:
        if (sources.data_dir / name).exists():
            return sources.data_dir / name
    raise DataError(f"{sources.data_dir}: none of {list(task.files)} found for {task.name}; put the file there,"
                    " or use no data directory so that matbench downloads it.")


def load_task(task: MatbenchTask, path: Path | None) -> tuple[pd.DataFrame, PropertyTable]:
    """The task's frame (indexed by matbench id, as `MatbenchTask.df`) and its table: from ``path``, or
    through matbench's own loader (matminer downloads the data and matbench numbers the rows)."""
    from matbench.metadata import mbv01_metadata

    metadata = mbv01_metadata[task.name]
    if path is not None:
        source, frame = str(path), read_frame(path, "matminer")
    else:
        from matbench.data_ops import load

        try:
            source, frame = f"matbench {task.name} (downloaded by matminer)", load(task.name)
        except Exception as exc:  # offline: requests' connection errors, or a corrupt download
            raise DataError(
                f"{task.name}: matbench could not download the task's data ({type(exc).__name__}). Offline,"
                " give a data-sources YAML whose data_dir holds its file (--data-sources, or"
                " $MATTRANSFER_DATA_SOURCES; see configs/shared-data.yaml)."
            ) from exc
    # A composition-only task's table has compositions: a structure encoder gets its composition-only error.
    table = PropertyTable.from_frame(frame, name=task.name, target=metadata.target, unit=metadata.unit, source=source)
    return frame, table


def fold_split(train_ids: list[str], test_ids: list[str], present: set[str], val_fraction: float, seed: int) -> Split:
    """The fold's train / val / test ids among the rows ``present``: val is a seeded ``val_fraction`` of the
    fold's train ids, never of its test ids (``val_fraction`` 0: none). A partial copy tests on the test ids it has."""
    train = [i for i in train_ids if i in present]
    n_val = max(1, round(val_fraction * len(train))) if val_fraction > 0 else 0
    val_rows = set(np.random.default_rng(seed).choice(len(train), n_val, replace=False).tolist())
    return Split(
        train=tuple(i for k, i in enumerate(train) if k not in val_rows),
        val=tuple(i for k, i in enumerate(train) if k in val_rows),
        test=tuple(i for i in test_ids if i in present),
        test_fraction=0.0,  # not the hash-drawn fixed test set: a matbench fold's
    )


def read_options(path: Path | None) -> dict[str, Any]:
    """The options file as a mapping (none: the defaults); its ``data`` section may only hold ``val_fraction``."""
    if path is None:
        return {}
    raw = read_yaml(Path(path), "options file") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of options at the top level.")
    data = raw.get("data") or {}
    extra = sorted(set(data) - {"val_fraction"}) if isinstance(data, dict) else ["(not a mapping)"]
    if extra:
        raise ConfigError(f"{path}: data.{extra[0]}: the Matbench task chooses the data and its folds; only"
                          " data.val_fraction may be given.")
    return raw


def task_options(raw: dict[str, Any], path: Path | None, task: MatbenchTask, data_path: Path | None) -> TrainConfig:
    """The options with the task's data: its file (or matbench's download) and target. The fold runs'
    ``config.yaml`` records them."""
    from matbench.metadata import mbv01_metadata

    metadata = mbv01_metadata[task.name]
    data = {"read_from": str(data_path or f"matbench:{task.name}"), "reader": "matminer",
            "target": metadata.target, "unit": metadata.unit, **(raw.get("data") or {})}
    return config_from_dict({**raw, "data": data}, path or "default options")


@dataclass
class FoldResult:
    fold: int
    metrics: dict[str, Any]  # the fold's metrics.json
    predictions: pd.DataFrame  # id, y_true, y_pred of its test ids

    @classmethod
    def read(cls, fold: int, run_dir: Path) -> FoldResult:
        return cls(fold, json.loads((run_dir / "metrics.json").read_text()),
                   pd.read_csv(run_dir / "test_predictions.csv", dtype={"id": str}))


FitFold = Callable[[int, Split, Path], dict[str, Any]]  # (fold, split, run directory) -> the run's metrics


def run_matbench(task_name: str, options: Path | None, out: Path, *, baseline: str | None = None,
                 source_features: Sequence[str] = (), folds: list[int] | None = None,
                 data_sources: Path | None = None,
                 overrides: dict[str, Any] | None = None, command: str = "", progress: bool = True) -> list[FoldResult]:
    """Run the task's folds not yet finished under ``out``; write ``results.md`` and ``results.json`` of every
    fold finished there, and return those folds' results.

    ``baseline``: a feature model of `training.baselines` (extra_trees, hist_gb, hist_gb_l1, hurdle_hist_gb) instead
    of the options' network; it takes no options file. ``source_features``: frozen models (checkpoints or
    pre-trained names) whose predictions join the baseline's features; none may have trained on a fold's test
    rows. ``overrides``: options the command line gives (device, threads, seed), over the options file's.
    """
    task = task_of(task_name)
    folds = list(range(N_FOLDS)) if folds is None else folds
    bad = [k for k in folds if not 0 <= k < N_FOLDS]
    if bad:
        raise ConfigError(f"--folds: fold {bad[0]} does not exist; Matbench v0.1 has folds 0 to {N_FOLDS - 1}.")
    if baseline is not None and options is not None:
        raise ConfigError(f"{options}: --baseline {baseline} takes no options file (its model and features are"
                          " training/baselines.py's); give the data with --data-sources.")
    if baseline is not None and baseline not in BASELINES:
        raise ConfigError(f"--baseline: unknown model {baseline!r}; known: {', '.join(BASELINES)}.")
    if source_features and baseline is None:
        raise ConfigError("--source-features: only a --baseline reads other models' predictions as features.")
    raw = {**read_options(options), **(overrides or {})}
    sources_path = data_sources or raw.get("data_sources")
    sources = DataSources.from_yaml(Path(sources_path)) if sources_path else DataSources.from_env()
    path = task_file(task, sources)
    config = task_options(raw, options, task, path)  # checked before any data is read
    frame, table = load_task(task, path)
    out.mkdir(parents=True, exist_ok=True)
    if baseline is None:
        fit_fold, record = _network_folds(config, table, progress), config.resolved()
        val_fraction = config.data.val_fraction
    else:
        fit_fold = _baseline_folds(baseline, config.seed, table, progress, source_features)
        record = {**_baseline_record(baseline, config.seed, table), "source_features": list(source_features)}
        val_fraction = 0.0  # trees need no early stopping: each fold trains on all its train ids
    present = set(table.ids)
    folds_ids = fold_ids(task.name)
    for position, fold in enumerate(folds, start=1):
        run_dir = out / f"fold_{fold}"
        if (run_dir / "metrics.json").exists():
            log.info("fold %d (%d/%d): finished earlier, kept", fold, position, len(folds))
            continue
        train_ids, test_ids = folds_ids[fold]
        # Each fold its own seed (validation draw and initialisation): the folds are independent runs.
        split = fold_split(train_ids, test_ids, present, val_fraction, config.seed + fold)
        log.info("fold %d (%d/%d): %d train, %d val, %d test (%d test ids not in %s)", fold, position, len(folds),
                 len(split.train), len(split.val), len(split.test), len(test_ids) - len(split.test), table.source)
        start = time.perf_counter()
        metrics = fit_fold(fold, split, run_dir)
        log.info("fold %d (%d/%d) done in %.0f s: test MAE %.4g %s", fold, position, len(folds),
                 time.perf_counter() - start, metrics["test"]["mae"], table.unit)
    # The summaries cover every finished fold under ``out``, also those an earlier `--folds` ran.
    results = [FoldResult.read(k, out / f"fold_{k}") for k in range(N_FOLDS)
               if (out / f"fold_{k}" / "metrics.json").exists()]
    complete = len(table) == n_samples(task.name)
    # The package reads back (and the leaderboard takes) a task with all five folds recorded only.
    official = complete and len(results) == N_FOLDS
    if official:
        write_official(task.name, frame, results, out / "results.json", record)
    write_atomic(out / "results.md", results_markdown(task, table, results, complete, official, command))
    write_json(out / "folds.json", [{"fold": r.fold, **r.metrics["test"], "wall_seconds": r.metrics["wall_seconds"],
                                     "n_train": r.metrics["n_train"], "n_val": r.metrics["n_val"],
                                     "n_test": r.metrics["n_test"]} for r in results])
    return results


def _network_folds(config: TrainConfig, table: PropertyTable, progress: bool) -> FitFold:
    """Each fold one `training.run.run` of the options (the one training path), seeded by the fold."""
    from mattransfer.training.run import run

    def fit_fold(fold: int, split: Split, run_dir: Path) -> dict[str, Any]:
        fold_config = config.model_copy(update={"output_dir": run_dir, "seed": config.seed + fold})
        return run(fold_config, progress, prepared=(table.subset([*split.train, *split.val, *split.test]), split))

    return fit_fold


def _baseline_folds(model: str, seed: int, table: PropertyTable, progress: bool,
                    source_features: Sequence[str] = ()) -> FitFold:
    """Each fold one `training.baselines.run_split` of ``model``, seeded by the fold, on the features of all the
    task's rows, with the predictions of the frozen ``source_features`` models: made (or read from the cache)
    once, at the first fold that runs."""
    made: dict[str, Any] = {}

    def fit_fold(fold: int, split: Split, run_dir: Path) -> dict[str, Any]:
        if not made:
            features, made["record"] = table_features(table, progress)
            predictions, made["sources"] = source_predictions(source_features, table, progress)
            made["features"] = pd.concat([features, predictions], axis=1)
            made["record"]["source_features"] = list(source_features)
        return run_split(made["features"], table, split, model, seed + fold, run_dir, made["record"], made["sources"])

    return fit_fold


def _baseline_record(model: str, seed: int, table: PropertyTable) -> dict[str, Any]:
    """What the official results file records of a baseline's settings."""
    sets = COMPOSITION_SETS if table.compositions is not None else FEATURE_SETS  # as `table_features` picks
    return {"baseline": model, "seed": seed, "features": list(sets),
            "pipeline": [repr(step) for _, step in make_model(model, seed).steps]}


def n_samples(task: str) -> int:
    """The task's row count in Matbench v0.1."""
    from matbench.metadata import mbv01_metadata

    return int(mbv01_metadata[task].n_samples)


def write_official(task: str, frame: pd.DataFrame, results: list[FoldResult], path: Path,
                   options: dict[str, Any]) -> None:
    """The matbench package's results file of the folds in ``results``, recorded and scored by the package;
    ``options`` (the model's settings) go into its metadata."""
    from matbench.bench import MatbenchBenchmark
    from matbench.metadata import mbv01_metadata

    # matbench's logger prints every step to stdout on its own handler; ours reports what matters.
    logging.getLogger("matbench").setLevel(logging.WARNING)
    benchmark = MatbenchBenchmark(autoload=False, subset=[task])
    package_task = benchmark.tasks_map[task]
    metadata = mbv01_metadata[task]
    package_task.df = frame[[metadata.input_type, metadata.target]]
    for result in results:
        test_ids = package_task.validation[package_task.folds_map[result.fold]].test
        predicted = result.predictions.set_index("id")["y_pred"]
        # A network's epochs; a baseline's feature count (it has no epochs).
        params = {key: int(result.metrics[key]) for key in ("epochs_run", "best_epoch", "n_features")
                  if result.metrics.get(key) is not None}
        package_task.record(result.fold, predicted.loc[list(test_ids)].to_numpy(), params=params)
    benchmark.add_metadata({"software": "mattransfer", "options": options})
    with atomic_path(path) as tmp:
        benchmark.to_file(str(tmp))


def _epochs(metrics: dict[str, Any]) -> str:
    """"epochs run (best epoch)" of a network; a baseline has none."""
    return "–" if metrics.get("epochs_run") is None else f"{metrics['epochs_run']} ({metrics['best_epoch']})"


def results_markdown(task: MatbenchTask, table: PropertyTable, results: list[FoldResult], complete: bool,
                     official: bool, command: str) -> str:
    """Per-fold metrics, their mean ± std over the folds, and the leaderboard's best MAEs beside ours."""
    unit = table.unit
    lines = [f"# {task.name}", ""]
    if command:
        lines += ["```bash", command, "```", ""]
    if results and results[0].metrics.get("features"):
        made = results[0].metrics["features"]
        lines += [f"Baseline `{results[0].metrics['method']}` (training/baselines.py, default settings) on"
                  f" {results[0].metrics['n_features']} features ({', '.join(made['sets'])}), trained on all of each"
                  f" fold's train ids. Features of the task's {made.get('rows', made.get('structures')):,} rows: computed once"
                  f" ({'read from the cache in' if made['cached'] else 'made in'} {made['seconds']:.0f} s, not in"
                  " the folds' wall times).", ""]
    if not complete:
        lines += [f"**partial: {len(table):,} of {n_samples(task.name):,} rows, not leaderboard-comparable**", ""]
    lines += [f"| fold | n train | n val | n test | MAE ({unit}) | RMSE ({unit}) | R² | epochs (best) | wall s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        m, test = r.metrics, r.metrics["test"]
        lines.append(f"| {r.fold} | {m['n_train']} | {m['n_val']} | {m['n_test']} | {test['mae']:.4g} |"
                     f" {test['rmse']:.4g} | {test['r2']:.3f} | {_epochs(m)} |"
                     f" {m['wall_seconds']:.0f} |")
    n = len(results)
    # Population std (numpy's default), as the matbench leaderboard reports its fold spread.
    stats = {key: (np.mean(values), np.std(values)) for key, values in (
        (key, [r.metrics["test"][key] for r in results]) for key in ("mae", "rmse", "r2"))}
    wall = sum(r.metrics["wall_seconds"] for r in results)
    if n > 1:
        lines.append(f"| mean ± std (n = {n} folds) | | | | {stats['mae'][0]:.4g} ± {stats['mae'][1]:.2g} |"
                     f" {stats['rmse'][0]:.4g} ± {stats['rmse'][1]:.2g} | {stats['r2'][0]:.3f} ± {stats['r2'][1]:.2g}"
                     f" | | {wall:.0f} (total) |")
    lines += ["", f"{n} of {N_FOLDS} folds finished." if n < N_FOLDS else "All five folds finished.", "",
              f"## Leaderboard (mean MAE over the five folds, {unit})", "", "| model | MAE |", "|---|---|"]
    ours = {0: "–", 1: f"{stats['mae'][0]:.4g} (one fold, one run)"}.get(
        n, f"{stats['mae'][0]:.4g} ± {stats['mae'][1]:.2g} (n = {n} folds)")
    lines.append(f"| **mattransfer (this run)** | **{ours}** |")
    lines += [f"| {model} | {mae:.4g} |" for model, mae in task.leaderboard]
    if official:
        note = "`results.json`: the matbench package's results file (`MatbenchBenchmark.from_file` reads it)."
    elif not complete:
        note = "No `results.json`: the data is not the complete task, so its folds cannot be recorded officially."
    else:
        note = "No `results.json` yet: the matbench package records a task with all five folds only."
    lines += ["", note, ""]
    return "\n".join(lines)
