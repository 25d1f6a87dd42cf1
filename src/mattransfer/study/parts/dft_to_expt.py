"""DFT → experiment (the ElemNet transfer experiment, Jha et al. 2019): a model pre-trained on many DFT
values, fine-tuned on few experimental ones, against training on the experimental data alone.

The DFT pre-training never sees a composition of the experimental fixed test set: it trains on ``source``
prepared without them (`formula_exclusions`; the rows removed are counted in the study's
``formula_exclusions.json``, and each fine-tune's ``test_same_formula`` is 0). ``zero_shot``: each seed's
DFT model is also tested as it is on the experimental test set (method ``zero-shot``, no fine-tuning).
Off unless enabled: `mattransfer study preset dft-to-expt` writes a study file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from mattransfer.data.registry import REGISTRY
from mattransfer.study.data import without_test_formulas
from mattransfer.study.parts.base import Baselines, Methods, Part, Sizes, in_study, register_part
from mattransfer.training.baselines import MODELS as BASELINE_MODELS

if TYPE_CHECKING:
    from mattransfer.study.spec import StudySpec
    from mattransfer.study.tasks import Plan, Planner


@register_part("dft_to_expt", number=5)
class DftToExpt(Part):
    """``source`` (DFT) pre-trained without ``target``'s test compositions, fine-tuned on ``target``
    (experiment) at each of ``finetune_sizes`` with each method, beside scratch on the same subsets, and
    tested on ``target`` without fine-tuning (``zero_shot``)."""

    enabled: bool = False
    source: str = Field("bandgap_comp", description="the DFT dataset pre-trained on")
    target: str = Field("expt_gap_comp", description="the experimental dataset fine-tuned and tested on")
    pretrain_size: int = Field(100_000, ge=2, description="DFT pre-training samples, at most (capped at the pool)")
    finetune_sizes: Sizes = Field(default_factory=lambda: [100, 300, 1000, 2000, 4143])
    methods: Methods = Field(default_factory=lambda: {"full": {}, "heads": {}, "freeze": {"train_last": 2}})
    zero_shot: bool = Field(False, description="also test each DFT model as it is on the target's test set"
                                               " (source and target must have the same unit); on in the preset")
    baselines: Baselines = Field(
        default_factory=list,
        description=f"feature models ({', '.join(BASELINE_MODELS)}) on every experimental subset, each twice: on the"
                    " composition features alone, and with the DFT model's prediction as one more feature (transfer"
                    " through features, method '<model>+source')")


    def check(self, spec: StudySpec) -> None:
        in_study(spec, "dft_to_expt.source/target", [self.source, self.target])
        if self.source == self.target:
            raise ValueError("dft_to_expt: source and target must differ")
        units = {key: REGISTRY[key].unit for key in (self.source, self.target)}
        if self.zero_shot and len(set(units.values())) > 1:
            raise ValueError(f"dft_to_expt.zero_shot: the source and target units differ ({units}), so the DFT"
                             " model's own predictions cannot be scored on the target; set zero_shot: false")

    def plan(self, planner: Planner, plan: Plan) -> None:
        source = without_test_formulas(self.source, self.target)
        for seed in planner.spec.seeds:
            pretrain = plan.add(planner.pretrain(source, self.pretrain_size, seed), self.number)
            if self.zero_shot:
                plan.add(planner.zero_shot(pretrain, self.target), self.number)
            planner.transfer(plan, self.number, pretrain, self.target, self.finetune_sizes, self.methods, seed)
            for size in self.finetune_sizes:
                for model in self.baselines:
                    plan.add(planner.baseline(self.target, size, seed, model), self.number)
                    plan.add(planner.baseline(self.target, size, seed, model, pretrain), self.number)

    def feature_baselines(self, spec: StudySpec) -> dict[str, int]:
        return {self.target: max(self.finetune_sizes)} if self.baselines else {}

    def formula_exclusions(self) -> list[tuple[str, str]]:
        return [(self.source, self.target)]
