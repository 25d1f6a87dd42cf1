"""`run_study`: prepare the data, plan the tasks, run what is missing, keep the results current.

A task is done when its ``result.json`` exists; nothing done is run again, so a study stopped at any
point (kill -9 included) resumes with what is missing. Failed tasks are retried on the next run.
Fine-tunes wait for their pre-training; a part that plans from results (Part 2 from Part 1's) adds the rest
of its tasks once the results it waits for are in.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from datetime import datetime, timezone
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mattransfer.errors import MattransferError
from mattransfer.study.data import PreparedData, prepare_datasets
from mattransfer.study.executors import open_executor
from mattransfer.fileio import write_atomic, write_json
from mattransfer.provenance import machine, provenance
from mattransfer.study.layout import StudyDir
from mattransfer.study.parts import PARTS, Part
from mattransfer.study.results import results_table, write_results
from mattransfer.study.spec import StudySpec
from mattransfer.study.tasks import Plan, Planner, Task
from mattransfer.study.worker import checkpoint_problem, run_task
from mattransfer.training.job import resolve_device

log = logging.getLogger(__name__)


def run_study(
    spec: StudySpec,
    study_dir: Path | str,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every task of ``spec`` not yet done in ``study_dir``; return the study's counts.

    ``workers`` local processes (default: one per core), or the Dask cluster at ``scheduler``
    (``tcp://host:port``). The summary adds to `study_status` how many tasks ran now and the time.
    A script calling this needs the ``if __name__ == "__main__":`` guard of multiprocessing.
    """
    start = time.time()
    resolve_device(spec.device)  # a missing GPU fails here, not in every task
    study = StudyDir(study_dir)
    with study.lock():
        write_atomic(study.spec_file, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        labels_for = set().union(*(part.bravais_labels() for part in spec.parts()))
        data = prepare_datasets(spec, study, labels_for, progress)
        run = _StudyRun(spec, study, data, start)
        with open_executor(workers, scheduler) as (executor, slots), _progress_bar(progress) as bar:
            run.slots = slots
            run.drive(executor, slots, bar)
        if not run.broken:
            for part in spec.parts():
                part.after_tasks(spec, run.plan, study, data)
    for part in run.waiting:
        log.warning("%s is not fully planned: tasks whose results it plans from did not finish; run the study again.",
                    part.name)
    summary = {**_counts(run.plan, study), "ran": run.ran["done"] + run.ran["failed"], "ran_done": run.ran["done"],
               "ran_failed": run.ran["failed"], "ran_skipped": run.ran["skipped"], "blocked": len(run.pending),
               "wall_seconds": round(time.time() - start, 1)}
    if run.broken:
        raise MattransferError(
            f"a worker process died ({run.broken}); the tasks it was running are recorded as failed."
            f" Run the study again to resume ({summary['done']} of {summary['tasks']} tasks done). Common"
            " causes: out of memory, a killed worker, or a script calling run_study without"
            " `if __name__ == \"__main__\":` (worker processes import the main module)."
        )
    return summary


def study_status(study_dir: Path | str) -> dict[str, Any]:
    """Counts of a study's tasks (done, failed, remaining), in all and per part, from its files."""
    study = StudyDir(study_dir)
    if not study.plan_file.exists():
        raise MattransferError(f"{study.root}: not a study directory (no {study.plan_file.name}); run the study first.")
    return _counts(Plan.from_json(json.loads(study.plan_file.read_text())), study)


def _counts(plan: Plan, study: StudyDir) -> dict[str, Any]:
    def count(tasks: list[Task]) -> dict[str, int]:
        errors = [study.error(t.hash) for t in tasks if not study.is_done(t.hash)]
        skipped = sum(e is not None and e.get("skipped", False) for e in errors)
        failed = sum(e is not None for e in errors) - skipped
        done = len(tasks) - len(errors)
        return {"tasks": len(tasks), "done": done, "failed": failed, "skipped": skipped,
                "remaining": len(errors) - failed - skipped}

    parts = sorted({p for t in plan for p in t.parts})
    return {"study_dir": str(study.root), **count(list(plan)), "parts": {p: count(plan.in_part(p)) for p in parts},
            **{key: value for part in PARTS.values() for key, value in part.status(study).items()}}


class _StudyRun:
    """The state of one run: the plan, tasks pending and running, and what ran."""

    def __init__(self, spec: StudySpec, study: StudyDir, data: dict[str, PreparedData], started: float) -> None:
        self.spec, self.study, self.data, self.started = spec, study, data, started
        self.slots = 0
        self.planner = Planner(spec, data)
        self.plan = self.planner.plan()
        self.pending = {t.hash: t for t in self.plan if not study.is_done(t.hash)}
        self._check_checkpoints()
        self.running: dict[Future, Task] = {}
        self.ran: Counter[str] = Counter()
        self.ran_hashes: list[str] = []
        # parts that plan more once results are in; their tasks run after the others'
        self.waiting: list[Part] = [p for p in spec.parts() if p.waits_for(self.planner, self.plan) is not None]
        self.last = {p.number for p in self.waiting}
        self.broken = ""

    def _check_checkpoints(self) -> None:
        """A finished pre-training whose checkpoint is missing or damaged is trained again, not
        inherited as a failure by every fine-tune that waits for it."""
        needed = {t.pretrain for t in self.pending.values() if t.pretrain}
        for task in self.plan:
            if task.hash in needed and task.hash not in self.pending:
                problem = checkpoint_problem(self.study.checkpoint(task.hash), self.study.result(task.hash))
                if problem:
                    self.study.forget_result(task.hash, f"its checkpoint {problem}")
                    self.pending[task.hash] = task

    def drive(self, executor: Executor, slots: int, bar: Progress) -> None:
        """Submit ready tasks (up to ``slots`` at once) until none is left that can run."""
        self._update(bar)
        while not self.broken:
            for task in self._ready()[: slots - len(self.running)]:
                del self.pending[task.hash]
                self.running[executor.submit(run_task, task, self.spec, self.data, self.study.root)] = task
            if not self.running:
                break
            finished, _ = wait(self.running, return_when=FIRST_COMPLETED)
            for future in finished:
                self._finish(self.running.pop(future), future)
            self._update(bar)
        for future, task in self.running.items():  # left only when the pool broke
            self._finish(task, future)

    def _ready(self) -> list[Task]:
        """Pending tasks whose pre-training is done, part by part with the parts that plan from results last
        (Part 2); within a part pre-trainings first, largest first, then the other tasks seed by seed.

        Part 2's fine-tunes wait for Part 1's results anyway, and its pre-trainings are the study's
        longest tasks: the other parts' answers come first. Seed by seed, a study stopped early holds
        whole grids of its first seeds rather than every seed of its first targets.
        """
        ready = [t for t in self.pending.values() if t.pretrain is None or self.study.is_done(t.pretrain)]
        return sorted(ready, key=lambda t: (min(t.parts) in self.last, min(t.parts), t.kind != "pretrain",
                                            -t.size if t.kind == "pretrain" else t.seed))

    def _finish(self, task: Task, future: Future) -> None:
        try:
            status = future.result()
        except Exception as exc:  # not the task raising (the worker records that) but the worker lost
            if isinstance(exc, BrokenProcessPool):
                self.broken = str(exc)
            self.study.write_error(task.hash, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            status = "failed"
        self.ran[status] += 1
        self.ran_hashes.append(task.hash)
        if status == "failed":
            error = (self.study.error(task.hash) or {"error": "unknown error"})["error"]
            log.warning("failed %s: %s (%s)", task.describe(), error, self.study.task_dir(task.hash) / "error.json")
            self._skip_dependants(task, error)
        else:
            result = self.study.result(task.hash)
            log.info("done %s: test MAE %.4g %s (%.1f s)", task.describe(), result["test"]["mae"],
                     result["unit"], result["wall_seconds"])

    def _skip_dependants(self, pretrain: Task, error: str) -> None:
        """Fine-tunes of a failed pre-training are recorded as skipped, with the reason (retried next run)."""
        for task in [t for t in self.pending.values() if t.pretrain == pretrain.hash]:
            del self.pending[task.hash]
            reason = f"skipped: its pre-training ({pretrain.describe()}) failed: {error.splitlines()[0]}"
            self.study.write_error(task.hash, reason, "", skipped=True)
            self.ran["skipped"] += 1

    def _update(self, bar: Progress) -> None:
        """Plan what waited for results if it can be; rewrite the plan and the results table; refresh the counts."""
        self._plan_deferred()
        write_json(self.study.plan_file, self.plan.to_json())
        write_results(results_table(self.plan, self.study), self.study)
        done = sum(self.study.is_done(t.hash) for t in self.plan)
        self._record_run(done)
        bar.update(bar.task_ids[0], total=len(self.plan), completed=done,
                   counts=f"done {done} · running {len(self.running)} · failed {self.ran['failed']}"
                          f" · skipped {self.ran['skipped']}"
                          f" · remaining {len(self.pending)}")

    def _record_run(self, done: int) -> None:
        """This run's record: when it started, on how many workers, what it ran (data preparation included),
        with which code on what machine."""
        started = datetime.fromtimestamp(self.started, timezone.utc)
        path = self.study.run_file(started.strftime("%Y%m%dT%H%M%S.%fZ"))
        path.parent.mkdir(exist_ok=True)
        write_json(path, {
            "started": started.isoformat(timespec="seconds"),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "elapsed_seconds": round(time.time() - self.started, 1), "workers": self.slots,
            "ran_done": self.ran["done"], "ran_failed": self.ran["failed"],
            "ran_tasks": sorted(self.ran_hashes), "done": done, "tasks": len(self.plan),
            **provenance(), "machine": machine(),
        })

    def _plan_deferred(self) -> None:
        """Let each waiting part whose inputs are all done add the rest of its tasks (Part 2 picks its targets)."""
        ready = [part for part in self.waiting
                 if all(self.study.is_done(t.hash) for t in part.waits_for(self.planner, self.plan))]
        if not ready:
            return
        results = results_table(self.plan, self.study)
        running = {t.hash for t in self.running.values()}
        for part in ready:
            part.plan_deferred(self.planner, self.plan, results, self.study)
            for task in self.plan.in_part(part.number):
                if not self.study.is_done(task.hash) and task.hash not in running:
                    self.pending[task.hash] = task
            self.waiting.remove(part)


def _progress_bar(enabled: bool) -> Progress:
    bar = Progress(TextColumn("study"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[counts]}"), disable=not enabled)
    bar.add_task("study", total=None, counts="")
    return bar
