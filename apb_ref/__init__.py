"""apb-ref: a readable NumPy reference of Automatic Prune Binarization (APB) and its neighbours,
with a Rust extension (`apb_ref._kernels`) for the bit-packed kernels.

The package reads bottom-up, each layer importing only those below it (tests/test_layers.py checks):

  autograd   Tensor, Function, the backward walk
  ops        the op library (Tensor's operator sugar is registered here)
  nn         modules and optimizers
  kernels    bit conventions, NumPy oracles, contracts, the backend seam to Rust
  quant      the method seam: quantizers (one file per method), registry, layers, budget
  models     resnet20, vgg_small, digits_cnn (they ask a LayerFactory, never name a method)
  data       datasets, augmentation, batching
  training   config, loop, checkpoints, summary, progress, plots
  packed     the .apbz format, export, packed layers, the packed network
  testing    gradient checks and the op registry
  sweep      the trade-off study (methods x budgets x seeds)
  cli, bench the command line

The package works with NumPy alone; `apb_ref.kernels.backend` picks the Rust kernels when built.
"""
__version__ = "0.1.0"

from . import nn, ops  # noqa: E402,F401
from .autograd import Function, Tensor, no_grad  # noqa: E402,F401

__all__ = ["Tensor", "Function", "no_grad", "ops", "nn", "__version__"]
