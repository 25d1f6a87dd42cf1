"""``heads``: the pre-trained encoder is a frozen featurizer; only the head trains."""

from mattransfer.finetune.base import MethodOptions, new_or_inherited_head, register_method
from mattransfer.models.model import TransferModel


@register_method("heads", MethodOptions)
def prepare(pretrained: TransferModel, options: MethodOptions) -> TransferModel:
    model = new_or_inherited_head(pretrained, options)
    model.freeze(["encoder"])
    return model
