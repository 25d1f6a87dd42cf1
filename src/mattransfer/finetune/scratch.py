"""``scratch``: the baseline. The pre-trained model's architecture, randomly initialised."""

from mattransfer.finetune.base import MethodOptions, register_method
from mattransfer.models.model import TransferModel


@register_method("scratch", MethodOptions)
def prepare(pretrained: TransferModel, options: MethodOptions) -> TransferModel:
    return TransferModel(pretrained.config, pretrained.graphs)
