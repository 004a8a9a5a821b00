"""How an op is tested: `OpSpec`, declared next to the op (core ops in apb_ref.testing.specs, each
method's and activation quantizer's ops in their own file) and collected by apb_ref.testing.

Nothing here imports hypothesis until an input is drawn: the package runs without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..autograd import Function, Tensor


@dataclass
class OpSpec:
    """How to test one op.

    draw_inputs(draw) -> (arrays, options): float64 arrays for the differentiable inputs, plus
        keyword options; `draw` is hypothesis' draw function (use it for shapes and a data seed).
    call(*tensors, **options) -> Tensor: the op under test.
    reference(*arrays, **options) -> ndarray: an independent plain-NumPy forward (optional).
    covers: the Function classes this spec exercises.
    differentiable: inputs checked by finite differences (default: all).
    surrogate(arrays, g, **options) -> {input index: expected gradient}: for straight-through
        estimators, whose gradient is by design not the derivative of the forward pass; the test
        checks the op's backward against this declared formula instead.
    """

    name: str
    draw_inputs: Callable[[Callable], tuple[list[np.ndarray], dict[str, Any]]]
    call: Callable[..., Tensor]
    covers: tuple[type[Function], ...]
    reference: Callable[..., np.ndarray] | None = None
    differentiable: tuple[int, ...] | None = None
    surrogate: Callable[..., dict[int, np.ndarray]] | None = None
    options: dict[str, Any] = field(default_factory=dict)


def random_array(draw: Callable, shape: tuple[int, ...], low: float | None = None, high: float | None = None) -> np.ndarray:
    """float64 data for `shape` from a hypothesis-drawn seed: normal, or uniform on [low, high)."""
    from hypothesis import strategies as st  # a test-time dependency, needed only while drawing
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if low is None:
        return rng.standard_normal(shape)
    return rng.uniform(low, high, size=shape)


def draw_int(draw: Callable, low: int, high: int) -> int:
    from hypothesis import strategies as st
    return draw(st.integers(low, high))


def draw_from(draw: Callable, values) -> Any:
    from hypothesis import strategies as st
    return draw(st.sampled_from(list(values)))


def draw_float(draw: Callable, low: float, high: float) -> float:
    from hypothesis import strategies as st
    return draw(st.floats(low, high))
