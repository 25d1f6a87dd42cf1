"""``last_layer``: only the head's output layer trains (DeePMD's ``trainable: [false, false, false, true]``).

The pre-trained encoder and the head's hidden layers are frozen features; the output layer, a linear
map from them to the new property, is freshly initialised (kept with ``inherit_head``). This is the
member model of DP-GEN's ``simplify`` loop: cheap to train several times, and with the encoder frozen
it trains on cached embeddings.
"""

from mattransfer.finetune.base import MethodOptions, register_method
from mattransfer.models.model import TransferModel


@register_method("last_layer", MethodOptions)
def prepare(pretrained: TransferModel, options: MethodOptions) -> TransferModel:
    model = pretrained
    model.freeze(["encoder"] + [f"head.{i}" for i in range(len(model.head) - 1)])
    if not options.inherit_head:  # a new property: a new linear map, seeded by the caller's torch seed
        model.head[-1].reset_parameters()
    return model
