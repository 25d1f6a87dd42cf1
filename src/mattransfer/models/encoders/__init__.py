"""Encoders, one file each; importing this package registers them all (and their pre-trained weights)."""

from mattransfer.models.encoders import cgcnn  # noqa: F401  (registers "cgcnn")
from mattransfer.models.encoders import cgcnn_mp  # noqa: F401  (registers "cgcnn-mp" and its MP checkpoints)
from mattransfer.models.encoders import chgnet  # noqa: F401  (registers "chgnet" and "chgnet:0.3.0")
from mattransfer.models.encoders import elemnet  # noqa: F401  (registers "elemnet")
from mattransfer.models.encoders import element_attention  # noqa: F401  (registers "element-attention")
from mattransfer.models.encoders import magpie_mlp  # noqa: F401  (registers "magpie-mlp")
from mattransfer.models.encoders import sevennet  # noqa: F401  (registers "sevennet", "sevenn:7net-0")
from mattransfer.models.encoders.base import ENCODERS, PRETRAINED, Encoder, register_encoder, register_pretrained

__all__ = ["ENCODERS", "PRETRAINED", "Encoder", "register_encoder", "register_pretrained"]
