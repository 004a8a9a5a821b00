"""Op-registry entries (apb_ref.testing) for the quantizer ops: forward references, finite
differences where the op has a true derivative, declared surrogate gradients where it is an STE."""
from __future__ import annotations

import numpy as np

from ..testing import OpSpec, random_array, register
from .activations import DoReFaQuantize, SignSTE, dorefa_quantize, sign_ste
from .apb import APBQuantize, SoftFPFraction, apb_quantize, soft_fp_fraction


def _apb_inputs(draw):
    """Weights, α, δ with no weight within 1e-2 of a band edge (where the forward jumps)."""
    from hypothesis import strategies as st
    shape = (draw(st.integers(1, 4)), draw(st.integers(2, 6)))
    w = random_array(draw, shape) * 0.5
    alpha = np.asarray(draw(st.floats(0.1, 0.6)))
    delta = np.asarray(draw(st.floats(0.3, 0.6)))
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


# "sum": α by finite differences (its exact derivative); w (identity STE) and δ by their formulas.
register(OpSpec("apb_quantize_sum", _apb_inputs, lambda w, a, d: apb_quantize(w, a, d, reduction="sum"),
                (APBQuantize,), _apb_reference, differentiable=(1,), surrogate=_apb_surrogate("sum")))
register(OpSpec("apb_quantize_mean", _apb_inputs, lambda w, a, d: apb_quantize(w, a, d, reduction="mean"),
                (APBQuantize,), _apb_reference, differentiable=(), surrogate=_apb_surrogate("mean")))


def _soft_inputs(draw):
    from hypothesis import strategies as st
    w = random_array(draw, (draw(st.integers(1, 3)), draw(st.integers(2, 5)))) * 0.5
    alpha = np.asarray(draw(st.floats(0.1, 0.5)))
    w[np.abs(np.abs(w) - alpha) < 1e-3] += 0.01  # keep off the kink of |·| at |w| = α
    w[np.abs(w) < 1e-3] += 0.01
    return [w, alpha, np.asarray(draw(st.floats(0.2, 0.6)))], {"tau": draw(st.sampled_from([0.1, 0.5]))}


def _soft_reference(w, alpha, delta, tau):
    z = (1.0 - np.abs(np.abs(w) - alpha) / delta) / tau
    return 1.0 - np.mean(1.0 / (1.0 + np.exp(-z)))


register(OpSpec("soft_fp_fraction", _soft_inputs, lambda w, a, d, tau: soft_fp_fraction(w, a, d, tau=tau),
                (SoftFPFraction,), _soft_reference))


def _act_inputs(draw):
    from hypothesis import strategies as st
    x = random_array(draw, (draw(st.integers(1, 4)), draw(st.integers(1, 5)))) * 1.5
    return [x], {}


register(OpSpec("sign_ste_identity", _act_inputs, lambda x: sign_ste(x, False), (SignSTE,),
                lambda x: np.where(x < 0, -1.0, 1.0), differentiable=(), surrogate=lambda a, g: {0: g}))
register(OpSpec("sign_ste_clipped", _act_inputs, lambda x: sign_ste(x, True), (SignSTE,),
                lambda x: np.where(x < 0, -1.0, 1.0), differentiable=(), surrogate=lambda a, g: {0: g * (np.abs(a[0]) <= 1)}))
register(OpSpec("dorefa2", _act_inputs, lambda x: dorefa_quantize(x, 2), (DoReFaQuantize,),
                lambda x: np.round(np.clip(x, 0, 1) * 3) / 3, differentiable=(),
                surrogate=lambda a, g: {0: g * ((a[0] >= 0) & (a[0] <= 1))}))
