"""How a model asks for its conv and linear layers. Compression methods swap the factory, so model
code never names a method (DESIGN.md, the method seam)."""
from __future__ import annotations

import numpy as np

from .. import nn


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
