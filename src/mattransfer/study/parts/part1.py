"""Part 1 — relations between datasets: every dataset pre-trained, then fine-tuned on every other one."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from mattransfer.models.encoders import PRETRAINED
from mattransfer.study.parts.base import Baselines, Methods, Part, distinct_of, in_study, register_part
from mattransfer.study.transferability import score_cells
from mattransfer.training.baselines import MODELS as BASELINE_MODELS
from mattransfer.training.transferability import SCORES as TRANSFER_SCORES

if TYPE_CHECKING:
    from mattransfer.study.data import PreparedData
    from mattransfer.study.layout import StudyDir
    from mattransfer.study.spec import StudySpec
    from mattransfer.study.tasks import Plan, Planner

log = logging.getLogger(__name__)


@register_part("part1", number=1)
class Part1(Part):
    """Every dataset pre-trained, then fine-tuned on every other one; scratch on the same subsets.

    ``sources``: the datasets pre-trained (default: all); every dataset stays a target. ``[]`` leaves the
    universal models and the baselines as Part 1's only rows beside scratch (no pre-training at all).

    ``baselines``: scikit-learn models on matminer features (`training.baselines`), fitted on the same
    subsets (train + val ids) and scored on the same test sets: the non-transfer yardsticks.
    ``scores``: transferability scores of every transfer cell (`study.transferability`), after the tasks.

    ``universal``: packages' pre-trained models (`mattransfer models`), each a further source for every
    dataset, fine-tuned with ``universal_methods``.

    ``zero_shot``: each pre-trained source also tested as it is (no fine-tuning) on every target whose
    property has its unit (e.g. bandgap on expt_gap).
    """

    sources: list[str] | None = Field(None, description="datasets pre-trained as sources (default: every dataset)")
    methods: Methods = Field(default_factory=lambda: ["heads", "full"])
    universal: list[str] = Field(default_factory=list, description="pre-trained models by name, e.g. chgnet:0.3.0")
    universal_methods: Methods = Field(default_factory=lambda: ["heads"])
    baselines: Baselines = Field(
        default_factory=lambda: ["extra_trees", "hist_gb"],
        description=f"feature baselines (no transfer) on every fine-tune subset, as reference rows, of"
                    f" {', '.join(BASELINE_MODELS)}; [] turns them off",
    )

    zero_shot: bool = Field(False, description="also test each source's model as it is on every target of the"
                                               " same unit")
    scores: list[str] = Field(
        default_factory=lambda: list(TRANSFER_SCORES),
        description="transferability scores of each source's frozen features on each fine-tune subset"
                    " (transferability.csv), correlated with the gains in the report; [] turns them off",
    )


    @field_validator("scores")
    @classmethod
    def _known_scores(cls, names: list[str]) -> list[str]:
        return distinct_of(names, TRANSFER_SCORES, "scores")

    @field_validator("universal")
    @classmethod
    def _known_models(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in PRETRAINED]
        if unknown:
            raise ValueError(f"unknown pre-trained models {unknown}; available: {sorted(PRETRAINED)}")
        return names

    def source_keys(self, spec: StudySpec) -> list[str]:
        """The datasets pre-trained."""
        return spec.datasets if self.sources is None else self.sources

    def check(self, spec: StudySpec) -> None:
        in_study(spec, "part1.sources", self.sources or [])

    def plan(self, planner: Planner, plan: Plan) -> None:
        spec = planner.spec
        for seed in spec.seeds:
            for source in self.source_keys(spec):
                pretrain = plan.add(planner.pretrain(source, spec.pretrain_cap, seed), self.number)
                for target in spec.datasets:
                    if target != source:
                        planner.transfer(plan, self.number, pretrain, target, spec.finetune_sizes, self.methods, seed)
                    if self.zero_shot and target != source and planner.data[target].unit == planner.data[source].unit:
                        plan.add(planner.zero_shot(pretrain, target), self.number)
            for target in spec.datasets:  # the references of every target, whichever sources it has
                for size in spec.finetune_sizes:
                    plan.add(planner.scratch(target, size, seed), self.number)
                    for model in self.baselines:
                        plan.add(planner.baseline(target, size, seed, model), self.number)
            for name in self.universal:
                for target in spec.datasets:
                    for size in spec.finetune_sizes:
                        for method, options in self.universal_methods.items():
                            plan.add(planner.universal(name, target, size, seed, method, options), self.number)

    def pretrained_models(self) -> list[str]:
        return self.universal

    def feature_baselines(self, spec: StudySpec) -> dict[str, int]:
        return {key: max(spec.finetune_sizes) for key in spec.datasets} if self.baselines else {}

    def after_tasks(self, spec: StudySpec, plan: Plan, study: StudyDir, data: dict[str, PreparedData]) -> None:
        """Transferability scores of the cells whose source is ready: an addition to the results, so a failure
        is logged, not raised (the next run tries again)."""
        if not self.scores:
            return
        try:
            score_cells(spec, plan, study, data, self.scores)
        except Exception as exc:  # a damaged checkpoint, a degenerate subset: the tasks' results stand
            log.warning("transferability scores not computed: %s: %s", type(exc).__name__, exc)
