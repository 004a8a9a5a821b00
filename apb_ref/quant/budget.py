"""A memory budget for APB (METHODS §6.2, beyond the released code).

Users think in bits per weight. A compressed layer with full-precision (FP) fraction f costs about
1 + (31 + b_idx)·f bits per weight, so a budget of B bits/weight is a target FP fraction

    f* = (B − 1) / (31 + b_idx).

During training the loss gets  λ·relu(f̃ − f*),  where f̃ = Σ_l N_l·f̃_l / Σ_l N_l over the APB
layers and f̃_l = 1 − mean_i σ((m·δ − ||w_i| − α|)/(τ·δ)) is a smooth count of the layer's FP
weights (`soft_fp_fraction`). Its gradient widens the bands (δ up), moves α and pulls weights in.

At the start of the projection epoch (default: the last one) a hard projection sets the budget
exactly: with d_i = ||w_i| − α_l|/(m·δ_l) (a weight is FP iff d_i ≥ 1), all δ_l are scaled by one
common factor s chosen so that exactly ⌊f*·N⌋ weights have d_i ≥ s — the bands widen when the
model is over budget and narrow when it is under, so the budget is met and also used (the weights
farthest from ±α, APB's outliers, keep full precision). The masks are then frozen, and the
remaining epochs fine-tune the weights under the exact budget.
"""
from __future__ import annotations

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from ..nn import Module, quantized_layers
from .apb import APB, soft_fp_fraction


def fp_fraction_for_bits(bits_per_weight: float, b_idx: int) -> float:
    """f* for a bits/weight budget; ValueError when the budget cannot be met or is meaningless."""
    if not bits_per_weight >= 1.0:
        raise ValueError(f"bits_per_weight must be >= 1 (every weight keeps its sign bit), got {bits_per_weight}")
    return min(1.0, (bits_per_weight - 1.0) / (31.0 + b_idx))


def apb_layers(model: Module) -> list[tuple[str, Module]]:
    return [(n, m) for n, m in quantized_layers(model) if isinstance(m.weight_quantizer, APB)]


class MemoryBudget:
    def __init__(self, fp_fraction: float, weight: float = 1.0, tau: float = 0.1):
        if not 0.0 <= fp_fraction <= 1.0:
            raise ValueError(f"MemoryBudget: fp_fraction must be in [0, 1], got {fp_fraction}")
        if weight < 0 or tau <= 0:
            raise ValueError(f"MemoryBudget: need weight >= 0 and tau > 0, got {weight} and {tau}")
        self.fp_fraction, self.weight, self.tau = fp_fraction, weight, tau

    def penalty(self, model: Module) -> Tensor | None:
        """λ·relu(f̃ − f*) as a graph node, or None when the model has no APB layer."""
        layers = apb_layers(model)
        if not layers:
            return None
        total = sum(m.weight.size for _, m in layers)
        soft = None
        for _, m in layers:
            q = m.weight_quantizer
            term = soft_fp_fraction(m.weight, q.alpha, q.delta, float(q.margin), self.tau) * (m.weight.size / total)
            soft = term if soft is None else soft + term
        return F.relu(soft - self.fp_fraction) * self.weight

    def project(self, model: Module) -> float:
        """Scale every band by one factor so that the FP fraction is f* (rounded down to whole
        weights), then freeze the masks; returns the factor. Over budget the bands widen; under
        budget they narrow, so the weights farthest from ±α use the memory the budget allows."""
        layers = apb_layers(model)
        if not layers:
            return 1.0
        distances = []
        for _, m in layers:
            q = m.weight_quantizer
            distances.append(np.abs(np.abs(m.weight.data.astype(np.float64)) - float(q.alpha.data))
                             / (float(q.margin) * float(q.delta.data)))
        flat = np.concatenate([d.ravel() for d in distances])
        allowed = int(np.floor(self.fp_fraction * flat.size))
        if allowed >= flat.size:  # the budget holds every weight in full precision: empty masks,
            for _, m in layers:    # δ left alone (a zero band would divide by zero downstream)
                m.weight_quantizer.frozen_mask[...] = False
                m.weight_quantizer.mask_is_frozen[...] = True
            return 0.0
        # just above the (allowed+1)-th largest distance: exactly the `allowed` farthest stay FP
        kth = np.partition(flat, flat.size - allowed - 1)[flat.size - allowed - 1]
        scale = float(np.nextafter(kth, np.inf))
        for (_, m), d in zip(layers, distances):
            q = m.weight_quantizer
            q.delta.data[...] = q.delta.data * scale
            q.frozen_mask[...] = d < scale  # decided in float64, exact whatever δ rounds to
            q.mask_is_frozen[...] = True
        return scale
