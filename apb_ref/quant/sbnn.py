"""SBNN: sparse binary networks through a generalised binary domain {α, β} (Schiavone, Galati,
Zuluaga, ECML-PKDD 2023; METHODS §3). Follows the authors' released training rule.

Every weight of a compressed layer takes one of two values. A layer has latent weights w and two
trainable scalars, τ (initially 1) and φ (initially 0):

    b_i = sign(w_i) ∈ {−1, +1}                      (sign(0) = +1)
    q_i = τ·b_i + φ ∈ {α, β},   α = φ − τ  (w_i < 0),   β = φ + τ  (w_i ≥ 0)

Backward, with g = ∂L/∂q:

    ∂L/∂τ   = Σ_i g_i·b_i,     ∂L/∂φ = Σ_i g_i           (exact)
    ∂L/∂w_i = τ·g_i·ste(w_i)   with the sign's straight-through estimator (`sbnn_ste`):
        "ede"       k·t·(1 − tanh²(t·w_i)),  k = max(1/t, 1)   (IR-Net's EDE, the released CIFAR-10 code)
                    t = 10^(−1 + 2·s), s the fraction of training done (0.1 → 10)
        "identity"  1
        "clipped"   1[|w_i| ≤ 1]

The EC rule (the released code's constraint on the expected connections). With z_i = 1[w_i ≥ 0]
(the weight is at β) and N the number of weights of all SBNN layers together:

    p   = (1/N)·Σ_i z_i               with the straight-through gradient ∂p/∂w_i = 1/(2N)
    h   = relu(p − EC)                (0 when EC = 0.5)
    λ   = γ·L/(h·(1 − γ))             from the loss value L, no gradient; λ = 0 when h ≤ 10⁻⁴
    L_total = L + λ·h

While p > EC the term's value is γ/(1 − γ)·L, and every latent weight gets the same push −λ/(2N)
towards α, strongest close to the target. After every optimizer step the latent weights are clamped
to [−1.5, 1.5].

Closed form. For FP weights w and a density d, the {α, β} weights closest to w (least ‖w − q‖²)
with k = ⌊d·N⌋ weights at β ≥ α put β on the k largest values and take the means:

    z = 1 on the top k of w,   β = mean(w_i : z_i = 1),   α = mean(w_i : z_i = 0)

(for a split, the means are optimal; the between-class sum of squares of a split with fixed sizes
is convex in the sum of the β class, so the best split is the top k or the bottom k, and β ≥ α
leaves the top k). In the layer's own parameters: τ = (β − α)/2, φ = (β + α)/2, and the latent
weights are shifted by a threshold between the k-th and (k+1)-th largest so that their signs are z.
`sbnn_init = closed_form` starts training there; `quantize_model` is the one-shot post-training
quantizer.

Memory: the paper's formula counts 1 bit per weight; the entropy bound is H(p_l) bits per weight
for a layer with a fraction p_l at β (`WeightCount.entropy_bits`). The packed form stores the
positions of the layer's minority value, Golomb-Rice coded (`packing.rice_encode`), and α, β.
Inference: y = α·(x ⊛ 1) + (β − α)·(x ⊛ z) (apb_ref.packed.layers.PackedSBNN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import nn
from ..autograd import Function, Tensor
from ..ops.lowering import sign_pm1
from ..ops.spec import OpSpec, draw_float, draw_from, draw_int, random_array
from .base import MethodOptions, WeightCount, WeightQuantizer, option
from .layers import quantized_layers
from .packing import binary_entropy, rice_bits, rice_encode, rice_gaps, rice_parameter

LATENT_BOUND = 1.5  # latent weights are clamped to [−1.5, 1.5] after every step (the released code)
T_MIN, T_MAX = 0.1, 10.0  # EDE's t runs log-linearly from T_MIN to T_MAX over training
DEAD_ZONE = 1e-4  # λ = 0 while h ≤ this (the released code)
STES = ("ede", "identity", "clipped")


def ede_t(progress: float) -> float:
    """EDE's t after a fraction `progress` of training: 10^(−1 + 2·progress)."""
    return T_MIN * (T_MAX / T_MIN) ** min(max(progress, 0.0), 1.0)


def ste_derivative(w: np.ndarray, ste: str, t: float) -> np.ndarray:
    """The sign's surrogate derivative at w for each estimator."""
    if ste == "ede":
        k = max(1.0 / t, 1.0)
        return (k * t * (1.0 - np.tanh(t * w) ** 2)).astype(w.dtype)
    if ste == "clipped":
        return (np.abs(w) <= 1).astype(w.dtype)
    return np.ones_like(w)


class SBNNQuantize(Function):
    @staticmethod
    def forward(ctx, w, tau, phi, ste, t):
        b = sign_pm1(w)
        ctx.save_for_backward(w, b, tau, ste, t)
        return (tau * b + phi).astype(w.dtype)

    @staticmethod
    def backward(ctx, g):
        w, b, tau, ste, t = ctx.saved
        g_w = (tau * g * ste_derivative(w, ste, t)).astype(w.dtype) if ctx.needs_grad[0] else None
        g_tau = np.asarray((g * b).sum(), dtype=w.dtype) if ctx.needs_grad[1] else None
        g_phi = np.asarray(g.sum(), dtype=w.dtype) if ctx.needs_grad[2] else None
        return g_w, g_tau, g_phi


def sbnn_quantize(w, tau, phi, ste: str = "ede", t: float = T_MIN) -> Tensor:
    if ste not in STES:
        raise ValueError(f"sbnn_quantize: ste must be one of {', '.join(STES)}, got {ste!r}")
    if not t > 0:
        raise ValueError(f"sbnn_quantize: t must be > 0, got {t}")
    return SBNNQuantize.apply(w, tau, phi, ste, float(t))


class ConnectionFraction(Function):
    """p = (1/N)·Σ 1[w_i ≥ 0] over all the given weight arrays; backward 1/(2N) per weight (the
    released code counts 0.5·(sign(w) + 1) with an identity estimator through the sign)."""

    @staticmethod
    def forward(ctx, *ws):
        n = sum(w.size for w in ws)
        ctx.save_for_backward(n, [w.dtype for w in ws], [w.shape for w in ws])
        return np.asarray(sum(int((w >= 0).sum()) for w in ws) / n, dtype=ws[0].dtype)

    @staticmethod
    def backward(ctx, g):
        n, dtypes, shapes = ctx.saved
        return tuple(np.full(shape, g * 0.5 / n, dtype=dt) for dt, shape in zip(dtypes, shapes))


def connection_fraction(*ws) -> Tensor:
    """p: the fraction of weights at β (latent w ≥ 0) over all the given layers' weights."""
    if not ws:
        raise ValueError("connection_fraction: needs at least one weight array")
    return ConnectionFraction.apply(*ws)


def ec_penalty(p: Tensor, loss_value: float, ec: float, gamma: float) -> Tensor | None:
    """λ·h of the EC rule for the fraction p (a graph node) and the loss value L; None when it is 0
    (EC = 0.5, γ = 0 or h ≤ 10⁻⁴)."""
    h = float(p.data) - ec
    if ec == 0.5 or gamma == 0 or h <= DEAD_ZONE:
        return None
    lam = gamma * loss_value / (h * (1.0 - gamma))
    return (p - ec) * lam  # h = p − EC here (> 0): relu is the identity


def closed_form(w: np.ndarray, density: float) -> tuple[np.ndarray, float, float]:
    """The {α, β} quantization of w closest in L2 with k = ⌊density·N⌋ weights at β (at least 1, at
    most N − 1): z = 1 on the k largest values (ties by position), β and α the means of the two sets.
    Returns (z of w's shape, α, β) in float64."""
    flat = np.asarray(w, np.float64).ravel()
    if flat.size < 2:
        raise ValueError(f"closed_form: needs at least 2 weights, got {flat.size}")
    k = min(flat.size - 1, max(1, math.floor(density * flat.size + 1e-9)))
    z = np.zeros(flat.size, dtype=bool)
    z[np.argsort(-flat, kind="stable")[:k]] = True
    return z.reshape(np.shape(w)), float(flat[~z].mean()), float(flat[z].mean())


@dataclass(frozen=True)
class SBNNOptions(MethodOptions):
    ec: float = option(0.5, "SBNN: expected connections EC, the fraction of the SBNN layers' weights allowed "
                       "at β; the penalty pushes the fraction p at β down to EC (0.5: no constraint)")
    gamma: float = option(0.0, "SBNN: strength γ in [0, 1) of the EC penalty (while p > EC its value is "
                          "γ/(1 − γ) times the loss)")
    sbnn_ste: str = option("ede", "SBNN: straight-through estimator of the weights' sign (ede: IR-Net's "
                           "k·t·(1 − tanh²(t·w)), t from 0.1 to 10 over training)", STES)
    sbnn_init: str = option("standard", "SBNN: start at τ = 1, φ = 0 (the released code) or at the closed-form "
                            "{α, β} of the initial weights with a fraction EC at β", ("standard", "closed_form"))
    lr_tau_phi: float = option(0.001, "SBNN: Adam learning rate of τ and φ")

    def validate(self) -> None:
        super().validate()
        if not 0 < self.ec < 1:
            raise ValueError(f"SBNN: ec must be in (0, 1), got {self.ec}")
        if not 0 <= self.gamma < 1:
            raise ValueError(f"SBNN: gamma must be in [0, 1), got {self.gamma}")
        if not self.lr_tau_phi >= 0:
            raise ValueError(f"SBNN: lr_tau_phi must be >= 0, got {self.lr_tau_phi}")

    @property
    def quantizer_lr(self) -> float:
        return self.lr_tau_phi


class SBNN(WeightQuantizer):
    """SBNN's per-layer quantizer: τ, φ (one each per layer, trained) and EDE's t (a buffer)."""

    name = "sbnn"
    description = "SBNN: binary weights in a learned {α, β} with an expected-connections constraint (METHODS §3)"
    Options = SBNNOptions
    packed_layer = "sbnn"

    def __init__(self, w: np.ndarray, options: SBNNOptions | None = None):
        super().__init__(w, options)
        self.options.validate()
        if w.size < 2:
            raise ValueError(f"SBNN: a compressed layer needs at least 2 weights, got shape {w.shape}")
        self.tau = nn.Parameter(np.asarray(1.0, dtype=w.dtype))
        self.phi = nn.Parameter(np.asarray(0.0, dtype=w.dtype))
        self.register_buffer("t", np.asarray(ede_t(0.0), dtype=np.float64))

    def init_weights(self, w: np.ndarray) -> None:
        if self.options.sbnn_init == "closed_form":
            self.set_closed_form(w, self.options.ec)

    def set_closed_form(self, w: np.ndarray, density: float) -> None:
        """τ, φ and the latent weights w (in place) from the closed form of w at `density`: afterwards
        the layer computes the {α, β} weights closest to w with ⌊density·N⌋ of them at β."""
        z, alpha, beta = closed_form(w, density)
        flat = np.asarray(w, np.float64).ravel()
        threshold = (flat[z.ravel()].min() + flat[~z.ravel()].max()) / 2  # between the two sets
        w[...] = (w.astype(np.float64) - threshold).astype(w.dtype)
        self.tau.data[...] = (beta - alpha) / 2
        self.phi.data[...] = (beta + alpha) / 2

    def forward(self, w: Tensor) -> Tensor:
        return sbnn_quantize(w, self.tau, self.phi, self.options.sbnn_ste, float(self.t))

    def quantizer_parameters(self) -> list[nn.Parameter]:
        return [self.tau, self.phi]

    def on_step(self, progress: float, w: np.ndarray) -> None:
        self.t[...] = ede_t(progress)

    def project_weights(self, w: np.ndarray) -> None:
        np.clip(w, -LATENT_BOUND, LATENT_BOUND, out=w)

    @classmethod
    def loss_term(cls, quantizers, weights, loss_value: float) -> Tensor | None:
        """The EC rule's λ·h over all the run's SBNN layers (p counts them together)."""
        if not quantizers:
            return None
        opts = quantizers[0].options
        return ec_penalty(connection_fraction(*weights), loss_value, opts.ec, opts.gamma)

    def levels(self) -> tuple[np.float32, np.float32]:
        """(α, β) as the forward pass computes them in float32."""
        tau, phi = np.float32(self.tau.data), np.float32(self.phi.data)
        return np.float32(phi - tau), np.float32(phi + tau)

    def mask(self, w: np.ndarray) -> np.ndarray:
        return np.ones(w.shape, dtype=bool)

    def count(self, w: np.ndarray) -> WeightCount:
        p = float((w >= 0).mean())
        return WeightCount(quantized=int(w.size), full=0, sparse=False, entropy_bits=w.size * binary_entropy(p))

    def coded(self, w: np.ndarray) -> tuple[str, np.ndarray]:
        """The minority value ("beta" when at most half the weights are at β, else "alpha") and its
        positions in the (out, K) row-major order of the weights."""
        z = (w >= 0).ravel()
        minority = "beta" if 2 * int(z.sum()) <= z.size else "alpha"
        return minority, np.flatnonzero(z if minority == "beta" else ~z)

    def coded_bits(self, w: np.ndarray) -> int:
        """Bits of the Golomb-Rice code of the minority positions (the packed streams before byte padding)."""
        gaps = rice_gaps(self.coded(w)[1])
        return rice_bits(gaps, rice_parameter(gaps))

    def layer_log(self, w: np.ndarray) -> dict[str, float]:
        alpha, beta = self.levels()
        p = float((w >= 0).mean())
        return {"tau": float(self.tau.data), "phi": float(self.phi.data), "alpha": float(alpha), "beta": float(beta),
                "p": p, "entropy_bits_per_weight": binary_entropy(p),
                "coded_bits_per_weight": self.coded_bits(w) / w.size}

    def pack(self, w: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """α, β and the Golomb-Rice coded positions of the minority value (METHODS §3.6)."""
        minority, positions = self.coded(w)
        k, quotients, remainders = rice_encode(positions)
        tensors = {"levels": np.asarray(self.levels(), np.float32), "rice_quotients": quotients,
                   "rice_remainders": remainders}
        return tensors, {"minority": minority, "positions": int(len(positions)), "rice_k": k}

    def extra_repr(self) -> str:
        return (f"tau={float(self.tau.data):.4g}, phi={float(self.phi.data):.4g}, ste={self.options.sbnn_ste}, "
                f"ec={self.options.ec}, gamma={self.options.gamma}")


def quantize_model(model: nn.Module, density: float | None = None) -> None:
    """One-shot post-training quantization: every SBNN layer of `model` takes the closed form of its
    current latent weights at `density` (default: its EC). For a trained full-precision model, build
    the same architecture with method "sbnn", load the FP weights into it
    (`load_state_dict(fp.state_dict(), strict=False)`) and call this."""
    for _, layer in quantized_layers(model):
        q = layer.weight_quantizer
        if isinstance(q, SBNN):
            q.set_closed_form(layer.weight.data, q.options.ec if density is None else density)


# --- op specs (apb_ref.testing): τ and φ by finite differences (q is linear in them), w against its
# declared straight-through estimator; the connection count against its declared 1/(2N) -------------
def _quantize_inputs(draw):
    w = random_array(draw, (draw_int(draw, 1, 3), draw_int(draw, 1, 5))) * 0.8
    w[np.abs(w) < 1e-3] += 0.01  # keep off sign's jump
    return [w, np.asarray(draw_float(draw, -1.5, 1.5)), np.asarray(draw_float(draw, -1.0, 1.0))], \
        {"t": draw_from(draw, [0.1, 0.5, 1.0, 3.0, 10.0])}


def _quantize_reference(w, tau, phi, t):
    return tau * np.where(w < 0, -1.0, 1.0) + phi


def _quantize_surrogate(ste):
    def surrogate(arrays, g, t):
        w, tau, _ = arrays
        if ste == "ede":
            d = max(1.0 / t, 1.0) * t * (1.0 - np.tanh(t * w) ** 2)
        else:
            d = (np.abs(w) <= 1) if ste == "clipped" else 1.0
        return {0: tau * g * d}
    return surrogate


def _fraction_inputs(draw):
    ws = [random_array(draw, (draw_int(draw, 1, 3), draw_int(draw, 1, 4))) for _ in range(draw_int(draw, 1, 3))]
    return ws, {}


def _fraction_reference(*ws):
    return sum((w >= 0).sum() for w in ws) / sum(w.size for w in ws)


def _fraction_surrogate(arrays, g):
    n = sum(w.size for w in arrays)
    return {i: np.full(w.shape, 0.5 * g / n) for i, w in enumerate(arrays)}


OP_SPECS = tuple(
    OpSpec(f"sbnn_quantize_{ste}", _quantize_inputs,
           (lambda s: lambda w, tau, phi, t: sbnn_quantize(w, tau, phi, s, t))(ste), (SBNNQuantize,),
           _quantize_reference, differentiable=(1, 2), surrogate=_quantize_surrogate(ste))
    for ste in STES
) + (
    OpSpec("sbnn_connection_fraction", _fraction_inputs, connection_fraction, (ConnectionFraction,),
           _fraction_reference, differentiable=(), surrogate=_fraction_surrogate),
)
SBNN.op_specs = OP_SPECS
