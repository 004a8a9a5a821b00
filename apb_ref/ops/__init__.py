"""The op library: every differentiable operation as a `Function` (forward and backward side by side)
and its lower-case function, the public API (`from apb_ref import ops as F`).

  basic      elementwise arithmetic, reductions, shapes, matmul, activations
  conv       conv2d (im2col and row-shift lowering), pooling
  norm_loss  batch norm, log-softmax, cross-entropy
  lowering   padding, windows, im2col, the sign convention (shared with the kernel oracles)

Importing this package also gives `Tensor` its operator sugar (a + b, x.sum(), x.reshape(...)).
"""
from __future__ import annotations

import numpy as np

from ..autograd import Tensor
from .basic import (  # noqa: F401
    Add, Div, Exp, GetItem, Hardtanh, Log, MatMul, Max, Mean, Mul, Neg, Pad, Pow, ReLU, Reshape, Sub, Sum,
    Transpose, add, div, dropout, exp, flatten, getitem, hardtanh, log, matmul, max, mean, mul, neg, pad, pow,
    relu, reshape, sub, sum, transpose,
)
from .conv import (  # noqa: F401
    AvgPool2d, Conv2dIm2col, Conv2dRowShift, MaxPool2d, avg_pool2d, conv2d, global_avg_pool2d, max_pool2d,
)
from .norm_loss import (  # noqa: F401
    BatchNormAct, BatchNormEval, BatchNormTrain, CrossEntropy, Distillation, LogSoftmax, batch_norm, batch_norm_act,
    cross_entropy, distillation, fuses_batch_norm, log_softmax,
)


def _axes(args: tuple):
    """x.reshape(2, 3) and x.reshape((2, 3)) alike."""
    return args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args


def _operand(t: Tensor, o):
    return o if isinstance(o, Tensor) else np.asarray(o, dtype=t.dtype)


def _sugar() -> None:
    """Tensor's operators and methods, each one call of the op it names."""
    methods = {
        "__add__": lambda a, b: add(a, _operand(a, b)), "__radd__": lambda a, b: add(_operand(a, b), a),
        "__sub__": lambda a, b: sub(a, _operand(a, b)), "__rsub__": lambda a, b: sub(_operand(a, b), a),
        "__mul__": lambda a, b: mul(a, _operand(a, b)), "__rmul__": lambda a, b: mul(_operand(a, b), a),
        "__truediv__": lambda a, b: div(a, _operand(a, b)), "__rtruediv__": lambda a, b: div(_operand(a, b), a),
        "__neg__": neg, "__pow__": pow, "__matmul__": matmul, "__getitem__": getitem,
        "sum": lambda a, axis=None, keepdims=False: sum(a, axis, keepdims),
        "mean": lambda a, axis=None, keepdims=False: mean(a, axis, keepdims),
        "max": lambda a, axis=None, keepdims=False: max(a, axis, keepdims),
        "exp": exp, "log": log, "relu": relu, "flatten": flatten,
        "reshape": lambda a, *shape: reshape(a, _axes(shape)),
        "transpose": lambda a, *axes: transpose(a, _axes(axes) or None),
    }
    for name, fn in methods.items():
        setattr(Tensor, name, fn)


_sugar()
