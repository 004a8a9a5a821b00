"""BNN / XNOR-Net binary weights (Courbariaux et al. 2016; Rastegari et al., XNOR-Net, ECCV 2016;
METHODS §4.1): every weight of a compressed layer is ±α.

    q_i = α·sign(w_i)    sign(0) = +1,   α = mean_j |w_j|  over the weight's output channel
                                          ("channel", XNOR-Net's per-filter scale) or the layer ("layer")

α is the L2-optimal scale for fixed signs and is computed from the latent weights in the forward pass,
so the gradient flows through it as well as through the sign's straight-through estimator. With
g = ∂L/∂q, n the number of weights sharing α and ste_i = 1 ("identity") or 1[|w_i| ≤ 1] ("clipped"):

    ∂L/∂w_i = α·ste_i·g_i  +  sign(w_i)/n · Σ_j g_j·sign(w_j)      (j over the weights sharing α)

The first term is the STE through sign, the second the exact derivative through α = mean|w|.

Memory: 1 bit per weight (α, one float32 per channel or layer, is not counted, as APB's α is not).
Packed form: the sign bits and α per output row, no residual: inference is α·(B·X) (+ bias) on the
same popcount kernels as APB's dense part.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..autograd import Function, Tensor
from ..ops.lowering import sign_pm1
from ..ops.spec import OpSpec, draw_from, draw_int, random_array
from .base import MethodOptions, WeightCount, WeightQuantizer, option
from .packing import pack_signs


def _scale_axes(w: np.ndarray, per_channel: bool) -> tuple[int, ...]:
    return tuple(range(1, w.ndim)) if per_channel else tuple(range(w.ndim))


class BNNQuantize(Function):
    @staticmethod
    def forward(ctx, w, per_channel, clipped):
        axes = _scale_axes(w, per_channel)
        s = sign_pm1(w)
        alpha = np.abs(w).mean(axis=axes, keepdims=True, dtype=w.dtype)
        ctx.save_for_backward(w, s, alpha, axes, clipped)
        return alpha * s

    @staticmethod
    def backward(ctx, g):
        w, s, alpha, axes, clipped = ctx.saved
        n = np.prod([w.shape[a] for a in axes])
        through_sign = alpha * g if not clipped else alpha * g * (np.abs(w) <= 1)
        through_alpha = s * ((g * s).sum(axis=axes, keepdims=True) / n)
        return (through_sign + through_alpha).astype(w.dtype)


def bnn_quantize(w, per_channel: bool = True, clipped: bool = False) -> Tensor:
    if w.ndim < 2:
        raise ValueError(f"bnn_quantize: weights must be (out, ...) with at least 2 dimensions, got shape {w.shape}")
    return BNNQuantize.apply(w, per_channel, clipped)


@dataclass(frozen=True)
class BNNOptions(MethodOptions):
    bnn_scale: str = option("channel", "BNN: α = mean|w| per output channel (XNOR-Net) or per layer",
                            ("channel", "layer"))
    bnn_ste: str = option("identity", "BNN: straight-through estimator of the weights' sign "
                          "(clipped: gradient only where |w| <= 1)", ("identity", "clipped"))


class BNN(WeightQuantizer):
    name = "bnn"
    description = "BNN/XNOR-Net binary weights: sign(w)·α, α = mean|w| (METHODS §4.1)"
    Options = BNNOptions
    packed_layer = "binary"

    def __init__(self, w: np.ndarray, options: BNNOptions | None = None):
        super().__init__(w, options)
        self.options.validate()

    @property
    def per_channel(self) -> bool:
        return self.options.bnn_scale == "channel"

    def forward(self, w: Tensor) -> Tensor:
        return bnn_quantize(w, self.per_channel, self.options.bnn_ste == "clipped")

    def scales(self, w: np.ndarray) -> np.ndarray:
        """α per output row (O,) float32, exactly as the forward pass computes it."""
        alpha = np.abs(w).mean(axis=_scale_axes(w, self.per_channel), dtype=w.dtype)
        return np.broadcast_to(alpha.reshape(-1), (w.shape[0],)).astype(np.float32)

    def mask(self, w: np.ndarray) -> np.ndarray:
        return np.ones(w.shape, dtype=bool)

    def count(self, w: np.ndarray) -> WeightCount:
        return WeightCount(quantized=int(w.size), full=0, sparse=False)

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        return {"alpha_mean": float(self.scales(w).mean())}

    def pack(self, w: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        signs = sign_pm1(w.reshape(w.shape[0], -1).astype(np.float32))
        return {"sign_bits": pack_signs(signs), "alpha": self.scales(w)}, {"nnz": 0}

    def extra_repr(self) -> str:
        return f"scale={self.options.bnn_scale}, ste={self.options.bnn_ste}"


# --- op specs (apb_ref.testing) -------------------------------------------------------------------
def _bnn_inputs(draw):
    shape = (draw_int(draw, 1, 3), draw_int(draw, 1, 3), draw_from(draw, [1, 3]), draw_from(draw, [1, 3]))
    w = random_array(draw, shape) * 0.8
    w[np.abs(w) < 1e-3] += 0.01  # keep off sign's jump
    w[np.abs(np.abs(w) - 1) < 1e-3] += 0.01  # and off the clipped STE's edge
    return [w], {"per_channel": draw_from(draw, [True, False]), "clipped": draw_from(draw, [True, False])}


def _bnn_reference(w, per_channel, clipped):
    axes = tuple(range(1, w.ndim)) if per_channel else None
    return np.abs(w).mean(axis=axes, keepdims=True) * np.where(w < 0, -1.0, 1.0)


def _bnn_surrogate(arrays, g, per_channel, clipped):
    (w,) = arrays
    axes = tuple(range(1, w.ndim)) if per_channel else tuple(range(w.ndim))
    s = np.where(w < 0, -1.0, 1.0)
    alpha = np.abs(w).mean(axis=axes, keepdims=True)
    ste = (np.abs(w) <= 1) if clipped else 1.0
    n = w.size // (w.shape[0] if per_channel else 1)
    return {0: alpha * ste * g + s * (g * s).sum(axis=axes, keepdims=True) / n}


OP_SPECS = (
    # The whole gradient against the declared formula; its α-path term alone is checked against finite
    # differences in tests/quant/test_bnn.py (the forward is differentiable away from sign's jumps).
    OpSpec("bnn_quantize", _bnn_inputs, lambda w, per_channel, clipped: bnn_quantize(w, per_channel, clipped),
           (BNNQuantize,), _bnn_reference, differentiable=(), surrogate=_bnn_surrogate),
)
BNN.op_specs = OP_SPECS
