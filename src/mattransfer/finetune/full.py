"""``full``: every weight of the pre-trained encoder trains, under a fresh head."""

from mattransfer.finetune.base import MethodOptions, new_or_inherited_head, register_method
from mattransfer.models.model import TransferModel


@register_method("full", MethodOptions)
def prepare(pretrained: TransferModel, options: MethodOptions) -> TransferModel:
    return new_or_inherited_head(pretrained, options)
