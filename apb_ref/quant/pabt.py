"""PaBT: pruning the binary convolutions of a multi-bit network down to a binary network
(Frickenstein et al., "Pruning as a Binarization Technique", CVPR Workshops 2024; METHODS §2).

A RECONSTRUCTION. No code was published and the full text was not available: the multi-bit
formulation below is ABC-Net's (Lin, Zhao, Pan, NeurIPS 2017), the importance is a first-order
Taylor criterion on a gate per binary convolution (Molchanov et al. 2017, 2019) and the schedule is
apb-ref's own; every choice is listed in METHODS §2.

Multi-bit layer (ABC-Net). M weight bases and N activation bases per layer:

    W ≈ Σ_i α_i·B_i,   B_i = sign(w − mean(w) + u_i·std(w)) ∈ {±1}      (sign(0) = +1)
    A ≈ Σ_j β_j·H_j(x),   H_j(x) = sign(x − t_j) ∈ {±1}
    y = Σ_i Σ_j c_ij·α_i·β_j·(B_i ⊛ H_j(x))                             (M·N binary convolutions)

- Shifts u_i and thresholds t_j are spread over the *live* bases (ranks r = 0..m−1 of the m bases
  still in use): u_r = −1 + 2r/(m − 1) (ABC-Net's spread; u = 0 for m = 1) and t_r = −1 + (2r + 1)/n
  for n live activation bases, the thresholds of the n+1-level uniform quantizer of hardtanh's range
  [−1, 1] (n = 3: −⅔, 0, ⅔, so Σ_j ⅓·H_j is the 2-bit uniform quantizer; n = 2: ±½, ternary; n = 1:
  t = 0, the plain sign). So a layer left with one weight and one activation base computes
  α·β·(B ⊛ sign(x)) with B = sign(w − mean(w)): a BNN layer, exported as `bnn`'s packed form.
- α_i: least squares, refreshed in every forward pass: α = argmin ‖w − Σ_i α_i·B_i‖² over the live
  bases, per output channel (default) or per layer (`pabt_scale`); pinv of the m×m normal equations.
- β_j: learned (ABC-Net), by the quantizer optimizer (Adam, `pabt_lr`), kept ≥ 10⁻⁶; start 1/N.
  ABC-Net also learns its shifts; here they are fixed by the rule above (decision in METHODS §2).
- c_ij: a gate per binary convolution, 1 while the convolution is live and 0 once pruned. Gates are
  not trained: they exist to measure ∂L/∂c.

By linearity the M·N convolutions of a layer are computed in training as N float convolutions,
y = Σ_j (β_j·H_j(x)) ⊛ W_j with W_j = Σ_i c_ij·α_i·B_i (the same numbers; the packed layer runs
the M·N binary products one by one on bgemm_1x1).

Backward, with G_j = ∂L/∂W_j and g = ∂L/∂(β_j·H_j(x)):

    ∂L/∂c_ij = α_i·⟨B_i, G_j⟩                              (exact: W_j is linear in c)
    ∂L/∂w    = Σ_j Σ_i c_ij·α_i·G_j                          (ABC-Net: straight through B_i, α held)
    ∂L/∂β_j  = Σ g·H_j(x)                                    (exact)
    ∂L/∂x    = Σ_j β_j·g_j·1[|x − t_j| ≤ 1]                  (the clipped STE of sign, at the threshold)

Importance and pruning. After every optimizer step (`on_step`) each live term's importance is
updated from the gate gradient of that step, I_ij ← d·I_ij + (1 − d)·|c_ij·∂L/∂c_ij| (first-order
Taylor; d = `pabt_importance_decay`). The R = M·N − 1 removals per layer happen at fractions of
training spread evenly from `pabt_prune_start` to `pabt_prune_end`; each removes the layer's live
term of least importance. A weight base (activation base) with no live term left is dropped, which
lowers the layer's weight (activation) bit-width; the rest of training fine-tunes the binary network.

Memory: a layer with m live weight bases stores m sign planes, m bits per weight
(`WeightCount.quantized_bits`; α, β and the thresholds, a few floats per layer or channel, are not
counted, as APB's α is not). Packed form: one live term is the `bnn` form (sign bits and α per row,
1-bit activations); more terms are the "pabt" form: m sign planes, the n thresholds and one scale
row c_ij·α_i·β_j per live term, run as one bgemm_1x1 per term on the packed sign(x − t_j).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .. import nn
from ..autograd import Function, Tensor
from ..ops.lowering import sign_pm1
from ..ops.spec import OpSpec, draw_from, draw_int, random_array
from .base import ActivationQuantizer, MethodOptions, WeightCount, WeightQuantizer, option
from .packing import pack_signs

RECONSTRUCTION = "PaBT (reconstruction; no code or full text was published)"
BETA_MIN = 1e-6  # β_j are magnitudes: projected onto [1e-6, ∞) after every step
STE_WINDOW = 1.0  # ∂H_j/∂x = 1[|x − t_j| ≤ 1]


def weight_shifts(m: int) -> np.ndarray:
    """ABC-Net's u_r = −1 + 2r/(m − 1) for m live weight bases (0 for one)."""
    return np.zeros(1) if m == 1 else -1.0 + 2.0 * np.arange(m) / (m - 1)


def act_thresholds(n: int) -> np.ndarray:
    """t_r = −1 + (2r + 1)/n for n live activation bases: the uniform quantizer's thresholds on [−1, 1]."""
    return -1.0 + (2.0 * np.arange(n) + 1.0) / n


def _groups(w: np.ndarray, per_channel: bool) -> np.ndarray:
    """w as (G, n): one row per output channel, or one row for the layer."""
    return w.reshape(w.shape[0] if per_channel else 1, -1)


def weight_bases(w: np.ndarray, m: int, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """ABC-Net's m bases of w and their least-squares scales: B (m, *w.shape) ±1 in w's dtype and
    α (m, G) with G output channels (per_channel) or 1, such that Σ_r α_r·B_r is the closest
    combination of these signs to w in each group."""
    g = _groups(w, per_channel)
    mean, std = g.mean(axis=1, keepdims=True), g.std(axis=1, keepdims=True)
    bases = np.stack([sign_pm1(g - mean + g.dtype.type(u) * std) for u in weight_shifts(m)])  # (m, G, n)
    b64 = bases.astype(np.float64)
    gram = np.einsum("rgk,sgk->grs", b64, b64)
    rhs = np.einsum("rgk,gk->gr", b64, g.astype(np.float64))
    alpha = np.einsum("grs,gs->gr", np.linalg.pinv(gram), rhs).T  # (m, G)
    return bases.reshape((m,) + w.shape), alpha.astype(w.dtype)


def _broadcast_alpha(alpha: np.ndarray, w_shape: tuple[int, ...]) -> np.ndarray:
    """α (m, G) shaped to multiply (m, *w_shape)."""
    return alpha.reshape(alpha.shape + (1,) * (len(w_shape) - 1))


def live_weight_bases(alive: np.ndarray) -> np.ndarray:
    return np.flatnonzero(alive.any(axis=1))


def live_act_bases(alive: np.ndarray) -> np.ndarray:
    return np.flatnonzero(alive.any(axis=0))


class PaBTWeights(Function):
    """W_j = Σ_i alive_ij·c_ij·α_i·B_i over the live weight bases i, for one activation base j."""

    @staticmethod
    def forward(ctx, w, gates, alive, j, per_channel):
        rows = live_weight_bases(alive)
        bases, alpha = weight_bases(w, len(rows), per_channel)
        alpha_b = _broadcast_alpha(alpha, w.shape)
        terms = alpha_b * bases  # α_r·B_r, (m, *w.shape)
        c = (gates * alive)[rows, j].astype(w.dtype)
        ctx.save_for_backward(terms, alpha_b, c, rows, j, alive, gates.shape)
        return np.tensordot(c, terms, axes=1).astype(w.dtype)

    @staticmethod
    def backward(ctx, g):
        terms, alpha_b, c, rows, j, alive, gates_shape = ctx.saved
        g_w = (g * np.tensordot(c, alpha_b, axes=1)).astype(g.dtype) if ctx.needs_grad[0] else None
        g_gates = None
        if ctx.needs_grad[1]:  # exact: W_j is linear in c
            g_gates = np.zeros(gates_shape, g.dtype)
            g_gates[rows, j] = (terms * g).reshape(len(rows), -1).sum(axis=1) * alive[rows, j]
        return g_w, g_gates


def pabt_weights(w, gates, alive: np.ndarray, j: int, per_channel: bool = True) -> Tensor:
    if w.ndim < 2:
        raise ValueError(f"pabt_weights: weights must be (out, ...) with at least 2 dimensions, got shape {w.shape}")
    alive = np.asarray(alive, dtype=bool)
    if alive.ndim != 2 or tuple(gates.shape) != alive.shape or not 0 <= j < alive.shape[1]:
        raise ValueError(f"pabt_weights: gates and alive must be (M, N) and j in [0, N), got {tuple(gates.shape)}, "
                         f"{alive.shape} and j = {j}")
    if not alive.any():
        raise ValueError("pabt_weights: no live binary convolution")
    return PaBTWeights.apply(w, gates, alive, int(j), bool(per_channel))


class PaBTActivation(Function):
    """β_j·H_j(x) = β_j·sign(x − t_j); straight through sign inside |x − t_j| ≤ 1."""

    @staticmethod
    def forward(ctx, x, beta, j, t):
        shifted = x - x.dtype.type(t)  # the packed layer packs this same float32 difference
        h = sign_pm1(shifted)
        ctx.save_for_backward(h, np.abs(shifted) <= STE_WINDOW, beta, j)
        return (beta[j] * h).astype(x.dtype)

    @staticmethod
    def backward(ctx, g):
        h, inside, beta, j = ctx.saved
        g_x = (g * (beta[j] * inside)).astype(g.dtype) if ctx.needs_grad[0] else None
        g_beta = None
        if ctx.needs_grad[1]:
            g_beta = np.zeros(beta.shape, g.dtype)
            g_beta[j] = (g * h).sum()
        return g_x, g_beta


def pabt_activation(x, beta, j: int, t: float) -> Tensor:
    if beta.ndim != 1 or not 0 <= j < beta.shape[0]:
        raise ValueError(f"pabt_activation: beta must be (N,) and j in [0, N), got shape {tuple(beta.shape)} and j = {j}")
    return PaBTActivation.apply(x, beta, int(j), float(t))


@dataclass(frozen=True)
class PaBTOptions(MethodOptions):
    pabt_weight_bases: int = option(2, f"{RECONSTRUCTION}: M, weight bases per layer at the start (ABC-Net's "
                                    "shifted signs, scales by least squares every step)", (1, 2, 3))
    pabt_act_bases: int = option(2, f"{RECONSTRUCTION}: N, activation bases per layer at the start (sign(x - t_j), "
                                 "thresholds spread on [-1, 1], hardtanh's range: --act auto picks hardtanh)", (1, 2, 3))
    pabt_scale: str = option("channel", "PaBT: least-squares scales α_i of the weight bases per output channel or "
                             "per layer", ("channel", "layer"))
    pabt_prune_start: float = option(0.2, "PaBT: fraction of training at which the first binary convolution of "
                                     "each layer is removed")
    pabt_prune_end: float = option(0.6, "PaBT: fraction of training at which the last removal leaves one binary "
                                   "convolution per layer (removals evenly spaced in between; fine-tuning after)")
    pabt_importance_decay: float = option(0.9, "PaBT: decay d of the importance, a running mean over steps of "
                                          "|c·dL/dc| per binary convolution (I <- d·I + (1 - d)·|c·dL/dc|)")
    pabt_lr: float = option(1e-3, "PaBT: Adam learning rate of the activation scales β_j")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.pabt_prune_start <= self.pabt_prune_end <= 1:
            raise ValueError(f"pabt: need 0 < pabt_prune_start <= pabt_prune_end <= 1, got "
                             f"{self.pabt_prune_start} and {self.pabt_prune_end}")
        if not 0 <= self.pabt_importance_decay < 1:
            raise ValueError(f"pabt: pabt_importance_decay must be in [0, 1), got {self.pabt_importance_decay}")
        if not 0 < self.pabt_lr <= 1:
            raise ValueError(f"pabt: pabt_lr must be in (0, 1], got {self.pabt_lr}")

    @property
    def quantizer_lr(self) -> float:
        return self.pabt_lr


class PaBTInput(ActivationQuantizer):
    """The layer's activation quantizer under PaBT: the identity (the activation bases are made by
    the weight quantizer's `product`), reporting the layer's live activation bases as its bits."""

    def __init__(self, live_bases: Callable[[], int]):
        super().__init__()
        object.__setattr__(self, "_live_bases", live_bases)  # a plain callable, not a registered module

    @property
    def bits(self) -> int:
        return self._live_bases()

    def extra_repr(self) -> str:
        return f"activation bases={self.bits} (made by the PaBT weight quantizer)"


class PaBT(WeightQuantizer):
    name = "pabt"
    description = (f"{RECONSTRUCTION}: ABC-Net multi-bit layers (M weight x N activation binary bases); "
                   "binary convolutions pruned by a Taylor importance on gates until a BNN remains (METHODS §2)")
    Options = PaBTOptions
    packed_layer = "pabt"
    binarizes_inputs = True  # its activation bases: --act-bits stays 32

    def __init__(self, w: np.ndarray, options: PaBTOptions | None = None):
        super().__init__(w, options)
        self.options.validate()
        o = self.options
        m, n = o.pabt_weight_bases, o.pabt_act_bases
        self.gates = nn.Parameter(np.ones((m, n), np.float32))  # c_ij: 1 live, 0 pruned; never trained
        self.beta = nn.Parameter(np.full(n, 1.0 / n, np.float32))
        self.register_buffer("alive", np.ones((m, n), dtype=bool))
        self.register_buffer("importance", np.zeros((m, n), np.float32))

    # --- the structure ---------------------------------------------------------------------------
    @property
    def per_channel(self) -> bool:
        return self.options.pabt_scale == "channel"

    @property
    def weight_bits(self) -> int:
        """Live weight bases: the layer's weight bit-width."""
        return len(live_weight_bases(self.alive))

    @property
    def act_bits(self) -> int:
        """Live activation bases: the layer's activation bit-width."""
        return len(live_act_bases(self.alive))

    def thresholds(self) -> dict[int, float]:
        """t_j of each live activation base j, spread over the live ones."""
        live = live_act_bases(self.alive)
        return {int(j): float(t) for j, t in zip(live, act_thresholds(len(live)))}

    def removals_due(self, progress: float) -> int:
        """Binary convolutions removed per layer by `progress`: R = M·N − 1 removals at fractions of
        training evenly spaced from pabt_prune_start to pabt_prune_end."""
        o = self.options
        r = self.alive.size - 1
        if r == 0:
            return 0
        times = o.pabt_prune_start + (o.pabt_prune_end - o.pabt_prune_start) * np.arange(r) / max(r - 1, 1)
        return int((times <= progress + 1e-12).sum())

    def remove_least_important(self) -> tuple[int, int]:
        """Prune the live term of least importance (ties: the first in (i, j) order)."""
        score = np.where(self.alive, self.importance, np.inf)
        i, j = np.unravel_index(int(np.argmin(score)), score.shape)
        self.alive[i, j] = False
        self.gates.data[i, j] = 0.0
        return int(i), int(j)

    # --- hooks -------------------------------------------------------------------------------------
    def activation_quantizer(self) -> ActivationQuantizer:
        return PaBTInput(lambda: self.act_bits)

    def quantizer_parameters(self) -> list[nn.Parameter]:
        return [self.beta]

    def project_parameters(self) -> None:
        np.maximum(self.beta.data, BETA_MIN, out=self.beta.data)

    def on_step(self, progress: float, w: np.ndarray) -> None:
        g = self.gates.grad
        if g is not None:  # the gates are in no optimizer: their gradient is this step's alone
            d = np.float32(self.options.pabt_importance_decay)
            score = np.abs(self.gates.data * g).astype(np.float32)
            self.importance[...] = np.where(self.alive, d * self.importance + (1 - d) * score, 0)
            self.gates.grad = None
        while self.alive.size - int(self.alive.sum()) < self.removals_due(progress) and self.alive.sum() > 1:
            self.remove_least_important()

    def forward(self, w: Tensor) -> Tensor:
        """The weights of the first live activation base (the layer computes `product`, not this)."""
        return pabt_weights(w, self.gates, self.alive, int(live_act_bases(self.alive)[0]), self.per_channel)

    def product(self, x: Tensor, w: Tensor, op, bias):
        """y = Σ_j (β_j·H_j(x)) ⊛ W_j over the live activation bases: the M·N gated binary
        convolutions, summed by linearity into one float product per activation base."""
        y = None
        for j, t in self.thresholds().items():
            part = op(pabt_activation(x, self.beta, j, t), pabt_weights(w, self.gates, self.alive, j, self.per_channel),
                      bias if y is None else None)
            y = part if y is None else y + part
        return y

    def mask(self, w: np.ndarray) -> np.ndarray:
        return np.ones(w.shape, dtype=bool)

    def count(self, w: np.ndarray) -> WeightCount:
        return WeightCount(quantized=int(w.size), full=0, sparse=False, quantized_bits=self.weight_bits)

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        return {"weight_bits": self.weight_bits, "act_bits": self.act_bits,
                "bits_per_weight": float(self.count(w).bits(0) / w.size),
                "binary_convs": int(self.alive.sum()), "beta_mean": float(self.beta.data[live_act_bases(self.alive)].mean())}

    # --- packed form -------------------------------------------------------------------------------
    def term_scales(self, w: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]], np.ndarray, np.ndarray]:
        """(sign planes (m, O, K) ±1 of the live weight bases, the live terms as (plane, activation
        base) in compact indices, their scale rows c_ij·α_i·β_j (T, O) float32, the thresholds (n,))."""
        rows, cols = live_weight_bases(self.alive), live_act_bases(self.alive)
        bases, alpha = weight_bases(w.astype(np.float32), len(rows), self.per_channel)
        o = w.shape[0]
        alpha = np.broadcast_to(alpha, (len(rows), o))
        terms, scales = [], []
        for r, i in enumerate(rows):
            for s, j in enumerate(cols):
                if self.alive[i, j]:
                    terms.append((r, s))
                    scales.append(np.float32(self.gates.data[i, j]) * alpha[r] * self.beta.data[j])
        thresholds = act_thresholds(len(cols)).astype(np.float32)
        return bases.reshape(len(rows), o, -1), terms, np.stack(scales).astype(np.float32), thresholds

    def pack(self, w: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        planes, terms, scales, thresholds = self.term_scales(w)
        if len(terms) == 1 and (scales[0] != 0).all():
            # a BNN layer: α·(B·sign(x)) with B's rows negated where the scale is negative (α > 0)
            (r, _), = terms
            signs = planes[r] * np.where(scales[0] < 0, -1, 1).astype(np.float32)[:, None]
            return ({"sign_bits": pack_signs(signs), "alpha": np.abs(scales[0])},
                    {"kind": "bnn", "act_bits": 1, "nnz": 0})
        return ({"planes": np.stack([pack_signs(p) for p in planes]), "thresholds": thresholds, "scales": scales},
                {"act_bits": 1, "terms": [list(t) for t in terms]})

    def extra_repr(self) -> str:
        return (f"weight bases={self.weight_bits}/{self.alive.shape[0]}, activation bases={self.act_bits}/"
                f"{self.alive.shape[1]}, binary convolutions={int(self.alive.sum())}")


# --- op specs (apb_ref.testing) -------------------------------------------------------------------
def _alive(draw, m, n):
    alive = np.array([[draw_from(draw, [True, True, False]) for _ in range(n)] for _ in range(m)])
    alive[draw_int(draw, 0, m - 1), draw_int(draw, 0, n - 1)] = True
    return alive


def _weights_inputs(draw):
    m, n = draw_int(draw, 1, 3), draw_int(draw, 1, 3)
    shape = (draw_int(draw, 1, 3), draw_int(draw, 1, 3), draw_from(draw, [1, 3]), draw_from(draw, [1, 3]))
    gates = random_array(draw, (m, n), 0.2, 1.5)
    return [random_array(draw, shape), gates], {"alive": _alive(draw, m, n), "j": draw_int(draw, 0, n - 1),
                                                 "per_channel": draw_from(draw, [True, False])}


def _reference_terms(w, alive, per_channel):
    """Plain least squares per group over ABC-Net's bases of the live rows: (live rows, bases
    (G, n, m), α (G, m)), from np.linalg.lstsq."""
    rows = [i for i in range(alive.shape[0]) if alive[i].any()]
    g = w.reshape(w.shape[0] if per_channel else 1, -1)
    shifts = [0.0] if len(rows) == 1 else [-1 + 2 * r / (len(rows) - 1) for r in range(len(rows))]
    bases = np.stack([np.stack([np.where(row - row.mean() + u * row.std() < 0, -1.0, 1.0) for u in shifts], axis=1)
                      for row in g])
    alpha = np.stack([np.linalg.lstsq(b, row, rcond=None)[0] for b, row in zip(bases, g)])
    return rows, bases, alpha


def _weights_reference(w, gates, alive, j, per_channel):
    rows, bases, alpha = _reference_terms(w, alive, per_channel)
    c = np.array([gates[i, j] * alive[i, j] for i in rows])
    return np.einsum("gkr,gr->gk", bases, alpha * c).reshape(w.shape)


def _weights_surrogate(arrays, g, alive, j, per_channel):
    w, gates = arrays
    rows, _, alpha = _reference_terms(w, alive, per_channel)
    c = np.array([gates[i, j] * alive[i, j] for i in rows])
    return {0: g * (alpha @ c).reshape((-1,) + (1,) * (w.ndim - 1))}


def _act_inputs(draw):
    n = draw_int(draw, 1, 3)
    j = draw_int(draw, 0, n - 1)
    t = float(act_thresholds(n)[j])
    x = random_array(draw, (draw_int(draw, 1, 3), draw_int(draw, 1, 4)), -1.6, 1.6)
    x[np.abs(x - t) < 1e-3] += 0.01  # off sign's jump
    x[np.abs(np.abs(x - t) - 1) < 1e-3] += 0.01  # and off the STE window's edge
    return [x, random_array(draw, (n,), 0.1, 1.0)], {"j": j, "t": t}


def _act_surrogate(arrays, g, j, t):
    x, beta = arrays
    return {0: g * beta[j] * (np.abs(x - t) <= 1)}


OP_SPECS = (
    # W_j is linear in the gates: finite differences check ∂L/∂c exactly; ∂L/∂w is ABC-Net's
    # straight-through rule, checked against its formula.
    OpSpec("pabt_weights", _weights_inputs, lambda w, gates, alive, j, per_channel: pabt_weights(w, gates, alive, j, per_channel),
           (PaBTWeights,), _weights_reference, differentiable=(1,), surrogate=_weights_surrogate),
    # β_j·H_j(x) is linear in β: finite differences; x through the clipped STE at the threshold.
    OpSpec("pabt_activation", _act_inputs, lambda x, beta, j, t: pabt_activation(x, beta, j, t), (PaBTActivation,),
           lambda x, beta, j, t: beta[j] * np.where(x - t < 0, -1.0, 1.0), differentiable=(1,),
           surrogate=_act_surrogate),
)
PaBT.op_specs = OP_SPECS
