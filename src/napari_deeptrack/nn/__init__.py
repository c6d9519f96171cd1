"""Neural network models (plain torch), each built from a JSON-able config.

>>> from napari_deeptrack.nn import build_model
>>> net = build_model({"type": "UNet", "in_channels": 1, "out_channels": 1, "depth": 2})
"""

from .cnn import CNN
from .gan import PatchDiscriminator, Pix2Pix, Pix2PixGenerator
from .lodestar import LodeSTAR
from .mlp import MLP
from .registry import MODELS, build_model, list_models, model_config, register_model
from .unet import EncoderDecoder, UNet

__all__ = [
    "CNN",
    "LodeSTAR",
    "MLP",
    "MODELS",
    "EncoderDecoder",
    "PatchDiscriminator",
    "Pix2Pix",
    "Pix2PixGenerator",
    "UNet",
    "build_model",
    "list_models",
    "model_config",
    "register_model",
]
