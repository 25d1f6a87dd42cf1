"""The results table: one row per (part, finished task), and the transfer gains computed from it.

A task shared by several parts (a pre-training, a scratch baseline) has a row in each part.
Pre-training rows have source = target = the dataset and method ``pretrain``; scratch rows have no
source, no pre-training size and no λ; feature-baseline rows (kind ``baseline``, method the model)
neither, and n_train counts train + val ids (n_val 0), since they need no validation set.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from mattransfer.fileio import atomic_path, write_atomic
from mattransfer.study.layout import StudyDir
from mattransfer.study.tasks import Plan, Task

COLUMNS = [
    "part", "kind", "source", "target", "pretrain_size", "finetune_size", "method", "seed", "aux_lambda",
    "n_train", "n_val", "n_test", "epochs_run", "best_epoch", "test_mae", "test_rmse", "test_r2", "unit",
    "wall_seconds", "task_hash", "status", "error", "cap_note", "test_same_structure", "test_same_formula",
]
_DTYPES = {
    "part": "Int64", "pretrain_size": "Int64", "finetune_size": "Int64", "seed": "Int64", "aux_lambda": "float64",
    "n_train": "Int64", "n_val": "Int64", "n_test": "Int64", "epochs_run": "Int64", "best_epoch": "Int64",
    "test_mae": "float64", "test_rmse": "float64", "test_r2": "float64", "wall_seconds": "float64",
    "test_same_structure": "Int64", "test_same_formula": "Int64",
    **{c: "string" for c in ("kind", "source", "target", "method", "unit", "task_hash", "status", "error", "cap_note")},
}


def results_table(plan: Plan, study: StudyDir) -> pd.DataFrame:
    """Rows of every task of ``plan`` that finished (``done``) or raised (``failed``)."""
    rows = []
    for task in plan:
        result = study.result(task.hash)
        error = None if result else study.error(task.hash)
        if result or error:
            rows += [_row(task, part, result, error) for part in sorted(task.parts)]
    table = pd.DataFrame(rows, columns=COLUMNS).astype(_DTYPES)
    return table.sort_values("part", kind="stable", ignore_index=True)


def _row(task: Task, part: int, result: dict | None, error: dict | None) -> dict[str, Any]:
    row = {
        "part": part, "kind": task.kind, "source": task.source, "target": task.dataset,
        "pretrain_size": task.pretrain_size, "finetune_size": None if task.kind == "pretrain" else task.size,
        "method": task.method, "seed": task.seed, "aux_lambda": task.aux_lambda, "task_hash": task.hash,
        "cap_note": "; ".join(sorted(task.notes)) or None,
    }
    if result is None:
        return {**row, "status": "failed", "error": error["error"]}
    test = result.get("metrics", result)["test"]  # results of before one schema nested their metrics
    overlap = result.get("test_in_pretraining") or {}
    return {
        **row, "status": "done", "error": None, "unit": result["unit"],
        **{k: result[k] for k in ("n_train", "n_val", "n_test", "epochs_run", "best_epoch", "wall_seconds")},
        "test_mae": test["mae"], "test_rmse": test["rmse"], "test_r2": test["r2"],
        # test materials of the target that the source's pre-training trained on
        "test_same_structure": overlap.get("same_structure"), "test_same_formula": overlap.get("same_formula"),
    }


def write_results(table: pd.DataFrame, study: StudyDir) -> None:
    """``results.parquet`` and ``results.csv``, each replaced atomically."""
    with atomic_path(study.results_parquet) as tmp:
        table.to_parquet(tmp, index=False)
    write_atomic(study.results_csv, table.to_csv(index=False))


def transfer_gain(results: pd.DataFrame) -> pd.DataFrame:
    """Finished transfer fine-tunes with ``scratch_mae``, ``scratch_hash`` (the baseline's task) and
    ``gain = (MAE_scratch − MAE_TL) / MAE_scratch``.

    Each pairs with the scratch baseline of the same target, fine-tune size and seed: the same subset.
    """
    done = results[results["status"] == "done"]
    scratch = (
        done[done["method"] == "scratch"]
        .drop_duplicates("task_hash")[["target", "finetune_size", "seed", "test_mae", "task_hash"]]
        .rename(columns={"test_mae": "scratch_mae", "task_hash": "scratch_hash"})
    )
    transfer = done[(done["kind"] == "finetune") & (done["method"] != "scratch")]
    gains = transfer.merge(scratch, on=["target", "finetune_size", "seed"], how="inner")
    gains["gain"] = (gains["scratch_mae"] - gains["test_mae"]) / gains["scratch_mae"]
    return gains
