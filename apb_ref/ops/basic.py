"""Primitive differentiable ops. Each `Function` keeps its forward and backward together; the
lower-case functions below each class are the public API (`from apb_ref import ops as F`).

Convolution and pooling are in `conv.py`; normalisation and losses in `norm_loss.py`. Every op has a
spec in `apb_ref/testing/specs.py` that gives it a forward and a gradient test.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..autograd import Context, Function, Tensor, unbroadcast
from . import accel


def _check_tensor(name: str, x: Any) -> None:
    if not isinstance(x, (Tensor, np.ndarray)):
        raise TypeError(f"{name}: expected a Tensor or ndarray, got {type(x).__name__}")


# --- elementwise arithmetic (broadcasting; gradients summed back by `unbroadcast`) ----------------
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(np.shape(a), np.shape(b))
        return a + b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.saved
        return unbroadcast(g, sa), unbroadcast(g, sb)


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(np.shape(a), np.shape(b))
        return a - b

    @staticmethod
    def backward(ctx, g):
        sa, sb = ctx.saved
        return unbroadcast(g, sa), unbroadcast(-g, sb)


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        ga = unbroadcast(g * b, np.shape(a)) if ctx.needs_grad[0] else None
        gb = unbroadcast(g * a, np.shape(b)) if ctx.needs_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        ga = unbroadcast(g / b, np.shape(a)) if ctx.needs_grad[0] else None
        gb = unbroadcast(-g * a / (b * b), np.shape(b)) if ctx.needs_grad[1] else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, g):
        return -g


class Pow(Function):
    """a ** p for a constant exponent p."""

    @staticmethod
    def forward(ctx, a, p):
        ctx.save_for_backward(a, p)
        return a ** p

    @staticmethod
    def backward(ctx, g):
        a, p = ctx.saved
        return g * p * a ** (p - 1)


class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        y = np.exp(a)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        return g * y


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return np.log(a)

    @staticmethod
    def backward(ctx, g):
        (a,) = ctx.saved
        return g / a


def add(a, b): return Add.apply(a, b)
def sub(a, b): return Sub.apply(a, b)
def mul(a, b): return Mul.apply(a, b)
def div(a, b): return Div.apply(a, b)
def neg(a): return Neg.apply(a)
def exp(a): return Exp.apply(a)
def log(a): return Log.apply(a)


def pow(a, p: float) -> Tensor:  # noqa: A001 - mirrors the operator name
    if isinstance(p, Tensor) or np.ndim(p) != 0:
        raise TypeError("pow: the exponent must be a Python or NumPy scalar")
    return Pow.apply(a, float(p))


# --- reductions --------------------------------------------------------------------------------
def _normalize_axis(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(ax % ndim for ax in axes))


def _expand_reduced(g: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...], keepdims: bool) -> np.ndarray:
    """Reshape a reduced gradient so it broadcasts against the input again."""
    if not keepdims:
        g = np.expand_dims(g, axes)
    return np.broadcast_to(g, shape)


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axes, keepdims):
        ctx.save_for_backward(a.shape, axes, keepdims)
        return np.sum(a, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        shape, axes, keepdims = ctx.saved
        return np.ascontiguousarray(_expand_reduced(g, shape, axes, keepdims))


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axes, keepdims):
        ctx.save_for_backward(a.shape, axes, keepdims)
        return np.mean(a, axis=axes, keepdims=keepdims)

    @staticmethod
    def backward(ctx, g):
        shape, axes, keepdims = ctx.saved
        count = int(np.prod([shape[ax] for ax in axes]))
        return np.ascontiguousarray(_expand_reduced(g / count, shape, axes, keepdims))


class Max(Function):
    """Ties share the gradient equally (so the op stays the average of its subgradients)."""

    @staticmethod
    def forward(ctx, a, axes, keepdims):
        y = np.max(a, axis=axes, keepdims=True)
        ctx.save_for_backward(a, y, axes, keepdims)
        return y if keepdims else np.squeeze(y, axis=axes)

    @staticmethod
    def backward(ctx, g):
        a, y, axes, keepdims = ctx.saved
        winners = a == y
        share = winners / winners.sum(axis=axes, keepdims=True)
        if not keepdims:
            g = np.expand_dims(g, axes)
        return (share * g).astype(a.dtype, copy=False)


def sum(a, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return Sum.apply(a, _normalize_axis(axis, np.ndim(a.data if isinstance(a, Tensor) else a)), keepdims)


def mean(a, axis=None, keepdims: bool = False) -> Tensor:
    return Mean.apply(a, _normalize_axis(axis, np.ndim(a.data if isinstance(a, Tensor) else a)), keepdims)


def max(a, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return Max.apply(a, _normalize_axis(axis, np.ndim(a.data if isinstance(a, Tensor) else a)), keepdims)


# --- shape ops ---------------------------------------------------------------------------------
class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.save_for_backward(a.shape)
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, g):
        (shape,) = ctx.saved
        return g.reshape(shape)


class Transpose(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.save_for_backward(axes)
        return np.transpose(a, axes)

    @staticmethod
    def backward(ctx, g):
        (axes,) = ctx.saved
        inverse = None if axes is None else tuple(np.argsort(axes))
        return np.transpose(g, inverse)


class Pad(Function):
    """Constant padding; `pad_width` as in np.pad: one (before, after) pair per axis."""

    @staticmethod
    def forward(ctx, a, pad_width, value):
        ctx.save_for_backward(pad_width)
        return np.pad(a, pad_width, constant_values=value)

    @staticmethod
    def backward(ctx, g):
        (pad_width,) = ctx.saved
        return g[tuple(slice(lo, g.shape[i] - hi) for i, (lo, hi) in enumerate(pad_width))]


class GetItem(Function):
    """Basic and advanced indexing; repeated advanced indices accumulate (np.add.at)."""

    @staticmethod
    def forward(ctx, a, index):
        ctx.save_for_backward(a.shape, a.dtype, index)
        return a[index]

    @staticmethod
    def backward(ctx, g):
        shape, dtype, index = ctx.saved
        grad = np.zeros(shape, dtype=dtype)
        parts = index if isinstance(index, tuple) else (index,)
        if all(p is None or p is Ellipsis or isinstance(p, (slice, int, np.integer)) for p in parts):
            grad[index] = g  # basic indexing picks each element at most once: no accumulation needed
        else:
            np.add.at(grad, index, g)
        return grad


def reshape(a, shape) -> Tensor:
    return Reshape.apply(a, tuple(int(s) for s in shape))


def transpose(a, axes=None) -> Tensor:
    return Transpose.apply(a, None if axes is None else tuple(int(x) for x in axes))


def flatten(a, start_dim: int = 1) -> Tensor:
    shape = a.shape
    return reshape(a, tuple(shape[:start_dim]) + (-1,))


def pad(a, pad_width, value: float = 0.0) -> Tensor:
    ndim = a.ndim
    pad_width = tuple((int(lo), int(hi)) for lo, hi in pad_width)
    if len(pad_width) != ndim or any(lo < 0 or hi < 0 for lo, hi in pad_width):
        raise ValueError(f"pad: pad_width needs {ndim} non-negative (before, after) pairs, got {pad_width}")
    return Pad.apply(a, pad_width, value)


def getitem(a, index) -> Tensor:
    if isinstance(index, Tensor):
        index = index.data
    return GetItem.apply(a, index)


# --- matmul ------------------------------------------------------------------------------------
class MatMul(Function):
    """a @ b for 2-D or batched (broadcast) operands."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a @ b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved
        ga = unbroadcast(g @ np.swapaxes(b, -1, -2), a.shape) if ctx.needs_grad[0] else None
        gb = unbroadcast(np.swapaxes(a, -1, -2) @ g, b.shape) if ctx.needs_grad[1] else None
        return ga, gb


def matmul(a, b) -> Tensor:
    _check_tensor("matmul: a", a)
    _check_tensor("matmul: b", b)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not fit (need ndim >= 2 and a.shape[-1] == b.shape[-2])")
    return MatMul.apply(a, b)


# --- activations -------------------------------------------------------------------------------
class ReLU(Function):
    @staticmethod
    def forward(ctx, a):
        fast = accel.kernel("relu_forward", a)
        y = fast(a) if fast is not None else np.maximum(a, 0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        fast = accel.kernel("relu_backward", g, y)
        return fast(g, y) if fast is not None else g * (y > 0)


class Hardtanh(Function):
    """clip(a, lo, hi); gradient 1 strictly inside the range."""

    @staticmethod
    def forward(ctx, a, lo, hi):
        fast = accel.kernel("hardtanh_forward", a)
        y = fast(a, lo, hi) if fast is not None else np.clip(a, lo, hi)
        # lo < a < hi exactly where lo < y < hi: the mask waits for backward (inference never needs it)
        ctx.save_for_backward(y)
        ctx.lo, ctx.hi = lo, hi
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved
        fast = accel.kernel("hardtanh_backward", g, y)
        return fast(g, y, ctx.lo, ctx.hi) if fast is not None else g * ((y > ctx.lo) & (y < ctx.hi))


def relu(a) -> Tensor:
    return ReLU.apply(a)


def hardtanh(a, min_val: float = -1.0, max_val: float = 1.0) -> Tensor:
    if not min_val < max_val:
        raise ValueError(f"hardtanh: need min_val < max_val, got {min_val} and {max_val}")
    return Hardtanh.apply(a, min_val, max_val)


def dropout(a, p: float, training: bool, rng: np.random.Generator) -> Tensor:
    """Inverted dropout: zero with probability p, scale the rest by 1/(1-p). Built from `mul`."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return a
    keep = (rng.random(a.shape) >= p).astype(a.dtype) / np.asarray(1.0 - p, dtype=a.dtype)
    return mul(a, keep)
