"""Activation quantizers (METHODS §1.6): full precision, 1-bit sign, 2-bit DoReFa.

    sign:    y = sign(x) ∈ {−1, +1}, sign(0) = +1;  ∂y/∂x = 1 ("identity" STE, APB's binary-id),
             1[|x| ≤ 1] ("clipped" STE, BinaryConnect/BNN style) or max(0, 2 − 2|x|) ("approx":
             Bi-Real Net's ApproxSign, the derivative of a piecewise quadratic that fits sign better)
    dorefa2: y = round(3·clamp(x, 0, 1))/3 ∈ {0, ⅓, ⅔, 1};  ∂y/∂x = 1[0 ≤ x ≤ 1]
"""
from __future__ import annotations

import numpy as np

from ..autograd import Function, Tensor
from ..ops import accel
from ..ops.lowering import sign_pm1
from ..ops.spec import OpSpec, draw_int, random_array
from .base import ActivationQuantizer


STES = ("identity", "clipped", "approx")


def ste_gradient(x: np.ndarray, ste: str) -> np.ndarray | None:
    """∂sign(x)/∂x as the straight-through estimator `ste` declares it (None: the identity, 1)."""
    if ste == "clipped":
        return (np.abs(x) <= 1).astype(x.dtype)
    if ste == "approx":
        return np.maximum(0, 2 - 2 * np.abs(x)).astype(x.dtype)
    return None


class SignSTE(Function):
    @staticmethod
    def forward(ctx, x, ste):
        ctx.save_for_backward(ste_gradient(x, ste))
        fast = accel.kernel("sign_forward", x)
        return fast(x) if fast is not None else sign_pm1(x)

    @staticmethod
    def backward(ctx, g):
        (slope,) = ctx.saved
        return g if slope is None else g * slope


class DoReFaQuantize(Function):
    # the Rust twins take Python int level counts whose levels − 1 is exact in float32 (a NumPy integer
    # would make NumPy compute in float64)
    MAX_FAST_LEVELS = 2 ** 24 + 1

    @staticmethod
    def forward(ctx, x, levels):
        fast = accel.kernel("dorefa_forward", x)
        if fast is not None and type(levels) is int and 2 <= levels <= DoReFaQuantize.MAX_FAST_LEVELS:
            ctx.save_for_backward(None, x)  # the mask waits for backward (inference never needs it)
            return fast(x, levels)
        clamped = np.clip(x, 0.0, 1.0)
        ctx.save_for_backward((x >= 0) & (x <= 1), None)
        return (np.round(clamped * (levels - 1)) / (levels - 1)).astype(x.dtype)

    @staticmethod
    def backward(ctx, g):
        inside, x = ctx.saved
        if inside is None:
            fast = accel.kernel("dorefa_backward", g, x)
            if fast is not None:
                return fast(g, x)
            inside = (x >= 0) & (x <= 1)
        return g * inside


def sign_ste(x, ste: str = "identity") -> Tensor:
    if ste not in STES:
        raise ValueError(f"sign_ste: ste must be one of {', '.join(STES)}, got {ste!r}")
    return SignSTE.apply(x, ste)


def dorefa_quantize(x, bits: int = 2) -> Tensor:
    if bits < 1:
        raise ValueError(f"dorefa_quantize: bits must be >= 1, got {bits}")
    return DoReFaQuantize.apply(x, 2 ** bits)


class FullPrecision(ActivationQuantizer):
    bits = 32


class BinaryActivation(ActivationQuantizer):
    bits = 1

    def __init__(self, ste: str = "identity"):
        super().__init__()
        if ste not in STES:
            raise ValueError(f"BinaryActivation: ste must be one of {', '.join(STES)}, got {ste!r}")
        self.ste = ste

    def forward(self, x):
        return sign_ste(x, self.ste)

    def extra_repr(self) -> str:
        return f"bits=1, ste={self.ste}"


class DoReFaActivation(ActivationQuantizer):
    bits = 2

    def forward(self, x):
        return dorefa_quantize(x, 2)


def activation_quantizer(bits: int, ste: str = "identity") -> ActivationQuantizer:
    if bits == 32:
        return FullPrecision()
    if bits == 1:
        return BinaryActivation(ste)
    if bits == 2:
        return DoReFaActivation()
    raise ValueError(f"activation bits must be 32, 2 or 1, got {bits}")


# --- op specs (apb_ref.testing): both are STEs, checked against their declared surrogate gradients ---
def _act_inputs(draw):
    x = random_array(draw, (draw_int(draw, 1, 4), draw_int(draw, 1, 5))) * 1.5
    return [x], {}


OP_SPECS = (
    OpSpec("sign_ste_identity", _act_inputs, lambda x: sign_ste(x, "identity"), (SignSTE,),
           lambda x: np.where(x < 0, -1.0, 1.0), differentiable=(), surrogate=lambda a, g: {0: g}),
    OpSpec("sign_ste_clipped", _act_inputs, lambda x: sign_ste(x, "clipped"), (SignSTE,),
           lambda x: np.where(x < 0, -1.0, 1.0), differentiable=(), surrogate=lambda a, g: {0: g * (np.abs(a[0]) <= 1)}),
    OpSpec("sign_ste_approx", _act_inputs, lambda x: sign_ste(x, "approx"), (SignSTE,),
           lambda x: np.where(x < 0, -1.0, 1.0), differentiable=(),
           surrogate=lambda a, g: {0: g * np.clip(2 - 2 * np.abs(a[0]), 0, None)}),
    OpSpec("dorefa2", _act_inputs, lambda x: dorefa_quantize(x, 2), (DoReFaQuantize,),
           lambda x: np.round(np.clip(x, 0, 1) * 3) / 3, differentiable=(),
           surrogate=lambda a, g: {0: g * ((a[0] >= 0) & (a[0] <= 1))}),
)
