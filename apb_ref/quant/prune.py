"""Unstructured magnitude pruning with a gradual schedule (Han et al., NeurIPS 2015; Zhu & Gupta,
"To prune, or not to prune", 2017; METHODS §4.3): the pruning baseline of APB's comparison.

Each compressed layer keeps the d_t·N weights of largest magnitude and multiplies the rest by zero:

    q_i = m_i·w_i,   m_i = 1[|w_i| is among the ⌊d_t·N⌋ largest of the layer]
    ∂L/∂w_i = m_i·g_i            (the exact derivative with the mask fixed: pruned weights get no gradient)

The density follows Zhu & Gupta's cubic schedule over the fraction of training done, t ∈ [0, 1]:

    d_t = d + (1 − d)·(1 − r)³,   r = clip((t − t₀)/(t₁ − t₀), 0, 1)

with the final density d, start t₀ (`prune_start`) and end t₁ (`prune_end`). The mask is recomputed
from the current magnitudes after every optimizer step while t ≤ t₁ (a pruned weight, which gets no
gradient, comes back only if others shrink below it), then frozen: the rest of training fine-tunes
the survivors. d comes from `prune_density`, or from the run's memory budget (`set_budget`):

    bits/weight B = d·(32 + b_idx)   ⇒   d = B/(32 + b_idx)      (--fp-fraction f gives d = f)

Memory: the survivors as float32 values with a b_idx-bit index each (APB's formula with no binary
part). Packed form: CSR (row pointers, column indices at their smallest width, float32 values),
run by `csr_matmul`/`csr_conv2d`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..autograd import Function, Tensor
from ..ops.spec import OpSpec, draw_int, random_array
from .base import MethodOptions, WeightCount, WeightQuantizer, option
from .packing import csr_rows


def cubic_density(progress: float, final: float, start: float, end: float) -> float:
    """Zhu & Gupta's d_t for the fraction of training done."""
    r = min(max((progress - start) / (end - start), 0.0), 1.0)
    return final + (1.0 - final) * (1.0 - r) ** 3


def magnitude_mask(w: np.ndarray, density: float) -> np.ndarray:
    """True for the ⌊density·N⌋ weights of largest magnitude (at least one; rounded down so that a
    budget is never exceeded); ties broken by position."""
    keep = min(w.size, max(1, math.floor(density * w.size + 1e-9)))
    order = np.argsort(-np.abs(w), axis=None, kind="stable")
    mask = np.zeros(w.size, dtype=bool)
    mask[order[:keep]] = True
    return mask.reshape(w.shape)


class PruneMask(Function):
    @staticmethod
    def forward(ctx, w, mask):
        ctx.save_for_backward(mask)
        return np.where(mask, w, 0).astype(w.dtype)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved
        return np.where(mask, g, 0).astype(g.dtype)


def prune_mask(w, mask: np.ndarray) -> Tensor:
    if mask.shape != tuple(w.shape) or mask.dtype != bool:
        raise ValueError(f"prune_mask: mask must be a bool array of the weights' shape {tuple(w.shape)}, "
                         f"got {mask.dtype} {mask.shape}")
    return PruneMask.apply(w, mask)


@dataclass(frozen=True)
class PruneOptions(MethodOptions):
    prune_density: float = option(0.1, "prune, prune_uniform: fraction of each layer's weights kept at the end "
                                  "(a --bits-per-weight or --fp-fraction budget sets it instead)")
    prune_start: float = option(0.0, "prune, prune_uniform: fraction of training done when pruning starts")
    prune_end: float = option(0.5, "prune, prune_uniform: fraction of training done when the final density is "
                              "reached (the rest fine-tunes with the mask fixed)")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.prune_density <= 1:
            raise ValueError(f"prune: prune_density must be in (0, 1], got {self.prune_density}")
        if not 0 <= self.prune_start < self.prune_end <= 1:
            raise ValueError(f"prune: need 0 <= prune_start < prune_end <= 1, got {self.prune_start} and {self.prune_end}")


class Prune(WeightQuantizer):
    name = "prune"
    description = "unstructured magnitude pruning, cubic gradual schedule (Zhu & Gupta 2017; METHODS §4.3)"
    Options = PruneOptions
    budgeted = True
    budget_scope = "layer"
    packed_layer = "sparse"
    value_bits = 32  # bits per stored survivor (before its index)
    budget_replaces = ("prune_density",)  # a budget sets the density (--fp-fraction f is the density)

    def __init__(self, w: np.ndarray, options: PruneOptions | None = None):
        super().__init__(w, options)
        self.options.validate()
        self.target = self.options.prune_density
        self.register_buffer("keep", np.ones(w.shape, dtype=bool))
        self.register_buffer("schedule_done", np.asarray(False))

    def set_budget(self, bits_per_weight: float | None, fp_fraction: float | None, b_idx: int) -> None:
        if fp_fraction is not None:
            if not self.takes_fp_fraction:
                raise ValueError(f"{self.name}: keeps no full-precision weights; give a --bits-per-weight budget")
            self.target = fp_fraction
        else:
            self.target = bits_per_weight / (self.value_bits + b_idx)
        self.target = min(1.0, self.target)
        if not self.target > 0:
            raise ValueError(f"{self.name}: the budget leaves no weight (density {self.target})")

    def on_step(self, progress: float, w: np.ndarray) -> None:
        if bool(self.schedule_done):
            return
        o = self.options
        self.keep[...] = magnitude_mask(w, cubic_density(progress, self.target, o.prune_start, o.prune_end))
        if progress >= o.prune_end:
            self.schedule_done[...] = True

    def forward(self, w: Tensor) -> Tensor:
        return prune_mask(w, self.keep)

    def mask(self, w: np.ndarray) -> np.ndarray:
        return np.zeros(w.shape, dtype=bool)  # nothing binarized

    def count(self, w: np.ndarray) -> WeightCount:
        kept = int(self.keep.sum())
        return WeightCount(quantized=0, full=kept, sparse=True, pruned=int(w.size) - kept)

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        return {"density": float(self.keep.mean())}

    def pack(self, w: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        o = w.shape[0]
        keep = self.keep.reshape(o, -1)
        return csr_rows(w.reshape(o, -1).astype(np.float32), keep), {"nnz": int(keep.sum()), "code_bits": 0}

    def extra_repr(self) -> str:
        return f"density={float(self.keep.mean()):.4g}"


# --- op specs (apb_ref.testing) -------------------------------------------------------------------
def _inputs(draw):
    w = random_array(draw, (draw_int(draw, 1, 3), draw_int(draw, 1, 5)))
    return [w], {"mask": random_array(draw, w.shape) > 0}


OP_SPECS = (
    # With the mask fixed the forward is linear in w: finite differences check the exact gradient.
    OpSpec("prune_mask", _inputs, lambda w, mask: prune_mask(w, mask), (PruneMask,),
           lambda w, mask: w * mask),
)
Prune.op_specs = OP_SPECS
