"""Compressed layers and the factory models ask for their layers.

`QuantConv2d`/`QuantLinear` pass their weights through a weight quantizer and their input through an
activation quantizer: y = conv2d(act_q(x), weight_q(w)), asked of the weight quantizer (`product`) so
that a method whose layer is a sum of products (PaBT) computes it. A model asks a `LayerFactory` for its conv
and linear layers; the method's factory decides what they are, so model code never names a method.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import nn
from .. import ops as F
from .activations import FullPrecision, activation_quantizer
from .base import ActivationQuantizer, WeightQuantizer

# Builds a layer's weight quantizer from its initial latent weights.
QuantizerMaker = Callable[[np.ndarray], WeightQuantizer]


def _attach(layer: nn.Module, make_quantizer: QuantizerMaker | None, act_quantizer: ActivationQuantizer | None) -> None:
    layer.weight_quantizer = make_quantizer(layer.weight.data) if make_quantizer else WeightQuantizer()
    layer.weight_quantizer.init_weights(layer.weight.data)
    own = layer.weight_quantizer.activation_quantizer()  # a method that makes its input's bases itself
    if own is not None and act_quantizer is not None and act_quantizer.bits != 32:
        raise ValueError(f"method {layer.weight_quantizer.name!r} binarizes its layers' inputs itself; leave the "
                         f"activation bits at 32 (got {act_quantizer.bits})")
    layer.act_quantizer = own or act_quantizer or FullPrecision()


class QuantConv2d(nn.Conv2d):
    """Conv2d whose weights pass through a weight quantizer and whose input through an activation
    quantizer. The layer never asks which method it holds."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False, rng: np.random.Generator | None = None, init: str = "kaiming_uniform",
                 weight_quantizer: QuantizerMaker | None = None, act_quantizer: ActivationQuantizer | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, rng, init)
        _attach(self, weight_quantizer, act_quantizer)

    def _conv(self, x, q, bias):
        return F.conv2d(x, q, bias, self.stride, self.padding)

    def forward(self, x):
        return self.weight_quantizer.product(self.act_quantizer(x), self.weight, self._conv, self.bias)


class QuantLinear(nn.Linear):
    """Linear with a weight quantizer and an activation quantizer, as QuantConv2d."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, rng: np.random.Generator | None = None,
                 weight_quantizer: QuantizerMaker | None = None, act_quantizer: ActivationQuantizer | None = None):
        super().__init__(in_features, out_features, bias, rng)
        _attach(self, weight_quantizer, act_quantizer)

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"QuantLinear: expected input (N, {self.in_features}), got shape {x.shape}")
        return self.weight_quantizer.product(self.act_quantizer(x), self.weight, self._matmul, self.bias)

    @staticmethod
    def _matmul(x, q, bias):
        y = F.matmul(x, F.transpose(q))
        return y + bias if bias is not None else y


def quantized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) for every QuantConv2d/QuantLinear, in definition order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (QuantConv2d, QuantLinear))]


class LayerFactory:
    """Full-precision layers. `compress=False` marks layers that stay full precision under every
    method (by default the first conv and the last linear, as in APB, IR-Net and BNN practice)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0, bias: bool = False,
             compress: bool = True) -> nn.Module:
        return nn.Conv2d(cin, cout, k, stride, padding, bias=bias, rng=self.rng, init="kaiming_normal")

    def linear(self, fin: int, fout: int, bias: bool = True, compress: bool = True) -> nn.Module:
        return nn.Linear(fin, fout, bias=bias, rng=self.rng)


class QuantLayerFactory(LayerFactory):
    """Compressed layers where `compress=True`, each with its own weight quantizer (made by
    `make_quantizer` from the layer's initial weights) and activation quantizer."""

    def __init__(self, rng: np.random.Generator, make_quantizer: QuantizerMaker | None, act_bits: int = 32,
                 act_ste: str = "identity"):
        super().__init__(rng)
        self.make_quantizer, self.act_bits, self.act_ste = make_quantizer, act_bits, act_ste

    def conv(self, cin, cout, k, stride=1, padding=0, bias=False, compress=True):
        if not compress:
            return super().conv(cin, cout, k, stride, padding, bias, compress)
        return QuantConv2d(cin, cout, k, stride, padding, bias, self.rng, "kaiming_normal",
                           self.make_quantizer, activation_quantizer(self.act_bits, self.act_ste))

    def linear(self, fin, fout, bias=True, compress=True):
        if not compress:
            return super().linear(fin, fout, bias, compress)
        return QuantLinear(fin, fout, bias, self.rng, self.make_quantizer,
                           activation_quantizer(self.act_bits, self.act_ste))
