"""Model zoo. `build(name, ...)` is the one entry point; the layer factory is the method seam."""
from __future__ import annotations

import numpy as np

from ..quant import LayerFactory, MethodOptions, layer_factory
from .digits import DigitsCNN
from .resnet import ResNet20
from .vgg import VGGSmall

MODELS = {"resnet20": ResNet20, "vgg_small": VGGSmall, "digits_cnn": DigitsCNN}


def build(name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, seed: int = 0,
          act: str = "relu", method: str = "fp", act_bits: int = 32, act_ste: str = "identity",
          options: MethodOptions | None = None, layers: LayerFactory | None = None, block: str = "basic",
          react: bool = False, act_scale: bool = False):
    """Build a model with deterministic initial weights for `seed`, its compressible layers made by
    `method` (a name in apb_ref.quant.METHODS, with its Options) with `act_bits`-bit activations into them."""
    if name not in MODELS:
        raise ValueError(f"build: unknown model {name!r}; choose one of {sorted(MODELS)}")
    if num_classes < 2 or in_channels < 1 or image_size < 1:
        raise ValueError(f"build: need num_classes >= 2, in_channels >= 1, image_size >= 1; got {num_classes}, {in_channels}, {image_size}")
    if layers is None:
        layers = layer_factory(method, np.random.default_rng(seed), act_bits, act_ste, options)
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, act=act)
    if name != "resnet20":
        kwargs["image_size"] = image_size
        if block != "basic" or react or act_scale:
            raise ValueError(f"build: block, react and act_scale are ResNet-20 options; {name} has its own layout")
    else:
        kwargs.update(block=block, react=react, act_scale=act_scale)
    return MODELS[name](layers, **kwargs)


__all__ = ["build", "MODELS", "LayerFactory", "ResNet20", "VGGSmall", "DigitsCNN"]
