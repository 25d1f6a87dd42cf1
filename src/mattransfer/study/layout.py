"""The study directory on disk. Every file a reader may see is written atomically.

    study.yaml               the spec of the latest run
    plan.json                every task of the study (grows when a part plans once results are in)
    part2_targets.json       Part 2's picked targets and the gains they were picked by (`parts.part2`)
    formula_exclusions.json  datasets prepared without another's test compositions: rows before, removed, kept
    relatedness.csv          property relatedness of the datasets
                             (data/relatedness.key: the dataset fingerprints it was computed from)
    splits/<key>_test.json   the fixed test ids of each dataset
    data/<key>-<fingerprint>/  graphs, targets (and Bravais labels) that workers read
    tasks/<hash>/            one task: result.json or error.json, model.ckpt (pre-trainings),
                             split.json, history.csv, test_predictions.csv, train.log
    .lock                    the pid and host of the run writing here (one writer at a time)
    results.parquet, results.csv   the results table
    runs/<start time>.json   one per `run_study` call: workers, elapsed wall time, tasks it ran
                             (rewritten as it goes, so a killed run keeps its last state)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from mattransfer.errors import MattransferError
from mattransfer.fileio import write_json

log = logging.getLogger(__name__)


class StudyLocked(MattransferError):
    """Another run is writing to the study directory."""


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
    def relatedness_file(self) -> Path:
        return self.root / "relatedness.csv"

    @property
    def exclusions_file(self) -> Path:
        return self.root / "formula_exclusions.json"

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
        """The finished task's result, or None while it is not done (an unreadable one is not done)."""
        if task_hash not in self._results:
            result = _read_json(self.task_dir(task_hash) / "result.json")
            if result is None:
                return None
            self._results[task_hash] = result
        return self._results[task_hash]

    def error(self, task_hash: str) -> dict | None:
        """The failed task's error (message and traceback), or None."""
        return _read_json(self.task_dir(task_hash) / "error.json")

    def forget_result(self, task_hash: str, why: str) -> None:
        """Make a finished task not done again (kept as ``result.json.damaged``), so that it re-runs."""
        path = self.task_dir(task_hash) / "result.json"
        log.warning("%s: %s; the task runs again.", path, why)
        if path.exists():
            path.replace(path.with_name("result.json.damaged"))
        self._results.pop(task_hash, None)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the study's write lock for the block: a second run on the same directory fails at once,
        naming the holder. The kernel drops the lock of a process that dies, kill -9 included, so a
        lock left by a dead run is taken over (and said so)."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StudyLocked(f"{self.root}: another run is writing to this study ({holder}); wait for it to"
                              " finish or stop it, then run again.") from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            log.warning("%s: taking over the lock of a run that is gone (%s).", self.root, previous)
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)  # an empty lock file: released cleanly
            handle.close()

    def is_done(self, task_hash: str) -> bool:
        return self.result(task_hash) is not None

    def write_result(self, task_hash: str, result: dict) -> None:
        write_json(self.task_dir(task_hash) / "result.json", result)
        (self.task_dir(task_hash) / "error.json").unlink(missing_ok=True)

    def write_error(self, task_hash: str, error: str, traceback: str, skipped: bool = False) -> None:
        """Record a failed task, or (``skipped``) one that did not run because a task it needs failed."""
        self.task_dir(task_hash).mkdir(parents=True, exist_ok=True)
        write_json(self.task_dir(task_hash) / "error.json", {"error": error, "traceback": traceback, "skipped": skipped})


_WARNED: set[Path] = set()


def _read_json(path: Path) -> dict | None:
    """A task file's contents; None when absent, and when damaged (with a warning naming it, once)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and bad UTF-8
        if path not in _WARNED:
            _WARNED.add(path)
            log.warning("%s: unreadable (%s); the task counts as not done.", path, exc)
        return None
