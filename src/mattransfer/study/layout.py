"""The study directory on disk. Every file a reader may see is written atomically.

    study.yaml               the spec of the latest run
    plan.json                every task of the study (grows when Part 2 is expanded)
    part2_targets.json       Part 2's picked targets and the gains they were picked by
    relatedness.csv          property relatedness of the datasets
                             (data/relatedness.key: the dataset fingerprints it was computed from)
    splits/<key>_test.json   the fixed test ids of each dataset
    data/<key>-<fingerprint>/  graphs, targets (and Bravais labels) that workers read
    tasks/<hash>/            one task: result.json or error.json, model.ckpt (pre-trainings),
                             split.json, history.csv, test_predictions.csv, train.log
    results.parquet, results.csv   the results table
    runs/<start time>.json   one per `run_study` call: workers, elapsed wall time, tasks it ran
                             (rewritten as it goes, so a killed run keeps its last state)
"""

from __future__ import annotations

import json
from pathlib import Path

from mattransfer.fileio import write_json


class StudyDir:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._results: dict[str, dict] = {}  # finished results never change: read each once

    @property
    def spec_file(self) -> Path:
        return self.root / "study.yaml"

    @property
    def plan_file(self) -> Path:
        return self.root / "plan.json"

    @property
    def part2_file(self) -> Path:
        return self.root / "part2_targets.json"

    @property
    def relatedness_file(self) -> Path:
        return self.root / "relatedness.csv"

    @property
    def relatedness_key_file(self) -> Path:
        return self.root / "data" / "relatedness.key"

    @property
    def results_parquet(self) -> Path:
        return self.root / "results.parquet"

    @property
    def results_csv(self) -> Path:
        return self.root / "results.csv"

    def run_file(self, started: str) -> Path:
        return self.root / "runs" / f"{started}.json"

    def test_ids_file(self, key: str) -> Path:
        return self.root / "splits" / f"{key}_test.json"

    def data_dir(self, key: str, fingerprint: str) -> Path:
        return self.root / "data" / f"{key}-{fingerprint}"

    def task_dir(self, task_hash: str) -> Path:
        return self.root / "tasks" / task_hash

    def checkpoint(self, task_hash: str) -> Path:
        return self.task_dir(task_hash) / "model.ckpt"

    def result(self, task_hash: str) -> dict | None:
        """The finished task's result, or None while it is not done."""
        if task_hash not in self._results:
            path = self.task_dir(task_hash) / "result.json"
            if not path.exists():
                return None
            self._results[task_hash] = json.loads(path.read_text())
        return self._results[task_hash]

    def error(self, task_hash: str) -> dict | None:
        """The failed task's error (message and traceback), or None."""
        path = self.task_dir(task_hash) / "error.json"
        return json.loads(path.read_text()) if path.exists() else None

    def is_done(self, task_hash: str) -> bool:
        return self.result(task_hash) is not None

    def write_result(self, task_hash: str, result: dict) -> None:
        write_json(self.task_dir(task_hash) / "result.json", result)
        (self.task_dir(task_hash) / "error.json").unlink(missing_ok=True)

    def write_error(self, task_hash: str, error: str, traceback: str) -> None:
        self.task_dir(task_hash).mkdir(parents=True, exist_ok=True)
        write_json(self.task_dir(task_hash) / "error.json", {"error": error, "traceback": traceback})
