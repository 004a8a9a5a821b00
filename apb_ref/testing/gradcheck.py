"""Gradient checking as library code: `grad_check(fn, *inputs)` compares the autograd gradient of `fn`
with central finite differences in float64; `surrogate_check` compares a straight-through estimator's
backward with its declared formula."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..autograd import Tensor, no_grad
from ..ops.spec import OpSpec


class GradientCheckError(AssertionError):
    pass


def numerical_gradient(fn: Callable[..., Tensor], inputs: list[np.ndarray], weights: np.ndarray,
                       index: int, eps: float) -> np.ndarray:
    """d/dx_index of Σ weights·fn(inputs), by central differences (inputs are perturbed in place)."""
    x = inputs[index]
    grad = np.zeros_like(x)
    with no_grad():
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + eps
            plus = float((fn(*[Tensor(v) for v in inputs]).data * weights).sum())
            x[i] = old - eps
            minus = float((fn(*[Tensor(v) for v in inputs]).data * weights).sum())
            x[i] = old
            grad[i] = (plus - minus) / (2 * eps)
    return grad


def grad_check(fn: Callable[..., Tensor], *inputs: np.ndarray, differentiable: tuple[int, ...] | None = None,
               eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-4, seed: int = 0) -> float:
    """Check autograd against finite differences for a random projection of fn's output.

    Inputs are float64 arrays; `differentiable` selects which of them to check (default: all).
    Returns the largest absolute error; raises GradientCheckError naming the input and element.
    """
    arrays = [np.array(x, dtype=np.float64) for x in inputs]
    which = tuple(range(len(arrays))) if differentiable is None else differentiable
    tensors = [Tensor(a.copy(), requires_grad=i in which) for i, a in enumerate(arrays)]
    out = fn(*tensors)
    if out.dtype != np.float64:
        raise GradientCheckError(f"grad_check: the op returned {out.dtype} for float64 inputs")
    weights = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(weights)
    worst = 0.0
    for i in which:
        analytic = tensors[i].grad if tensors[i].grad is not None else np.zeros_like(arrays[i])
        numeric = numerical_gradient(fn, arrays, weights, i, eps)
        error = np.abs(analytic - numeric)
        bad = error > atol + rtol * np.abs(numeric)
        if bad.any():
            at = tuple(int(k) for k in np.argwhere(bad)[0])
            raise GradientCheckError(f"gradient of input {i} (shape {arrays[i].shape}) is wrong at {at}: "
                                     f"autograd {analytic[at]:.8g}, finite differences {numeric[at]:.8g}")
        worst = max(worst, float(error.max(initial=0.0)))
    return worst


def surrogate_check(spec: OpSpec, arrays: list[np.ndarray], options: dict[str, Any], seed: int = 0) -> None:
    """Compare the op's backward with its declared surrogate gradient for a random upstream g."""
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = spec.call(*tensors, **options)
    g = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(g)
    for i, expected in spec.surrogate(arrays, g, **options).items():
        got = tensors[i].grad if tensors[i].grad is not None else np.zeros_like(arrays[i])
        if not np.allclose(got, expected, rtol=1e-9, atol=1e-12):
            raise GradientCheckError(f"{spec.name}: gradient of input {i} differs from its surrogate formula "
                                     f"(max difference {np.abs(got - expected).max():.3g})")
