"""A memory budget for the methods that take one (`budgeted = True`, e.g. APB; METHODS §5, §6.2).

Users think in bits per weight. A compressed layer with full-precision (FP) fraction f costs about
1 + (31 + b_idx)·f bits per weight, so a budget of B bits/weight is a target FP fraction

    f* = (B − 1) / (31 + b_idx).

During training the loss gets  λ·relu(f̃ − f*),  where f̃ = Σ_l N_l·f̃_l / Σ_l N_l over the budgeted
layers and f̃_l is each quantizer's smooth count of its FP weights (`soft_fp_fraction`; for APB
1 − mean_i σ((m·δ − ||w_i| − α|)/(τ·δ))). Its gradient widens the bands (δ up), moves α and pulls weights in.

At the start of the projection epoch (default: the last one) a hard projection sets the budget
exactly: with each quantizer's distances d_i (`budget_distances`; APB: d_i = ||w_i| − α_l|/(m·δ_l),
a weight is FP iff d_i ≥ 1), all bands are scaled by one
common factor s chosen so that exactly ⌊f*·N⌋ weights have d_i ≥ s — the bands widen when the
model is over budget and narrow when it is under, so the budget is met and also used (the weights
farthest from ±α, APB's outliers, keep full precision). The masks are then frozen, and the
remaining epochs fine-tune the weights under the exact budget. The budget only asks: each quantizer
applies the scale to its own state (`apply_budget`).
"""
from __future__ import annotations

import numpy as np

from .. import ops as F
from ..autograd import Tensor
from ..nn import Module
from .layers import quantized_layers


def fp_fraction_for_bits(bits_per_weight: float, b_idx: int) -> float:
    """f* for a bits/weight budget; ValueError when the budget cannot be met or is meaningless."""
    if not bits_per_weight >= 1.0:
        raise ValueError(f"bits_per_weight must be >= 1 (every weight keeps its sign bit), got {bits_per_weight}")
    return min(1.0, (bits_per_weight - 1.0) / (31.0 + b_idx))


def budgeted_layers(model: Module) -> list[tuple[str, Module]]:
    """The layers whose method takes a memory budget."""
    return [(n, m) for n, m in quantized_layers(model) if m.weight_quantizer.budgeted]


class MemoryBudget:
    def __init__(self, fp_fraction: float, weight: float = 1.0, tau: float = 0.1):
        if not 0.0 <= fp_fraction <= 1.0:
            raise ValueError(f"MemoryBudget: fp_fraction must be in [0, 1], got {fp_fraction}")
        if weight < 0 or tau <= 0:
            raise ValueError(f"MemoryBudget: need weight >= 0 and tau > 0, got {weight} and {tau}")
        self.fp_fraction, self.weight, self.tau = fp_fraction, weight, tau

    def penalty(self, model: Module) -> Tensor | None:
        """λ·relu(f̃ − f*) as a graph node, or None when the model has no budgeted layer."""
        layers = budgeted_layers(model)
        if not layers:
            return None
        total = sum(m.weight.size for _, m in layers)
        soft = None
        for _, m in layers:
            term = m.weight_quantizer.soft_fp_fraction(m.weight, self.tau) * (m.weight.size / total)
            soft = term if soft is None else soft + term
        return F.relu(soft - self.fp_fraction) * self.weight

    def project(self, model: Module) -> float:
        """Scale every band by one factor so that the FP fraction is f* (rounded down to whole
        weights), then freeze the masks; returns the factor. Over budget the bands widen; under
        budget they narrow, so the weights farthest from ±α use the memory the budget allows."""
        layers = budgeted_layers(model)
        if not layers:
            return 1.0
        distances = [m.weight_quantizer.budget_distances(m.weight.data) for _, m in layers]
        flat = np.concatenate([d.ravel() for d in distances])
        allowed = int(np.floor(self.fp_fraction * flat.size))
        if allowed >= flat.size:  # the budget holds every weight in full precision: empty masks,
            for (_, m), d in zip(layers, distances):  # bands left alone (a zero band would divide by zero)
                m.weight_quantizer.apply_budget(d, None)
            return 0.0
        # just above the (allowed+1)-th largest distance: exactly the `allowed` farthest stay FP
        kth = np.partition(flat, flat.size - allowed - 1)[flat.size - allowed - 1]
        scale = float(np.nextafter(kth, np.inf))
        for (_, m), d in zip(layers, distances):
            m.weight_quantizer.apply_budget(d, scale)
        return scale
