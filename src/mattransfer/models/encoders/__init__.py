"""Graph encoders, one file each; importing this package registers them all."""

from mattransfer.models.encoders import cgcnn  # noqa: F401  (registers "cgcnn")
from mattransfer.models.encoders.base import ENCODERS, Encoder, register_encoder

__all__ = ["ENCODERS", "Encoder", "register_encoder"]
