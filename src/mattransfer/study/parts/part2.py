"""Part 2 — data vs physics: pre-training size scaling, fine-tuned on each source's best and worst Part 1 target.

The pre-trainings are planned at once; the fine-tunes once the Part 1 results that pick their targets are in
(`waits_for`, `plan_deferred`), which writes the picks to ``part2_targets.json``.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import Field

from mattransfer.fileio import write_json
from mattransfer.study.parts.base import Part, Sizes, in_study, register_part
from mattransfer.study.results import transfer_gain

if TYPE_CHECKING:
    from mattransfer.study.layout import StudyDir
    from mattransfer.study.spec import StudySpec
    from mattransfer.study.tasks import Plan, Planner, Task

log = logging.getLogger(__name__)

TARGETS_FILE = "part2_targets.json"  # the picked targets and the gains they were picked by


@register_part("part2", number=2)
class Part2(Part):
    """Pre-training size scaling for ``sources``, fine-tuned on their best and worst Part 1 targets.

    The targets are picked from Part 1's mean transfer gain (over sizes and seeds) of ``method``,
    which Part 2 also fine-tunes with.
    """

    sources: list[str] = Field(default_factory=lambda: ["eform", "bandgap"])
    pretrain_sizes: Sizes = Field(default_factory=lambda: [1000, 5000, 10000, 50000, 100000])
    finetune_size: int = Field(900, ge=2)
    method: str = "full"

    def check(self, spec: StudySpec) -> None:
        in_study(spec, "part2.sources", self.sources)
        if not spec.part1.enabled:
            raise ValueError("part2 picks its targets from Part 1's results: enable part1 too")
        outside = sorted(set(self.sources) - set(spec.part1.source_keys(spec)))
        if outside:
            raise ValueError(f"part2.sources {outside} are not Part 1 sources (part1.sources): Part 2 picks their"
                             " targets from their Part 1 gains")
        if self.method not in spec.part1.methods:
            raise ValueError(f"part2.method {self.method!r} must be one of part1.methods {list(spec.part1.methods)}")

    def plan(self, planner: Planner, plan: Plan) -> None:
        """The pre-trainings, which do not depend on Part 1."""
        self.plan_targets(planner, plan, {source: [] for source in self.sources})

    def plan_targets(self, planner: Planner, plan: Plan, targets: dict[str, list[str]]) -> None:
        """Pre-training size scaling for each source, fine-tuned on its picked ``targets``."""
        methods = {self.method: planner.spec.part1.methods[self.method]}
        for seed in planner.spec.seeds:
            for source, picked in targets.items():
                for requested in self.pretrain_sizes:
                    pretrain = plan.add(planner.pretrain(source, requested, seed), self.number)
                    for target in picked:
                        planner.transfer(plan, self.number, pretrain, target, [self.finetune_size], methods, seed)

    def waits_for(self, planner: Planner, plan: Plan) -> list[Task]:
        """The Part 1 tasks whose results pick the targets."""
        part1 = planner.spec.part1.number
        return [t for t in plan.in_part(part1)
                if t.method == "scratch" or (t.method == self.method and t.source in self.sources)]

    def plan_deferred(self, planner: Planner, plan: Plan, results: pd.DataFrame, study: StudyDir) -> None:
        picks = pick_part2_targets(results, self.sources, self.method)
        write_json(study.root / TARGETS_FILE, picks)
        targets = {source: list(dict.fromkeys([p["best"], p["worst"]])) for source, p in picks.items()}
        log.info("Part 2 targets (by Part 1 mean gain of %s): %s", self.method, targets)
        self.plan_targets(planner, plan, targets)

    @classmethod
    def status(cls, study: StudyDir) -> dict[str, Any]:
        path = study.root / TARGETS_FILE
        return {"part2_targets": json.loads(path.read_text()) if path.exists() else None}


def pick_part2_targets(results: pd.DataFrame, sources: list[str], method: str) -> dict[str, dict[str, Any]]:
    """For each source, the Part 1 target with the highest and the lowest mean gain of ``method``.

    The mean runs over fine-tune sizes and seeds. A source with a single target has best = worst.
    """
    gains = transfer_gain(results[results["part"] == 1])
    mean = gains[gains["method"] == method].groupby(["source", "target"])["gain"].mean()
    picks = {}
    for source in sources:
        by_target = mean.loc[source].sort_values(ascending=False)
        picks[source] = {
            "best": by_target.index[0], "worst": by_target.index[-1], "method": method,
            "mean_gain": {str(t): float(g) for t, g in by_target.items()},
        }
    return picks
