"""k-bit symmetric uniform weights with a learned step size (LSQ: Esser et al., "Learned Step Size
Quantization", ICLR 2020; METHODS §4.2): the baseline APB's memory claim is measured against.

The 2^k levels are the odd multiples of s/2, with no zero (2 bits: {±s/2, ±3s/2}, the grid of the
kernels' two-plane encoding). With n = 2^(k−1) and v_i = w_i/s:

    j_i = clip(⌊v_i⌋, −n, n − 1)        (the level index)
    q_i = s·(j_i + ½)

so u_i = 2·q_i/s = 2·j_i + 1 is an odd integer in [−(2^k − 1), 2^k − 1], and every such u is
Σ_p 2^p·b_p with sign planes b_p ∈ {±1} (b_p = +1 where bit p of (u + 2^k − 1)/2 is set). The packed
form stores the k planes and s: W_q = Σ_p (s·2^p/2)·B_p, k binary products per dot.

Backward (LSQ's straight-through estimator; g = ∂L/∂q, inside_i = 1[−n ≤ v_i < n]):

    ∂L/∂w_i = g_i·inside_i                   identity through the rounding, zero where clipped
    ∂L/∂s   = Σ_i g_i·(inside_i·(j_i + ½ − v_i) + (1 − inside_i)·(j_i + ½))

∂L/∂s is the derivative of q with ⌊·⌋ held fixed: exact outside the range (q = s·(±n ∓ ½) there),
LSQ's surrogate inside. LSQ also scales it by 1/√(N·n); s is trained by Adam (the quantizer
optimizer), which is invariant to that scale, so it is left out. s is one per layer (LSQ) or one
per output channel. It starts at the step that minimises ‖q(w) − w‖² over a grid of candidates.

Memory: k bits per weight (s, one float32 per layer or channel, is not counted, as APB's α is not).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import nn
from ..autograd import Function, Tensor
from ..ops.spec import OpSpec, draw_float, draw_from, draw_int, random_array
from .base import MethodOptions, WeightCount, WeightQuantizer, option
from .packing import pack_signs


def level_index(w: np.ndarray, step: np.ndarray, bits: int) -> np.ndarray:
    """j = clip(⌊w/s⌋, −n, n − 1), n = 2^(bits−1): which of the 2^bits levels s·(j + ½) w rounds to."""
    n = 2 ** (bits - 1)
    return np.clip(np.floor(w / step), -n, n - 1)


def uniform_levels(w: np.ndarray, step: np.ndarray, bits: int) -> np.ndarray:
    """q = s·(j + ½): the quantized weights."""
    return (step * (level_index(w, step, bits) + 0.5)).astype(w.dtype)


class UniformQuantize(Function):
    @staticmethod
    def forward(ctx, w, step, bits):
        v = w / step
        j = level_index(w, step, bits)
        n = 2 ** (bits - 1)
        inside = (v >= -n) & (v < n)
        ctx.save_for_backward(v, j, inside, step.shape)
        return (step * (j + 0.5)).astype(w.dtype)

    @staticmethod
    def backward(ctx, g):
        v, j, inside, step_shape = ctx.saved
        g_w = (g * inside).astype(g.dtype)
        g_step = None
        if ctx.needs_grad[1]:
            per_weight = g * np.where(inside, j + 0.5 - v, j + 0.5)
            axes = tuple(a for a in range(g.ndim) if a >= len(step_shape) or step_shape[a] == 1)
            g_step = per_weight.sum(axis=axes, keepdims=True).reshape(step_shape).astype(g.dtype)
        return g_w, g_step


def uniform_quantize(w, step, bits: int = 2) -> Tensor:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 1 <= bits <= 8:
        raise ValueError(f"uniform_quantize: bits must be an integer in [1, 8], got {bits!r}")
    return UniformQuantize.apply(w, step, int(bits))


def best_step(w: np.ndarray, bits: int, per_channel: bool, keep: np.ndarray | None = None) -> np.ndarray:
    """The step s (per layer, or per output channel) with the least ‖q(w) − w‖² over the weights where
    `keep` is True (all by default), among 200 candidates from 0.01 to 4 times their mean|w|. LSQ's
    own initialisation, 2·mean|w|/√n, is far from it at 2 bits."""
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    kept = np.ones(rows.shape, bool) if keep is None else keep.reshape(rows.shape)
    count = np.maximum(kept.sum(axis=1, keepdims=True), 1)
    scale = (np.abs(rows) * kept).sum(axis=1, keepdims=True, dtype=np.float64) / count
    scale[scale == 0] = 1.0
    candidates = scale * np.linspace(0.01, 4.0, 200)[None, :]  # (rows, 200)
    errors = [(((uniform_levels(rows, candidates[:, c:c + 1], bits) - rows) ** 2) * kept).sum(axis=1)
              for c in range(candidates.shape[1])]
    best = candidates[np.arange(len(rows)), np.argmin(np.stack(errors, axis=1), axis=1)]
    shape = (w.shape[0],) + (1,) * (w.ndim - 1) if per_channel else ()
    return best.reshape(shape).astype(w.dtype)


def sign_planes(u: np.ndarray, bits: int) -> np.ndarray:
    """The odd integers u ∈ [−(2^bits − 1), 2^bits − 1] as `bits` planes of ±1: u = Σ_p 2^p·planes[p]."""
    code = ((u + (2 ** bits - 1)) // 2).astype(np.int64)  # 0 .. 2^bits − 1
    return np.stack([np.where((code >> p) & 1, 1.0, -1.0) for p in range(bits)]).astype(np.float32)


@dataclass(frozen=True)
class UniformOptions(MethodOptions):
    uniform_bits: int = option(2, "uniform, prune_uniform: bits per weight (2^k levels ±s/2, ±3s/2, ...)",
                               (2, 3, 4))
    uniform_scale: str = option("layer", "uniform, prune_uniform: one learned step s per layer (LSQ) or per "
                                "output channel", ("layer", "channel"))
    lr_step: float = option(0.001, "uniform, prune_uniform: Adam learning rate of the step s")

    def validate(self) -> None:
        super().validate()
        if not self.lr_step >= 0:
            raise ValueError(f"uniform: lr_step must be >= 0, got {self.lr_step}")

    @property
    def quantizer_lr(self) -> float:
        return self.lr_step


class LearnedStep:
    """The step s of k-bit uniform levels, shared by `uniform` and `prune_uniform`: a Parameter (one per
    layer or per output channel) started at the least-squares step, trained by the quantizer
    optimizer and kept positive after every step, as APB's α and δ."""

    MIN_STEP = 1e-8

    def init_step(self, w: np.ndarray) -> None:
        self.bits = self.options.uniform_bits
        self.step = nn.Parameter(best_step(w, self.bits, self.per_channel))

    @property
    def per_channel(self) -> bool:
        return self.options.uniform_scale == "channel"

    def project_parameters(self) -> None:
        np.maximum(self.step.data, self.MIN_STEP, out=self.step.data)

    def quantizer_parameters(self) -> list[nn.Parameter]:
        return [self.step]

    def steps(self, w: np.ndarray) -> np.ndarray:
        """s per output row (O,) float32."""
        return np.broadcast_to(self.step.data.reshape(-1), (w.shape[0],)).astype(np.float32)


class Uniform(LearnedStep, WeightQuantizer):
    name = "uniform"
    description = "k-bit symmetric uniform weights, learned step size (LSQ; METHODS §4.2)"
    Options = UniformOptions
    packed_layer = "binary"  # k sign planes on the popcount kernels

    def __init__(self, w: np.ndarray, options: UniformOptions | None = None):
        super().__init__(w, options)
        self.options.validate()
        self.init_step(w)

    def forward(self, w: Tensor) -> Tensor:
        return uniform_quantize(w, self.step, self.bits)

    def mask(self, w: np.ndarray) -> np.ndarray:
        return np.ones(w.shape, dtype=bool)

    def count(self, w: np.ndarray) -> WeightCount:
        return WeightCount(quantized=int(w.size), full=0, sparse=False, quantized_bits=self.bits)

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        v = w / self.step.data
        n = 2 ** (self.bits - 1)
        return {"step": float(self.step.data.mean()), "clipped": float(((v < -n) | (v >= n)).mean())}

    def pack(self, w: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The `bits` sign planes of u = 2j + 1 and the scale of each: W_q = Σ_p (s·2^p/2)·B_p."""
        o = w.shape[0]
        u = 2 * level_index(w, self.step.data, self.bits).reshape(o, -1) + 1
        planes = sign_planes(u, self.bits)
        tensors = {"planes": np.stack([pack_signs(p) for p in planes]), "alpha": self.steps(w) / np.float32(2)}
        return tensors, {"nnz": 0, "planes": self.bits}

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scale={self.options.uniform_scale}"


# --- op specs (apb_ref.testing) -------------------------------------------------------------------
def _inputs(draw):
    o, k = draw_int(draw, 1, 3), draw_int(draw, 2, 6)
    per_channel = draw_from(draw, [True, False])
    step = (random_array(draw, (o, 1), 0.2, 0.6) if per_channel else np.asarray(draw_float(draw, 0.2, 0.6)))
    w = random_array(draw, (o, k)) * 0.6
    v = w / step
    w += np.where(np.abs(v - np.round(v)) < 1e-3, 0.01, 0.0) * step  # keep off the rounding's jumps
    return [w, step], {"bits": draw_from(draw, [1, 2, 3])}


def _reference(w, step, bits):
    n = 2 ** (bits - 1)
    return step * (np.clip(np.floor(w / step), -n, n - 1) + 0.5)


def _surrogate(arrays, g, bits):
    w, step = arrays
    n = 2 ** (bits - 1)
    v = w / step
    j = np.clip(np.floor(v), -n, n - 1)
    inside = (v >= -n) & (v < n)
    per_weight = g * np.where(inside, j + 0.5 - v, j + 0.5)
    g_step = per_weight.sum(axis=1, keepdims=True) if step.ndim == 2 else np.asarray(per_weight.sum())
    return {0: g * inside, 1: g_step}


OP_SPECS = (
    # LSQ is a straight-through estimator: both gradients against the declared formulas (w's identity
    # inside the range; s's with ⌊·⌋ held fixed). The per-channel reduction is exercised by the draw.
    OpSpec("uniform_quantize", _inputs, lambda w, s, bits: uniform_quantize(w, s, bits), (UniformQuantize,),
           _reference, differentiable=(), surrogate=_surrogate),
)
Uniform.op_specs = OP_SPECS
