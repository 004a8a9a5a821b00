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

import numpy as np

from .. import nn
from ..autograd import Function, Tensor
from ..kernels.reference import sign_pm1
from .base import WeightCount, WeightQuantizer


def band_mask(w: np.ndarray, alpha, delta, margin) -> np.ndarray:
    """True where a weight is binarized: α − mδ < |w| < α + mδ."""
    return np.abs(np.abs(w) - alpha) < margin * delta


class APBQuantize(Function):
    @staticmethod
    def forward(ctx, w, alpha, delta, margin, frozen_mask, reduction):
        mask = band_mask(w, alpha, delta, margin) if frozen_mask is None else frozen_mask
        s = sign_pm1(w)
        ctx.save_for_backward(w, s, mask, alpha, delta, 1.0 / w.size if reduction == "mean" else 1.0)
        return np.where(mask, alpha * s, w).astype(w.dtype)

    @staticmethod
    def backward(ctx, g):
        w, s, mask, alpha, delta, r = ctx.saved
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


class APB(WeightQuantizer):
    """APB's per-layer quantizer: trainable α, δ (one each per layer) and an optional frozen mask.

    alpha_delta: "learned" (the paper's intent) or "fixed" (the released code's behaviour, in which
    α and δ never leave their initial values). freeze_alpha_delta_epoch / freeze_mask_epoch: from the
    start of that epoch on, α/δ stop training / the mask is fixed to its value then (None: never).
    """

    name = "apb"

    def __init__(self, w: np.ndarray, alpha_delta: str = "learned", margin: float = 1.0, reduction: str = "mean",
                 freeze_alpha_delta_epoch: int | None = None, freeze_mask_epoch: int | None = None):
        super().__init__()
        if alpha_delta not in ("learned", "fixed"):
            raise ValueError(f"APB: alpha_delta must be 'learned' or 'fixed', got {alpha_delta!r}")
        if w.size < 2:
            raise ValueError(f"APB: a compressed layer needs at least 2 weights, got shape {w.shape}")
        self.alpha = nn.Parameter(np.asarray(np.abs(w).mean(), dtype=w.dtype))
        self.delta = nn.Parameter(np.asarray(3.0 * w.std(ddof=1), dtype=w.dtype))  # torch.std is unbiased
        self.alpha_delta, self.reduction = alpha_delta, reduction
        self.freeze_alpha_delta_epoch, self.freeze_mask_epoch = freeze_alpha_delta_epoch, freeze_mask_epoch
        self.register_buffer("margin", np.asarray(margin, dtype=w.dtype))
        self.register_buffer("frozen_mask", np.zeros(w.shape, dtype=bool))
        self.register_buffer("mask_is_frozen", np.asarray(False))
        self._set_trainable(alpha_delta == "learned")

    def _set_trainable(self, trainable: bool) -> None:
        self.alpha.requires_grad = self.delta.requires_grad = trainable

    def forward(self, w: Tensor) -> Tensor:
        frozen = self.frozen_mask if bool(self.mask_is_frozen) else None
        return apb_quantize(w, self.alpha, self.delta, float(self.margin), frozen, self.reduction)

    def mask(self, w: np.ndarray) -> np.ndarray:
        """The binarization mask in force for latent weights w."""
        if bool(self.mask_is_frozen):
            return self.frozen_mask
        return band_mask(w, self.alpha.data, self.delta.data, self.margin)

    def freeze_mask(self, w: np.ndarray) -> None:
        self.frozen_mask[...] = band_mask(w, self.alpha.data, self.delta.data, self.margin)
        self.mask_is_frozen[...] = True

    def quantizer_parameters(self) -> list[nn.Parameter]:
        return [self.alpha, self.delta] if self.alpha_delta == "learned" else []

    def on_epoch_start(self, epoch: int, w: np.ndarray) -> None:
        # Idempotent in `epoch`, so a resumed run replays the schedule exactly.
        if self.freeze_alpha_delta_epoch is not None and epoch >= self.freeze_alpha_delta_epoch:
            self._set_trainable(False)
        if self.freeze_mask_epoch is not None and epoch >= self.freeze_mask_epoch and not bool(self.mask_is_frozen):
            self.freeze_mask(w)

    def count(self, w: np.ndarray) -> WeightCount:
        binary = int(self.mask(w).sum())
        return WeightCount(binary=binary, full=int(w.size) - binary, sparse=True)

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        return {"alpha": float(self.alpha.data), "delta": float(self.delta.data),
                "fp_fraction": 1.0 - float(self.mask(w).mean())}

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha.data):.4g}, delta={float(self.delta.data):.4g}, {self.alpha_delta}"
