"""The op registry: an `OpSpec` per op (how to draw inputs, the call, a plain-NumPy reference, which
`Function` classes it covers), loaded explicitly: the core ops' specs below, then the activation
quantizers' and every registered method's, declared next to their ops (`OP_SPECS` in each file).
`tests/ops/test_ops.py` runs a forward test and a gradient test for every spec, and fails if some
`Function` subclass is covered by no spec, so a new op cannot slip in untested.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from .. import ops as F
from ..autograd import Function
from ..ops import (AvgPool2d, BatchNormAct, BatchNormEval, BatchNormTrain, Conv2dIm2col, Conv2dRowShift, CrossEntropy, Distillation,
                   LogSoftmax, MaxPool2d)
from ..ops.spec import OpSpec, random_array
from ..quant import METHODS, activations

OPS: dict[str, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    if spec.name in OPS:
        raise ValueError(f"register: an op spec named {spec.name!r} already exists")
    OPS[spec.name] = spec
    return spec


def all_function_classes() -> set[type[Function]]:
    found, stack = set(), [Function]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                stack.append(sub)
    return found


def uncovered_functions() -> list[str]:
    covered = {cls for spec in OPS.values() for cls in spec.covers}
    ours = {c for c in all_function_classes() if c.__module__.startswith("apb_ref")}
    return sorted(f"{c.__module__}.{c.__qualname__}" for c in ours - covered)


def _shape(draw: Callable, ndim: int, low: int = 1, high: int = 4) -> tuple[int, ...]:
    from hypothesis import strategies as st
    return tuple(draw(st.integers(low, high)) for _ in range(ndim))


def _broadcast_pair(draw: Callable) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Two shapes that broadcast: b drops leading axes and/or has size-1 axes."""
    from hypothesis import strategies as st
    a = _shape(draw, draw(st.integers(1, 3)))
    b = list(a[draw(st.integers(0, len(a) - 1)):])
    b = tuple(1 if draw(st.booleans()) else n for n in b)
    return (a, b) if draw(st.booleans()) else (b, a)


def _binary(name: str, cls: type[Function], fn: Callable, ref: Callable, positive_b: bool = False) -> OpSpec:
    def draw_inputs(draw):
        sa, sb = _broadcast_pair(draw)
        b = random_array(draw, sb, 0.5, 2.0) if positive_b else random_array(draw, sb)
        return [random_array(draw, sa), b], {}
    return OpSpec(name, draw_inputs, fn, (cls,), ref)


def _unary(name: str, cls: type[Function], fn: Callable, ref: Callable, low=None, high=None) -> OpSpec:
    def draw_inputs(draw):
        return [random_array(draw, _shape(draw, 2), low, high)], {}
    return OpSpec(name, draw_inputs, fn, (cls,), ref)


def _reduction(name: str, cls: type[Function], fn: Callable, ref: Callable) -> OpSpec:
    def draw_inputs(draw):
        from hypothesis import strategies as st
        shape = _shape(draw, 3)
        axis = draw(st.sampled_from([None, 0, 1, 2, (0, 2), (1, 2), -1]))
        return [random_array(draw, shape)], {"axis": axis, "keepdims": draw(st.booleans())}
    return OpSpec(name, draw_inputs, fn, (cls,), ref)


def _conv_inputs(draw, stride_choices=(1, 2)):
    from hypothesis import strategies as st
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = draw(st.sampled_from([1, 2, 3]))
    stride = draw(st.sampled_from(stride_choices))
    padding = draw(st.integers(0, k - 1))
    h, w = draw(st.integers(k, 6)), draw(st.integers(k, 6))
    x, wt = random_array(draw, (n, c, h, w)), random_array(draw, (o, c, k, k))
    return x, wt, stride, padding


def conv2d_reference(x: np.ndarray, w: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """The definition, one output pixel at a time (slow, obviously right)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    y = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3]))
    return y


def _pool_reference(x: np.ndarray, k: int, stride: int, reduce: Callable) -> np.ndarray:
    n, c, h, w = x.shape
    ho, wo = (h - k) // stride + 1, (w - k) // stride + 1
    y = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            y[:, :, i, j] = reduce(x[:, :, i * stride:i * stride + k, j * stride:j * stride + k], axis=(2, 3))
    return y


def _bn_reference(x, gamma, beta, training):
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        mu, var = x.mean(axis=axes), x.var(axis=axes)
    else:  # the running statistics these tests use
        mu, var = np.full(x.shape[1], 0.1), np.full(x.shape[1], 1.5)
    return (x - mu.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5) * gamma.reshape(shape) + beta.reshape(shape)


def _register_core_ops() -> None:
    from hypothesis import strategies as st

    register(_binary("add", F.Add, F.add, np.add))
    register(_binary("sub", F.Sub, F.sub, np.subtract))
    register(_binary("mul", F.Mul, F.mul, np.multiply))
    register(_binary("div", F.Div, F.div, np.divide, positive_b=True))
    register(_unary("neg", F.Neg, F.neg, np.negative))
    register(_unary("exp", F.Exp, F.exp, np.exp))
    register(_unary("log", F.Log, F.log, np.log, 0.5, 3.0))
    register(_unary("relu", F.ReLU, F.relu, lambda x: np.maximum(x, 0)))
    register(_unary("hardtanh", F.Hardtanh, F.hardtanh, lambda x: np.clip(x, -1, 1)))
    register(OpSpec("pow", lambda d: ([random_array(d, _shape(d, 2), 0.5, 2.0)], {"p": d(st.sampled_from([2.0, 3.0, 0.5, -1.5]))}),
                    lambda x, p: F.pow(x, p), (F.Pow,), lambda x, p: x ** p))
    register(_reduction("sum", F.Sum, lambda x, axis, keepdims: F.sum(x, axis, keepdims), lambda x, axis, keepdims: np.sum(x, axis, keepdims=keepdims)))
    register(_reduction("mean", F.Mean, lambda x, axis, keepdims: F.mean(x, axis, keepdims), lambda x, axis, keepdims: np.mean(x, axis, keepdims=keepdims)))
    register(_reduction("max", F.Max, lambda x, axis, keepdims: F.max(x, axis, keepdims), lambda x, axis, keepdims: np.max(x, axis, keepdims=keepdims)))

    def reshape_inputs(d):
        shape = _shape(d, 3)
        return [random_array(d, shape)], {"shape": (shape[0] * shape[1], shape[2])}
    register(OpSpec("reshape", reshape_inputs, lambda x, shape: F.reshape(x, shape), (F.Reshape,), lambda x, shape: x.reshape(shape)))

    def transpose_inputs(d):
        return [random_array(d, _shape(d, 3))], {"axes": d(st.permutations([0, 1, 2]))}
    register(OpSpec("transpose", transpose_inputs, lambda x, axes: F.transpose(x, axes), (F.Transpose,), lambda x, axes: np.transpose(x, axes)))

    def pad_inputs(d):
        shape = _shape(d, 3)
        return [random_array(d, shape)], {"pad_width": tuple((d(st.integers(0, 2)), d(st.integers(0, 2))) for _ in shape)}
    register(OpSpec("pad", pad_inputs, lambda x, pad_width: F.pad(x, pad_width), (F.Pad,), lambda x, pad_width: np.pad(x, pad_width)))

    def getitem_inputs(d):
        shape = _shape(d, 3, 2, 5)
        index = d(st.sampled_from([(slice(None), slice(None, None, 2)), (0,), (slice(1, None), Ellipsis, slice(None, 1)),
                                    (np.array([0, 1, 0]),)]))
        return [random_array(d, shape)], {"index": index}
    register(OpSpec("getitem", getitem_inputs, lambda x, index: x[index], (F.GetItem,), lambda x, index: x[index]))

    def matmul_inputs(d):
        m, k, n = _shape(d, 3)
        batch = d(st.sampled_from([(), (2,), (2, 1)]))
        b_batch = batch[-1:] if batch and d(st.booleans()) else ()
        return [random_array(d, batch + (m, k)), random_array(d, b_batch + (k, n))], {}
    register(OpSpec("matmul", matmul_inputs, F.matmul, (F.MatMul,), np.matmul))

    def conv_inputs(d):
        x, w, stride, padding = _conv_inputs(d)
        return [x, w], {"stride": stride, "padding": padding}
    register(OpSpec("conv2d_im2col", conv_inputs, lambda x, w, stride, padding: F.conv2d(x, w, None, stride, padding, "im2col"),
                    (Conv2dIm2col,), conv2d_reference))

    def rowshift_inputs(d):
        x, w, _, padding = _conv_inputs(d, (1,))
        return [x, w], {"padding": padding}
    register(OpSpec("conv2d_rowshift", rowshift_inputs, lambda x, w, padding: F.conv2d(x, w, None, 1, padding, "rowshift"),
                    (Conv2dRowShift,), lambda x, w, padding: conv2d_reference(x, w, 1, padding)))

    def pool_inputs(d):
        k = d(st.sampled_from([1, 2, 3]))
        shape = (d(st.integers(1, 2)), d(st.integers(1, 3)), d(st.integers(k, 6)), d(st.integers(k, 6)))
        return [random_array(d, shape)], {"k": k, "stride": d(st.integers(1, 3))}
    register(OpSpec("max_pool2d", pool_inputs, lambda x, k, stride: F.max_pool2d(x, k, stride), (MaxPool2d,),
                    lambda x, k, stride: _pool_reference(x, k, stride, np.max)))
    register(OpSpec("avg_pool2d", pool_inputs, lambda x, k, stride: F.avg_pool2d(x, k, stride), (AvgPool2d,),
                    lambda x, k, stride: _pool_reference(x, k, stride, np.mean)))

    def bn_inputs(d):
        c = d(st.integers(1, 3))
        shape = d(st.sampled_from([(d(st.integers(2, 4)), c), (d(st.integers(1, 3)), c, 2, d(st.integers(1, 3)))]))
        return [random_array(d, shape), random_array(d, (c,)), random_array(d, (c,))], {}

    def bn_call(training):
        def call(x, gamma, beta):
            c = x.shape[1]
            return F.batch_norm(x, gamma, beta, np.full(c, 0.1), np.full(c, 1.5), training)
        return call
    register(OpSpec("batch_norm_train", bn_inputs, bn_call(True), (BatchNormTrain,), lambda x, g, b: _bn_reference(x, g, b, True)))
    register(OpSpec("batch_norm_eval", bn_inputs, bn_call(False), (BatchNormEval,), lambda x, g, b: _bn_reference(x, g, b, False)))

    def bn_act_inputs(d):
        arrays, _ = bn_inputs(d)
        act = d(st.sampled_from(["relu", "hardtanh"]))
        if d(st.booleans()):
            arrays.append(random_array(d, arrays[0].shape))
        return arrays, {"act": act}

    def bn_act_call(x, gamma, beta, residual=None, act="relu"):
        c = x.shape[1]
        return F.batch_norm_act(x, gamma, beta, np.full(c, 0.1), np.full(c, 1.5), residual=residual, act=act,
                                lo=-0.5, hi=0.75)

    def bn_act_reference(x, gamma, beta, residual=None, act="relu"):
        y = _bn_reference(x, gamma, beta, True) + (0 if residual is None else residual)
        return np.maximum(y, 0) if act == "relu" else np.clip(y, -0.5, 0.75)
    register(OpSpec("batch_norm_act", bn_act_inputs, bn_act_call, (BatchNormAct,), bn_act_reference))

    def log_softmax_ref(x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return np.log(e / e.sum(axis=-1, keepdims=True))
    register(_unary("log_softmax", LogSoftmax, F.log_softmax, log_softmax_ref))

    def ce_inputs(d):
        n, k = d(st.integers(1, 4)), d(st.integers(2, 5))
        target = np.random.default_rng(d(st.integers(0, 99))).integers(0, k, n)
        return [random_array(d, (n, k))], {"target": target, "label_smoothing": d(st.sampled_from([0.0, 0.1]))}

    def ce_ref(x, target, label_smoothing):
        logp = log_softmax_ref(x)
        k = x.shape[1]
        t = np.full(x.shape, label_smoothing / k)
        t[np.arange(len(target)), target] += 1 - label_smoothing
        return -(t * logp).sum() / len(target)
    register(OpSpec("cross_entropy", ce_inputs, lambda x, target, label_smoothing: F.cross_entropy(x, target, label_smoothing),
                    (CrossEntropy,), ce_ref))

    def kd_inputs(d):
        n, k = d(st.integers(1, 4)), d(st.integers(2, 5))
        return [random_array(d, (n, k))], {"teacher": 3 * random_array(d, (n, k)),
                                           "temperature": d(st.sampled_from([0.5, 1.0, 4.0]))}

    def kd_ref(x, teacher, temperature):
        q = np.exp(log_softmax_ref(teacher / temperature))
        return -(temperature ** 2) * (q * log_softmax_ref(x / temperature)).sum() / len(x)
    register(OpSpec("distillation", kd_inputs, lambda x, teacher, temperature: F.distillation(x, teacher, temperature),
                    (Distillation,), kd_ref))


_register_core_ops()
for _spec in (*activations.OP_SPECS, *(spec for m in METHODS.values() for spec in m.op_specs)):
    register(_spec)
