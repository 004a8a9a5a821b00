"""apb-ref: a readable NumPy reference of Automatic Prune Binarization (APB) and its neighbours,
with a Rust extension (`apb_ref._kernels`) for the bit-packed kernels.

The package works with NumPy alone; `apb_ref.kernels.backend` picks the Rust kernels when built.
"""
__version__ = "0.1.0"

from . import functional, nn, optim  # noqa: E402,F401
from .autograd import Function, Tensor, no_grad  # noqa: E402,F401

__all__ = ["Tensor", "Function", "no_grad", "functional", "nn", "optim", "__version__"]
