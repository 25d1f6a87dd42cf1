"""Part 4 — structure-biased pre-training: regression + λ·cross-entropy of the Bravais lattice."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from mattransfer.study.parts.base import Methods, Part, Sizes, in_study, register_part

if TYPE_CHECKING:
    from mattransfer.study.spec import StudySpec
    from mattransfer.study.tasks import Plan, Planner


@register_part("part4", number=4)
class Part4(Part):
    """Structure-biased pre-training: regression + λ·cross-entropy of the Bravais lattice."""

    source: str = "bandgap"
    target: str = "gvrh"
    lambdas: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.3, 1.0])
    pretrain_size: int = Field(941, ge=2)
    methods: Methods = Field(default_factory=lambda: ["heads", "full"])
    finetune_sizes: Sizes | None = Field(None, description="default: the study's finetune_sizes")

    @field_validator("lambdas")
    @classmethod
    def _non_negative(cls, lambdas: list[float]) -> list[float]:
        if not lambdas or min(lambdas) < 0:
            raise ValueError("lambdas must be a non-empty list of weights >= 0")
        return lambdas

    def check(self, spec: StudySpec) -> None:
        in_study(spec, "part4.source/target", [self.source, self.target])
        if self.source == self.target:
            raise ValueError("part4: source and target must differ")

    def plan(self, planner: Planner, plan: Plan) -> None:
        spec = planner.spec
        for seed in spec.seeds:
            for aux_lambda in self.lambdas:
                pretrain = plan.add(planner.pretrain(self.source, self.pretrain_size, seed, float(aux_lambda)),
                                    self.number)
                planner.transfer(plan, self.number, pretrain, self.target, self.finetune_sizes or spec.finetune_sizes,
                                 self.methods, seed)

    def bravais_labels(self) -> set[str]:
        """The source's labels, when a λ > 0 trains on them."""
        return {self.source} if any(self.lambdas) else set()
