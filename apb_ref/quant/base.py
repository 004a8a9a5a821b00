"""The method seam. A weight quantizer maps a layer's latent weights to the weights the layer
computes with, inside autograd; it owns its own parameters, schedule hooks and memory count.
`QuantConv2d`/`QuantLinear` (nn.py) hold one and never ask which method it is."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import nn
from ..autograd import Tensor


@dataclass(frozen=True)
class WeightCount:
    """How a layer's weights are stored: `binary` at 1 bit, `full` at 32 bits (+ an index when sparse)."""

    binary: int
    full: int
    sparse: bool  # full-precision weights kept as a sparse residual (APB) rather than dense

    @property
    def total(self) -> int:
        return self.binary + self.full


class WeightQuantizer(nn.Module):
    """Base: the identity (full precision)."""

    name = "fp"

    def forward(self, w: Tensor) -> Tensor:
        return w

    def quantizer_parameters(self) -> list[nn.Parameter]:
        """Parameters trained by the method's own optimizer (e.g. APB's α, δ); the rest go to the main one."""
        return []

    def on_epoch_start(self, epoch: int, w: np.ndarray) -> None:
        """Schedule hook (freezing), called by the trainer at the start of every epoch."""

    def count(self, w: np.ndarray) -> WeightCount:
        return WeightCount(binary=0, full=int(w.size), sparse=False)

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        """Scalars for the per-epoch metrics log."""
        return {}


class ActivationQuantizer(nn.Module):
    """Base: full-precision activations."""

    bits = 32

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
