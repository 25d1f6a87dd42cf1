"""Part 3 — representation vs prediction: fine-tuning methods compared on linked and unlinked pairs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, field_validator

from mattransfer.study.parts.base import Methods, Part, Sizes, distinct_seeds, in_study, register_part

if TYPE_CHECKING:
    from mattransfer.study.spec import StudySpec
    from mattransfer.study.tasks import Plan, Planner


@register_part("part3", number=3)
class Part3(Part):
    """Representation vs prediction: fine-tuning methods compared on linked and unlinked pairs."""

    pairs: list[tuple[str, str]] = Field(
        default_factory=lambda: [("gvrh", "phonons"), ("phonons", "gvrh"), ("bandgap", "phonons")],
        description="(source, target) pairs",
    )
    methods: Methods = Field(
        default_factory=lambda: {"full": {}, "heads": {}, "freeze": {"layers": 2}, "lora": {"rank": 8, "alpha": 16}}
    )
    finetune_sizes: Sizes | None = Field(None, description="default: the study's finetune_sizes")
    seeds: list[int] | None = Field(None, description="default: the study's seeds; more where methods differ little")

    _distinct_seeds = field_validator("seeds")(distinct_seeds)

    def check(self, spec: StudySpec) -> None:
        in_study(spec, "part3.pairs", [key for pair in self.pairs for key in pair])
        if any(source == target for source, target in self.pairs):
            raise ValueError("part3.pairs: a pair needs two different datasets")

    def plan(self, planner: Planner, plan: Plan) -> None:
        spec = planner.spec
        for seed in self.seeds or spec.seeds:
            for source, target in self.pairs:
                pretrain = plan.add(planner.pretrain(source, spec.pretrain_cap, seed), self.number)
                planner.transfer(plan, self.number, pretrain, target, self.finetune_sizes or spec.finetune_sizes,
                                 self.methods, seed)
