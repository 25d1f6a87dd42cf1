"""``freeze``: chosen parts of the encoder frozen, the rest trains (DeePMD-style trainable lists).

The encoder names its parts in order (``Encoder.blocks()``: the input embedding, then its
interaction layers). ``layers: k`` freezes the embedding and the next k blocks; ``train_last: k``
freezes every block but the last k; ``modules`` names any further submodules (e.g. ``encoder.layers.2.bn``).
"""

from pydantic import Field, model_validator

from mattransfer.finetune.base import MethodOptions, new_or_inherited_head, register_method
from mattransfer.errors import ConfigError
from mattransfer.models.model import TransferModel


class FreezeOptions(MethodOptions):
    layers: int = Field(0, ge=0, description="freeze the encoder's embedding and its next k blocks")
    train_last: int | None = Field(None, ge=0, description="freeze every encoder block but the last k")
    modules: list[str] = Field(default_factory=list, description="further submodules to freeze, by name")

    @model_validator(mode="after")
    def _something_frozen(self) -> "FreezeOptions":
        if self.layers and self.train_last is not None:
            raise ValueError("give `layers: k` (freeze the first blocks) or `train_last: k`, not both")
        if self.layers == 0 and self.train_last is None and not self.modules:
            raise ValueError("freeze needs `layers: k` (k >= 1), `train_last: k` or a list of `modules` to freeze")
        return self


@register_method("freeze", FreezeOptions)
def prepare(pretrained: TransferModel, options: FreezeOptions) -> TransferModel:
    model = new_or_inherited_head(pretrained, options)
    blocks = model.encoder.blocks()
    for key, value, most in (("layers", options.layers, len(blocks) - 1), ("train_last", options.train_last or 0, len(blocks))):
        if value > most:
            raise ConfigError(f"finetune.config.{key}={value}, but the encoder has {len(blocks)} blocks:"
                              f" {', '.join(blocks)}")
    if options.train_last is not None:
        frozen = blocks[:len(blocks) - options.train_last]
    else:
        frozen = blocks[:options.layers + 1] if options.layers else []
    model.freeze([f"encoder.{name}" for name in frozen] + options.modules)
    return model
