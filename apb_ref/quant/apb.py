"""APB: Automatic Prune Binarization (Nardini, Rulli, Trani, Venturini; METHODS.md §1, §6.1).

Every weight of a compressed layer is either binarized to ±α or kept in full precision. With a
per-layer α (binary magnitude), δ (band half-width) and margin m = 1:

    mask_i = 1[ | |w_i| − α | < m·δ ]            (inside the band → binarized)
    q_i    = α·sign(w_i)  if mask_i  else  w_i     (sign(0) = +1)

Backward (with g = ∂L/∂q, N = numel, r = 1/N for reduction "mean" as in the released code, 1 for "sum"):

    ∂L/∂w_i = g_i                                    identity straight-through estimator
    ∂L/∂α   = r·Σ_i mask_i·g_i·sign(w_i)             the exact derivative of the forward pass
    ∂L/∂δ   = r·Σ_i mask_i·g_i·sign(w_i)·(α − |w_i|)/δ
              the derivative of the surrogate q_i = w_i − δ·sign(w_i)·sg[(|w_i| − α)/δ]

(The released code's α gradient has the opposite sign, §1.3; we follow the paper's intent, §6.1.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import nn
from ..autograd import Function, Tensor
from ..ops import accel
from ..ops.lowering import sign_pm1
from ..ops.spec import OpSpec, draw_float, draw_from, draw_int, random_array
from .base import MethodOptions, WeightCount, WeightQuantizer, option
from .packing import csr_rows, pack_signs


def band_mask(w: np.ndarray, alpha, delta, margin) -> np.ndarray:
    """True where a weight is binarized: α − mδ < |w| < α + mδ."""
    return np.abs(np.abs(w) - alpha) < margin * delta


def _fast_apb(name: str, w, alpha, delta, *arrays):
    """The training backend's twin when w, α, δ (0-d) and `arrays` are float32 arrays, else None."""
    fast = accel.kernel(name, w, alpha, delta, *arrays)
    return fast if fast is not None and alpha.shape == delta.shape == () else None


class APBQuantize(Function):
    @staticmethod
    def forward(ctx, w, alpha, delta, margin, frozen_mask, reduction):
        r = 1.0 / w.size if reduction == "mean" else 1.0
        fast = _fast_apb("apb_forward", w, alpha, delta)
        # a Python float margin (NumPy rounds it to float32; a NumPy float64 would compare in float64)
        if fast is not None and type(margin) is float and (frozen_mask is None or frozen_mask.dtype == bool):
            q, mask = fast(w, float(alpha), float(delta), margin, frozen_mask)
            ctx.save_for_backward(w, None, mask, alpha, delta, r)  # the signs wait for backward
            return q
        mask = band_mask(w, alpha, delta, margin) if frozen_mask is None else frozen_mask
        s = sign_pm1(w)
        ctx.save_for_backward(w, s, mask, alpha, delta, r)
        return np.where(mask, alpha * s, w).astype(w.dtype)

    @staticmethod
    def backward(ctx, g):
        w, s, mask, alpha, delta, r = ctx.saved
        if not (ctx.needs_grad[1] or ctx.needs_grad[2]):
            return g, None, None
        fast = _fast_apb("apb_backward", w, alpha, delta, g)
        if fast is not None and isinstance(mask, np.ndarray) and mask.dtype == bool:
            # the two sums (in f64), then NumPy's float32 scalar steps: r·Σ, r·Σ/δ
            sum_gs, sum_gs_dist = fast(g, w, mask, float(alpha))
            g_alpha = np.asarray(r * np.float32(sum_gs), dtype=w.dtype) if ctx.needs_grad[1] else None
            g_delta = np.asarray(r * np.float32(sum_gs_dist) / delta, dtype=w.dtype) if ctx.needs_grad[2] else None
            return g, g_alpha, g_delta
        if s is None:
            s = sign_pm1(w)
        gs = np.where(mask, g * s, 0)
        g_alpha = np.asarray(r * gs.sum(), dtype=w.dtype) if ctx.needs_grad[1] else None
        g_delta = np.asarray(r * (gs * (alpha - np.abs(w))).sum() / delta, dtype=w.dtype) if ctx.needs_grad[2] else None
        return g, g_alpha, g_delta


def apb_quantize(w, alpha, delta, margin: float = 1.0, frozen_mask: np.ndarray | None = None,
                 reduction: str = "mean") -> Tensor:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"apb_quantize: reduction must be 'mean' or 'sum', got {reduction!r}")
    if frozen_mask is not None and frozen_mask.shape != w.shape:
        raise ValueError(f"apb_quantize: frozen_mask has shape {frozen_mask.shape}, weights {w.shape}")
    return APBQuantize.apply(w, alpha, delta, margin, frozen_mask, reduction)


class SoftFPFraction(Function):
    """f̃ = 1 − mean_i σ(z_i), z_i = (m − ||w_i| − α|/δ)/τ: a smooth count of the full-precision
    weights (METHODS §6.2; the temperature is τ·δ, so τ is a fraction of the band). Exact gradient."""

    @staticmethod
    def forward(ctx, w, alpha, delta, margin, tau):
        dist = np.abs(w) - alpha
        z = (margin - np.abs(dist) / delta) / tau
        sig = 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z) without overflow warnings
        ctx.save_for_backward(w, dist, sig, delta, tau)
        return np.asarray(1.0 - sig.mean(), dtype=w.dtype)

    @staticmethod
    def backward(ctx, g):
        w, dist, sig, delta, tau = ctx.saved
        d_z = -g * sig * (1.0 - sig) / w.size  # ∂f̃/∂z_i
        d_dist = -d_z * np.sign(dist) / (tau * delta)  # ∂f̃/∂(|w_i| − α), as ∂z/∂dist = −sign(dist)/(τδ)
        g_w = d_dist * sign_pm1(w) if ctx.needs_grad[0] else None
        g_alpha = np.asarray(-d_dist.sum(), dtype=w.dtype) if ctx.needs_grad[1] else None
        g_delta = np.asarray((d_z * np.abs(dist) / (tau * delta * delta)).sum(), dtype=w.dtype) if ctx.needs_grad[2] else None
        return (g_w.astype(w.dtype) if g_w is not None else None), g_alpha, g_delta


def soft_fp_fraction(w, alpha, delta, margin: float = 1.0, tau: float = 0.1) -> Tensor:
    return SoftFPFraction.apply(w, alpha, delta, margin, tau)


@dataclass(frozen=True)
class APBOptions(MethodOptions):
    alpha_delta: str = option("learned", "APB: learn α and δ (the paper) or keep them at their initial "
                              "values (the released code)", ("learned", "fixed"))
    lr_ab: float = option(0.01, "APB: Adam learning rate of α and δ")
    ab_reduction: str = option("mean", "APB: α/δ gradients as means over the layer (released code) or sums",
                               ("mean", "sum"))
    freeze_alpha_delta_epoch: int | None = option(None, "APB: from this epoch (0-based) on, α and δ stop training")
    freeze_mask_epoch: int | None = option(None, "APB: from this epoch (0-based) on, the binarization mask is fixed")

    def validate(self) -> None:
        super().validate()
        if not self.lr_ab >= 0:
            raise ValueError(f"APB: lr_ab must be >= 0, got {self.lr_ab}")
        for name in ("freeze_alpha_delta_epoch", "freeze_mask_epoch"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"APB: {name} must be >= 0, got {getattr(self, name)}")

    @property
    def quantizer_lr(self) -> float:
        return self.lr_ab


class APB(WeightQuantizer):
    """APB's per-layer quantizer: trainable α, δ (one each per layer) and an optional frozen mask.

    alpha_delta: "learned" (the paper's intent) or "fixed" (the released code's behaviour, in which
    α and δ never leave their initial values). freeze_alpha_delta_epoch / freeze_mask_epoch: from the
    start of that epoch on, α/δ stop training / the mask is fixed to its value then (None: never).
    """

    name = "apb"
    description = "Automatic Prune Binarization: ±α or full precision per weight (METHODS §1)"
    Options = APBOptions
    budgeted = True
    packed_layer = "binary"

    def __init__(self, w: np.ndarray, options: APBOptions | None = None, margin: float = 1.0):
        super().__init__(w, options)
        self.options.validate()
        if w.size < 2:
            raise ValueError(f"APB: a compressed layer needs at least 2 weights, got shape {w.shape}")
        self.alpha = nn.Parameter(np.asarray(np.abs(w).mean(), dtype=w.dtype))
        self.delta = nn.Parameter(np.asarray(3.0 * w.std(ddof=1), dtype=w.dtype))  # torch.std is unbiased
        self.register_buffer("margin", np.asarray(margin, dtype=w.dtype))
        self.register_buffer("frozen_mask", np.zeros(w.shape, dtype=bool))
        self.register_buffer("mask_is_frozen", np.asarray(False))
        self._set_trainable(self.options.alpha_delta == "learned")

    def _set_trainable(self, trainable: bool) -> None:
        self.alpha.requires_grad = self.delta.requires_grad = trainable

    # α and δ are magnitudes: after every step they are projected onto [MIN_SCALE, ∞), far below any
    # weight scale these networks reach (a NaN or inf is a divergence, which the trainer's guard stops).
    MIN_SCALE = 1e-6

    def project_parameters(self) -> None:
        for p in (self.alpha, self.delta):
            if p.data < self.MIN_SCALE:  # False for NaN: left for the divergence guard to report
                p.data[...] = self.MIN_SCALE

    def forward(self, w: Tensor) -> Tensor:
        frozen = self.frozen_mask if bool(self.mask_is_frozen) else None
        return apb_quantize(w, self.alpha, self.delta, float(self.margin), frozen, self.options.ab_reduction)

    def mask(self, w: np.ndarray) -> np.ndarray:
        """The binarization mask in force for latent weights w."""
        if bool(self.mask_is_frozen):
            return self.frozen_mask
        return band_mask(w, self.alpha.data, self.delta.data, self.margin)

    def freeze_mask(self, w: np.ndarray) -> None:
        self.frozen_mask[...] = band_mask(w, self.alpha.data, self.delta.data, self.margin)
        self.mask_is_frozen[...] = True

    def quantizer_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.delta] if self.options.alpha_delta == "learned" else []

    def on_epoch_start(self, epoch: int, w: np.ndarray) -> None:
        # Idempotent in `epoch`, so a resumed run replays the schedule exactly.
        opts = self.options
        if opts.freeze_alpha_delta_epoch is not None and epoch >= opts.freeze_alpha_delta_epoch:
            self._set_trainable(False)
        if opts.freeze_mask_epoch is not None and epoch >= opts.freeze_mask_epoch and not bool(self.mask_is_frozen):
            self.freeze_mask(w)

    def count(self, w: np.ndarray) -> WeightCount:
        binary = int(self.mask(w).sum())
        return WeightCount(quantized=binary, full=int(w.size) - binary, sparse=True)

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        return {"alpha": float(self.alpha.data), "delta": float(self.delta.data),
                "fp_fraction": 1.0 - float(self.mask(w).mean())}

    def band(self) -> tuple[float, float]:
        return float(self.alpha.data), float(self.delta.data) * float(self.margin)

    # --- the memory budget's hooks (budget.py asks; the quantizer changes its own state) ------------
    def soft_fp_fraction(self, w: Tensor, tau: float) -> Tensor:
        return soft_fp_fraction(w, self.alpha, self.delta, float(self.margin), tau)

    def budget_distances(self, w: np.ndarray) -> np.ndarray:
        """d_i = ||w_i| − α|/(m·δ) in float64: a weight is full precision iff d_i ≥ 1."""
        return np.abs(np.abs(w.astype(np.float64)) - float(self.alpha.data)) / (float(self.margin) * float(self.delta.data))

    def apply_budget(self, distances: np.ndarray, scale: float | None) -> None:
        """Scale the band by `scale` and freeze the mask to d < scale (decided in float64, exact
        whatever δ rounds to); scale None: every weight full precision, δ left alone."""
        if scale is None:
            self.frozen_mask[...] = False
        else:
            self.delta.data[...] = self.delta.data * scale
            self.frozen_mask[...] = distances < scale
        self.mask_is_frozen[...] = True

    # --- the packed form: W_q = α·B + S (METHODS §1.8) ------------------------------------------------
    def pack(self, w: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """B as sign bits, α, and S = W_q − α·B at the full-precision positions as CSR."""
        o = w.shape[0]
        w2 = w.reshape(o, -1)
        alpha = np.float32(self.alpha.data)
        binary = self.mask(w).reshape(o, -1)
        signs = sign_pm1(w2.astype(np.float32))
        residual = np.where(binary, np.float32(0), w2 - alpha * signs).astype(np.float32)
        tensors = {"sign_bits": pack_signs(signs), "alpha": np.asarray([alpha], np.float32),
                   **csr_rows(residual, ~binary)}
        return tensors, {"nnz": int((~binary).sum())}

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha.data):.4g}, delta={float(self.delta.data):.4g}, {self.options.alpha_delta}"


# --- op specs (apb_ref.testing): finite differences where the op has a true derivative, the declared
# surrogate where it is an STE ------------------------------------------------------------------------
def _apb_inputs(draw):
    """Weights, α, δ with no weight within 1e-2 of a band edge (where the forward jumps)."""
    shape = (draw_int(draw, 1, 4), draw_int(draw, 2, 6))
    w = random_array(draw, shape) * 0.5
    alpha = np.asarray(draw_float(draw, 0.1, 0.6))
    delta = np.asarray(draw_float(draw, 0.3, 0.6))
    near_edge = np.abs(np.abs(np.abs(w) - alpha) - delta) < 1e-2
    w[near_edge] += 0.05 * np.where(w[near_edge] < 0, -1, 1)
    return [w, alpha, delta], {}


def _apb_reference(w, alpha, delta):
    mask = np.abs(np.abs(w) - alpha) < delta
    return np.where(mask, alpha * np.where(w < 0, -1.0, 1.0), w)


def _apb_surrogate(reduction):
    def surrogate(arrays, g):
        w, alpha, delta = arrays
        mask = np.abs(np.abs(w) - alpha) < delta
        r = 1.0 / w.size if reduction == "mean" else 1.0
        s = np.where(w < 0, -1.0, 1.0)
        out = {0: g, 2: np.asarray(r * (mask * g * s * (alpha - np.abs(w))).sum() / delta)}
        if reduction == "mean":  # the exact α derivative (checked by finite differences in "sum") over N
            out[1] = np.asarray(r * (mask * g * s).sum())
        return out
    return surrogate


def _soft_inputs(draw):
    w = random_array(draw, (draw_int(draw, 1, 3), draw_int(draw, 2, 5))) * 0.5
    alpha = np.asarray(draw_float(draw, 0.1, 0.5))
    w[np.abs(np.abs(w) - alpha) < 1e-3] += 0.01  # keep off the kink of |·| at |w| = α
    w[np.abs(w) < 1e-3] += 0.01
    return [w, alpha, np.asarray(draw_float(draw, 0.2, 0.6))], {"tau": draw_from(draw, [0.1, 0.5])}


def _soft_reference(w, alpha, delta, tau):
    z = (1.0 - np.abs(np.abs(w) - alpha) / delta) / tau
    return 1.0 - np.mean(1.0 / (1.0 + np.exp(-z)))


OP_SPECS = (
    # "sum": α by finite differences (its exact derivative); w (identity STE) and δ by their formulas.
    OpSpec("apb_quantize_sum", _apb_inputs, lambda w, a, d: apb_quantize(w, a, d, reduction="sum"),
           (APBQuantize,), _apb_reference, differentiable=(1,), surrogate=_apb_surrogate("sum")),
    OpSpec("apb_quantize_mean", _apb_inputs, lambda w, a, d: apb_quantize(w, a, d, reduction="mean"),
           (APBQuantize,), _apb_reference, differentiable=(), surrogate=_apb_surrogate("mean")),
    OpSpec("soft_fp_fraction", _soft_inputs, lambda w, a, d, tau: soft_fp_fraction(w, a, d, tau=tau),
           (SoftFPFraction,), _soft_reference),
)
APB.op_specs = OP_SPECS
