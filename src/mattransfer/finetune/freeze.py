"""``freeze``: chosen parts of the encoder frozen, the rest trains (DeePMD-style trainable lists).

``layers: k`` freezes the atom embedding and the first k message-passing layers; ``modules`` names
any further submodules (e.g. ``encoder.layers.2.bn``).
"""

from pydantic import Field, model_validator

from mattransfer.finetune.base import MethodOptions, new_or_inherited_head, register_method
from mattransfer.errors import ConfigError
from mattransfer.models.model import TransferModel


class FreezeOptions(MethodOptions):
    layers: int = Field(0, ge=0, description="freeze the embedding and the first k message-passing layers")
    modules: list[str] = Field(default_factory=list, description="further submodules to freeze, by name")

    @model_validator(mode="after")
    def _something_frozen(self) -> "FreezeOptions":
        if self.layers == 0 and not self.modules:
            raise ValueError("freeze needs `layers: k` (k >= 1) or a list of `modules` to freeze")
        return self


@register_method("freeze", FreezeOptions)
def prepare(pretrained: TransferModel, options: FreezeOptions) -> TransferModel:
    model = new_or_inherited_head(pretrained, options)
    n_layers = len(model.encoder.layers)
    if options.layers > n_layers:
        raise ConfigError(f"finetune.config.layers={options.layers} but the encoder has {n_layers} message-passing layers")
    first_k = ["encoder.embedding"] + [f"encoder.layers.{i}" for i in range(options.layers)] if options.layers else []
    model.freeze(first_k + options.modules)
    return model
