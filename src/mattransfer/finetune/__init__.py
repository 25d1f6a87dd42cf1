"""Fine-tuning methods, one file each; importing this package registers them all."""

from mattransfer.finetune import freeze, full, heads, last_layer, lora, scratch  # noqa: F401  (registration)
from mattransfer.finetune.base import METHODS, MethodOptions, param_groups

__all__ = ["METHODS", "MethodOptions", "param_groups"]
