"""Where a lower layer plugs fast twins of the ops' array work in: the training backend.

An op whose NumPy code has a fast twin asks `kernel(name, *arrays)` first and runs the NumPy code
beside it when the answer is None. The answer comes from one provider, installed by the backend seam
(`apb_ref.kernels.backend`, which owns the Rust extension) when it is imported: it returns the Rust
kernel while the backend is "rust" (`set_backend`, `APB_BACKEND`), else None. Without a provider (the
ops used on their own) everything runs in NumPy.

Fast twins work on float32 only: the finite-difference gradient checks run the ops in float64, so
they always check the NumPy code, and the Rust kernels are tested against it in float32.

Twins a provider may return: `conv2d_forward(x, w, stride, padding)`,
`conv2d_backward_input(g, w, h, w_width, stride, padding)`, `conv2d_backward_weight(x, g, kh, kw,
stride, padding)` and `conv2d_backward(x, g, w, stride, padding)` -> (gx, gw), the two at once, bit for
bit the same (see `Conv2dIm2col`); `batch_norm_forward(x, gamma, beta, eps, residual=None, act="identity",
lo, hi)` -> (y, mean, var, inv_std) and `batch_norm_backward(g, x, gamma, mean, inv_std, input_grad,
y=None, act="identity", lo, hi)` -> (dx or None, Σg, Σg·x̂, g through the activation or None) (see
`BatchNormTrain` and `BatchNormAct`, which fuses the residual add and the activation); `batch_norm_eval(x, mean, scale, beta)` (see `BatchNormEval`); `relu_forward(x)`, `relu_backward(g, y)`, `hardtanh_forward(x, lo, hi)`,
`hardtanh_backward(g, y, lo, hi)` (see `ReLU`, `Hardtanh`) and `sign_forward(x)` (the 1-bit activations' sign, `SignSTE`), bit for bit
the NumPy results. The quantizers: `dorefa_forward(x, levels)` and `dorefa_backward(g, x)` (see
`DoReFaQuantize`), bit for bit; `apb_forward(w, alpha, delta, margin, frozen_mask)` -> (q, mask), bit for
bit, and `apb_backward(g, w, mask, alpha)` -> (Σgs, Σgs·(α − |w|)), the sums behind the α and δ
gradients in f64 (see `APBQuantize`). Pooling: `max_pool_forward(x, k, stride, padding)` -> (y, winner),
`max_pool_backward(g, winner, h, w, k, stride, padding)`, `avg_pool_backward(g, h, w, k, stride, padding)`,
bit for bit, and `avg_pool_forward(x, k, stride, padding)`, within float32 rounding of the window sums
(see `MaxPool2d`, `AvgPool2d`). Cross-entropy: `cross_entropy_forward(logits, target, off, on)` -> (Σt·logp,
logp) and `cross_entropy_backward(g, logp, target, off, on)` (see `CrossEntropy`), within a few ulps of
NumPy's (libm's exp and log, not NumPy's SIMD ones; the row sums in f64).

The optimizer steps (`apb_ref.nn.optim`) ask too: `sgd_step(p, g, buf, first, lr=, momentum=, dampening=,
weight_decay=, nesterov=)` and `adam_step(p, m, v, g, beta1=, one_minus_beta1=, beta2=, one_minus_beta2=,
bias2_sqrt=, eps=, step_size=, l2=, decay=)` update p and the state in place, bit for bit as `SGD.step` and
`Adam.step`; the optimizer takes them only when the arrays written are C-contiguous and writeable.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

Provider = Callable[[str], "Callable | None"]
_provider: Provider | None = None


def set_provider(provider: Provider | None) -> None:
    """Install the function that maps a twin's name to its fast kernel (or None)."""
    global _provider
    _provider = provider


def kernel(name: str, *arrays: np.ndarray) -> Callable | None:
    """The fast twin of `name` when a provider offers one and every array is a non-empty float32
    ndarray (not a NumPy scalar; an empty batch stays in NumPy, which handles it), else None."""
    if _provider is None or any(not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.size == 0 for a in arrays):
        return None
    return _provider(name)
