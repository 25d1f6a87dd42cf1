"""``lora``: low-rank adapters on the encoder's linear layers; base weights frozen, head trains."""

from pydantic import Field

from mattransfer.finetune.base import MethodOptions, new_or_inherited_head, register_method
from mattransfer.models.model import TransferModel


class LoraOptions(MethodOptions):
    rank: int = Field(8, ge=1, description="rank r of the update A·B")
    alpha: float = Field(16.0, gt=0, description="scale: W = W0 + (alpha / r)·A·B")


@register_method("lora", LoraOptions)
def prepare(pretrained: TransferModel, options: LoraOptions) -> TransferModel:
    model = new_or_inherited_head(pretrained, options)
    model.add_lora(options.rank, options.alpha)
    return model
