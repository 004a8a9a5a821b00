"""Compression methods behind the method seam. `layer_factory(method, ...)` gives models their
compressed layers; each method is one file here."""
from __future__ import annotations

from functools import partial

import numpy as np

from .. import nn
from ..models.layers import LayerFactory
from .activations import activation_quantizer
from .apb import APB
from .base import ActivationQuantizer, WeightCount, WeightQuantizer

METHODS = {"fp": "full precision (no compression)", "apb": "Automatic Prune Binarization (METHODS §1)"}


class QuantLayerFactory(LayerFactory):
    """Compressed layers where `compress=True`; the first conv and last linear stay full precision."""

    def __init__(self, rng: np.random.Generator, weight_quantizer, act_bits: int = 32, act_ste: str = "identity"):
        super().__init__(rng)
        self.weight_quantizer, self.act_bits, self.act_ste = weight_quantizer, act_bits, act_ste

    def conv(self, cin, cout, k, stride=1, padding=0, bias=False, compress=True):
        if not compress:
            return super().conv(cin, cout, k, stride, padding, bias, compress)
        return nn.QuantConv2d(cin, cout, k, stride, padding, bias, self.rng, "kaiming_normal",
                              self.weight_quantizer, activation_quantizer(self.act_bits, self.act_ste))

    def linear(self, fin, fout, bias=True, compress=True):
        if not compress:
            return super().linear(fin, fout, bias, compress)
        return nn.QuantLinear(fin, fout, bias, self.rng, self.weight_quantizer,
                              activation_quantizer(self.act_bits, self.act_ste))


def layer_factory(method: str, rng: np.random.Generator, act_bits: int = 32, act_ste: str = "identity",
                  **options) -> LayerFactory:
    """The layer factory for a method; `options` are the method's own (e.g. APB's alpha_delta)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    if method == "fp":
        if act_bits != 32:
            return QuantLayerFactory(rng, None, act_bits, act_ste)
        return LayerFactory(rng)
    return QuantLayerFactory(rng, partial(APB, **options), act_bits, act_ste)



__all__ = ["METHODS", "layer_factory", "APB", "WeightQuantizer", "ActivationQuantizer", "WeightCount", "QuantLayerFactory"]
