"""The Rust twins of the remaining training ops against their NumPy code, in float32.

Where the NumPy code is elementwise (the optimizer steps, the quantizers' forwards, the gradients
that only mask or scatter) the twin repeats its float32 operations in its order, so the results are
compared bit for bit (any NaN payload counts as the same NaN). Where it sums, both backends are held
to the rounding bound of a sum of L float32 terms, γ_L·Σ|terms| with γ_L = L·u/(1 − L·u) and
u = 2⁻²⁴ (Higham, Accuracy and Stability of Numerical Algorithms, §3.1), against the exact float64
result, whatever order each sums in.
"""
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from apb_ref.autograd import Tensor
from apb_ref.kernels import backend, use_backend
from apb_ref.nn import optim
from kernel_helpers import counting_twins, needs_rust, raw_rust  # noqa: F401
from strategies import float32_values

U = 2.0 ** -24
TINY = 2.0 ** -149  # the smallest float32 subnormal


def gamma_of(length):
    return length * U / (1 - length * U)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    return bool(((a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))).all())


# --- optimizer steps --------------------------------------------------------------------------------

class Param:
    def __init__(self, data, name=None):
        self.data, self.grad, self.name = data, None, name


def run_steps(make, datas, grads, backend_name):
    """`len(grads)` steps of the optimizer `make(params)` from `datas`; the final data and state."""
    params = [Param(d.copy()) for d in datas]
    opt = make(params)
    with use_backend(backend_name), np.errstate(all="ignore"):
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g
            opt.step()
    return [p.data for p in params], opt.state


OPTIMIZERS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd-wd": lambda ps: optim.SGD(ps, lr=0.05, weight_decay=5e-4),
    "sgd-momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-3),
    "sgd-dampening": lambda ps: optim.SGD(ps, lr=0.3, momentum=0.7, dampening=0.3),
    "sgd-nesterov": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda ps: optim.Adam(ps, lr=1e-3),
    "adam-l2": lambda ps: optim.Adam(ps, lr=3e-3, betas=(0.8, 0.99), weight_decay=0.1),
    "adamw": lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.05),
    "adamw-no-decay": lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.0, eps=1e-6),
}


@needs_rust
@pytest.mark.parametrize("name", OPTIMIZERS)
@settings(max_examples=15, deadline=None)
@given(shapes=st.lists(hnp.array_shapes(min_dims=0, max_dims=3, max_side=7), min_size=1, max_size=3),
       steps=st.integers(1, 4), seed=st.integers(0, 2**32 - 1), edges=st.booleans())
def test_optimizer_steps_equal_numpy_bit_for_bit(name, shapes, steps, seed, edges):
    """Several steps of each optimizer, the parameters and the whole state compared bit for bit; with
    `edges`, gradients and weights hold NaN, ±inf, ±0 and subnormals."""
    rng = np.random.default_rng(seed)
    datas = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[(rng.standard_normal(s) * 10.0 ** rng.integers(-4, 3)).astype(np.float32) for s in shapes]
             for _ in range(steps)]
    if edges:
        specials = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3e38])
        for a in datas + [g for gs in grads for g in gs]:
            a.reshape(-1)[::3] = rng.choice(specials, size=a.reshape(-1)[::3].shape)
    with counting_twins() as calls:
        want = run_steps(OPTIMIZERS[name], datas, grads, "numpy")
        assert not calls  # the NumPy backend never asks for a twin
        got = run_steps(OPTIMIZERS[name], datas, grads, "rust")
    assert sum(calls.values()) == steps * len(shapes)
    for a, b in zip(want[0], got[0]):
        assert same_bits(a, b), name
    assert want[1].keys() == got[1].keys()
    for key, state in want[1].items():
        assert state.keys() == got[1][key].keys()
        for k, v in state.items():
            assert same_bits(v, got[1][key][k]) if isinstance(v, np.ndarray) else v == got[1][key][k], (name, k)


@needs_rust
def test_optimizer_twins_update_the_arrays_in_place_and_step_aside_otherwise():
    """The twin writes p.data and the state arrays themselves; a non-contiguous parameter, a float64
    one or a NumPy float64 learning rate leaves the step to NumPy (which still updates in place)."""
    rng = np.random.default_rng(0)
    for make in (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.AdamW(ps, lr=0.01)):
        base = rng.standard_normal((4, 6)).astype(np.float32)
        cases = {"contiguous": (base.copy(), True), "strided": (base.copy()[:, ::2], False),
                 "float64": (base.astype(np.float64), False)}
        for label, (data, fast) in cases.items():
            p = Param(data)
            opt = make([p])
            before = p.data.copy()
            with counting_twins() as calls, use_backend("rust"):
                for _ in range(2):
                    p.grad = np.ones_like(p.data)
                    opt.step()
            assert p.data is data and not np.array_equal(data, before), label
            assert bool(calls) == fast, label
        p = Param(base.copy())
        opt = make([p])
        opt.param_groups[0]["lr"] = np.float64(0.1)
        with counting_twins() as calls, use_backend("rust"):
            p.grad = np.ones_like(p.data)
            opt.step()
        assert not calls


@needs_rust
@pytest.mark.parametrize("call, message", [
    (lambda r, a: r.sgd_step(a[:, ::2], np.ones((3, 2), np.float32), None, False, lr=0.1, momentum=0.0),
     "sgd_step: p must be a C-contiguous float32 array"),
    (lambda r, a: r.sgd_step(a, a[:1].copy(), None, False, lr=0.1, momentum=0.0),
     "sgd_step: g must be a C-contiguous float32 array of shape [3, 4]"),
    (lambda r, a: r.sgd_step(a, a.copy(), a.astype(np.float64), True, lr=0.1, momentum=0.9),
     "sgd_step: buf must be a C-contiguous float32 array of shape [3, 4]"),
    (lambda r, a: r.sgd_step(a, a, None, False, lr=0.1, momentum=0.0), "sgd_step: g"),
    (lambda r, a: r.sgd_step(a, a.copy(), None, False, lr=float("nan"), momentum=0.0), "lr must be a number"),
    (lambda r, a: r.adam_step(a, a.copy(), np.zeros(12, np.float32), a.copy(), beta1=0.9, one_minus_beta1=0.1,
                              beta2=0.9, one_minus_beta2=0.1, bias2_sqrt=1.0, eps=1e-8, step_size=1.0),
     "adam_step: v must be a C-contiguous float32 array of shape [3, 4]"),
    (lambda r, a: r.adam_step(a, a.copy(), a.copy(), a.copy(), beta1=0.9, one_minus_beta1=0.1, beta2=0.9,
                              one_minus_beta2=0.1, bias2_sqrt=1.0, eps=1e-8, step_size=1.0, l2=0.1, decay=0.9),
     "adam_step: give l2 or decay, not both"),
])
def test_optimizer_kernels_name_bad_arguments(raw_rust, call, message):  # noqa: F811
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(raw_rust, a)


@needs_rust
def test_a_read_only_parameter_is_refused_not_copied(raw_rust):  # noqa: F811
    p = np.zeros(5, np.float32)
    p.flags.writeable = False
    with pytest.raises(ValueError, match=re.escape("sgd_step: p must be writeable")):
        raw_rust.sgd_step(p, np.ones(5, np.float32), None, False, lr=0.1, momentum=0.0)


# --- DoReFa activation quantizer ----------------------------------------------------------------------

def dorefa_values():
    """float32 values with [0, 1] drawn often, exact halves between levels, NaN and the edges."""
    halves = st.sampled_from([np.nan, 0.5, 1 / 6, 0.5 / 3, 2.5 / 3, 1.5 / 15, 1.0000001, -1e-45])
    return st.one_of(float32_values(), st.floats(0, 1, width=32), halves)


def dorefa_results(x, g, levels, backend_name):
    from apb_ref.quant.activations import dorefa_quantize
    with use_backend(backend_name):
        xt = Tensor(x.copy(), requires_grad=True)
        y = dorefa_quantize(xt, bits=levels)
        y.backward(g)
    return y.data, xt.grad


@needs_rust
@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=9), elements=dorefa_values()),
       st.sampled_from([1, 2, 3, 4, 8, 24]), st.integers(0, 2**32 - 1))
def test_dorefa_equals_numpy_bit_for_bit(x, bits, seed):
    g = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    g.flat[::3] = np.float32([np.nan, np.inf, -0.0])[np.arange(g.size)[::3] % 3]  # NaN·0 stays NaN
    with counting_twins() as calls:
        want = dorefa_results(x, g, bits, "numpy")
        got = dorefa_results(x, g, bits, "rust")
    assert calls == {"dorefa_forward": 1, "dorefa_backward": 1}
    for a, b in zip(want, got):
        assert same_bits(a, b)


@needs_rust
def test_dorefa_kernels_name_bad_arguments(raw_rust):  # noqa: F811
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=re.escape("dorefa_forward: levels must be an integer >= 2")):
        raw_rust.dorefa_forward(x, 1)
    with pytest.raises(ValueError, match=re.escape("dorefa_forward: levels must be at most 16777217")):
        raw_rust.dorefa_forward(x, 2**24 + 2)
    with pytest.raises(ValueError, match=re.escape("dorefa_backward: x must have shape [2, 3]")):
        raw_rust.dorefa_backward(x, x[:1].copy())
    with pytest.raises(ValueError, match=re.escape("dorefa_forward: x must be a C-contiguous float32 array")):
        raw_rust.dorefa_forward(x.T, 4)


# --- APB weight quantizer ---------------------------------------------------------------------------

def apb_results(w, g, alpha, delta, margin, frozen, reduction, backend_name):
    from apb_ref.quant.apb import apb_quantize
    with use_backend(backend_name), np.errstate(all="ignore"):
        wt = Tensor(w.copy(), requires_grad=True)
        at, dt = Tensor(alpha.copy(), requires_grad=True), Tensor(delta.copy(), requires_grad=True)
        q = apb_quantize(wt, at, dt, margin, frozen, reduction)
        q.backward(g)
    return q.data, wt.grad, at.grad, dt.grad


@needs_rust
@settings(max_examples=60, deadline=None)
@given(hnp.array_shapes(min_dims=1, max_dims=4, max_side=9), st.floats(0.05, 1.0), st.floats(0.05, 1.0),
       st.sampled_from([1.0, 0.5, 1.0000001, 1.3]), st.booleans(), st.sampled_from(["mean", "sum"]),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_apb_forward_is_bit_exact_and_its_sums_within_float32_rounding(shape, alpha, delta, margin, frozen, reduction,
                                                                      edges, seed):
    """q, the mask and the weight gradient (g itself) bit for bit. The α and δ gradients are
    r·S_α and r·S_δ/δ with S the sums of N float32 terms t (gs and gs·(α − |w|), formed in float32
    the same way by both backends): NumPy sums them in float32, the twin in f64 and rounds once,
    so each is within γ_N·Σ|t| of the exact S, and the float32 steps r·S (and /δ), with r itself rounded
    to float32, add at most 3u (4u) relative: |got − r·S| ≤ |r|·(γ_N·Σ|t| + 4u·(|S| + γ_N·Σ|t|)) (/δ)."""
    rng = np.random.default_rng(seed)
    alpha, delta = np.asarray(alpha, np.float32), np.asarray(delta, np.float32)
    w = (rng.standard_normal(shape) * alpha * 1.5).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    # weights on the band's edges (|w| = α ± m·δ as float32), and their negatives
    edge = np.float32(alpha) + np.float32(margin) * delta * np.float32([1, -1])
    w.flat[::4] = np.resize(np.concatenate([edge, -edge]), w.flat[::4].shape)
    if edges:
        specials = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45])
        w.flat[1::5] = rng.choice(specials, size=w.flat[1::5].shape)
        g.flat[2::7] = rng.choice(specials, size=g.flat[2::7].shape)
    mask = rng.random(shape) < 0.5 if frozen else None
    with counting_twins() as calls:
        want = apb_results(w, g, alpha, delta, margin, mask, reduction, "numpy")
        got = apb_results(w, g, alpha, delta, margin, mask, reduction, "rust")
    assert calls == {"apb_forward": 1, "apb_backward": 1}
    assert same_bits(want[0], got[0]) and same_bits(want[1], got[1])
    used = mask if frozen else np.abs(np.abs(w) - alpha) < np.float32(margin) * delta
    with np.errstate(all="ignore"):
        gs = np.where(used, g * np.where(w < 0, np.float32(-1), np.float32(1)), np.float32(0))
        terms = (gs, gs * (alpha - np.abs(w)))
    r = 1.0 / w.size if reduction == "mean" else 1.0
    n = w.size
    for i, (term, divisor) in enumerate(zip(terms, (1.0, float(delta)))):
        t = term.astype(np.float64).ravel()
        if not np.isfinite(t).all():  # a NaN or an infinity: both NaN or the same infinity
            assert same_bits(want[2 + i], got[2 + i]), i
            continue
        exact = math.fsum(t)
        total = np.abs(t).sum()
        bound = abs(r) * (gamma_of(n) * total + 4 * U * (abs(exact) + gamma_of(n) * total)) / divisor
        # a step whose result is subnormal errs by up to a whole subnormal ulp, not u relative (1e-45 / 3
        # rounds to 0): at most 3 such float32 steps after the sum
        bound += 3 * TINY
        for name, res in (("numpy", want[2 + i]), ("rust", got[2 + i])):
            assert res.dtype == np.float32 and res.shape == ()
            assert abs(float(res) - r * exact / divisor) <= bound, (name, i, float(res), r * exact / divisor, bound)


@needs_rust
def test_apb_kernels_name_bad_arguments(raw_rust):  # noqa: F811
    w = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=re.escape("apb_forward: frozen_mask must be a C-contiguous bool array of shape [2, 3]")):
        raw_rust.apb_forward(w, 0.5, 0.5, 1.0, np.zeros((2, 3), np.int8))
    with pytest.raises(ValueError, match=re.escape("apb_backward: w must have shape [2, 3]")):
        raw_rust.apb_backward(w, w[:1].copy(), np.zeros((2, 3), bool), 0.5)
    with pytest.raises(ValueError, match=re.escape("apb_backward: mask must be a C-contiguous bool array")):
        raw_rust.apb_backward(w, w, np.zeros((3, 2), bool), 0.5)


# --- pooling ----------------------------------------------------------------------------------------

@st.composite
def pool_geometries(draw):
    """(n, c, h, w, k, stride, padding) as `_check_pool` accepts them (padding ≤ k//2, the window fits)."""
    k = draw(st.integers(1, 4))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, k // 2))
    h, w = (draw(st.integers(max(1, k - 2 * padding), 9)) for _ in range(2))
    return draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w, k, stride, padding


def pool_results(pool, x, g, k, stride, padding, backend_name):
    from apb_ref import ops as F
    with use_backend(backend_name), np.errstate(all="ignore"):
        xt = Tensor(x.copy(), requires_grad=True)
        y = getattr(F, pool)(xt, k, stride, padding)
        y.backward(g)
    return y.data, xt.grad


@needs_rust
@settings(max_examples=60, deadline=None)
@given(pool_geometries(), st.booleans(), st.integers(0, 2**32 - 1))
def test_max_pool_equals_numpy_bit_for_bit(geometry, specials, seed):
    """Ties (the first maximum wins), NaN (the first NaN wins), ±0, −inf windows and a NaN or
    infinite gradient (which NumPy's g·(winner == idx) spreads over its window as NaN)."""
    n, c, h, w, k, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = rng.integers(-2, 3, (n, c, h, w)).astype(np.float32)  # small integers: many ties
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    g = rng.standard_normal((n, c, ho, wo)).astype(np.float32)
    if specials:
        edge = np.float32([np.nan, -0.0, 0.0, -np.inf, np.inf])
        x.flat[::5] = rng.choice(edge, size=x.flat[::5].shape)
        g.flat[::7] = rng.choice(edge, size=g.flat[::7].shape)
    with counting_twins() as calls:
        want = pool_results("max_pool2d", x, g, k, stride, padding, "numpy")
        got = pool_results("max_pool2d", x, g, k, stride, padding, "rust")
    assert calls == {"max_pool_forward": 1, "max_pool_backward": 1}
    assert same_bits(want[0], got[0]) and same_bits(want[1], got[1])


@needs_rust
@settings(max_examples=60, deadline=None)
@given(pool_geometries(), st.integers(0, 2**32 - 1))
def test_avg_pool_gradient_is_bit_exact_and_its_forward_within_float32_rounding(geometry, seed):
    """The gradient (g/k² added window position by window position) bit for bit. The forward is a sum
    S of k² terms (the zero padding counted) divided by k²: each backend's float32 sum is within
    γ_{k²}·Σ|x| of S and the division rounds once more, so |y − S/k²| ≤ (γ_{k²}·A + u·(|S| + γ_{k²}·A))/k²
    with A the window's Σ|x|."""
    n, c, h, w, k, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, h, w)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    g = rng.standard_normal((n, c, ho, wo)).astype(np.float32)
    g.flat[::7] = -0.0
    with counting_twins() as calls:
        want = pool_results("avg_pool2d", x, g, k, stride, padding, "numpy")
        got = pool_results("avg_pool2d", x, g, k, stride, padding, "rust")
    assert calls == {"avg_pool_forward": 1, "avg_pool_backward": 1}
    assert same_bits(want[1], got[1])
    exact_sum = pool_results("avg_pool2d", x.astype(np.float64), g, k, stride, padding, "numpy")[0] * k * k
    abs_sum = pool_results("avg_pool2d", np.abs(x).astype(np.float64), g, k, stride, padding, "numpy")[0] * k * k
    gk = gamma_of(k * k)
    bound = (gk * abs_sum + U * (np.abs(exact_sum) + gk * abs_sum)) / (k * k)
    for name, y in (("numpy", want[0]), ("rust", got[0])):
        assert y.dtype == np.float32 and y.shape == exact_sum.shape
        err = np.abs(y.astype(np.float64) - exact_sum / (k * k))
        assert (err <= bound).all(), (name, np.max(err - bound))


@needs_rust
@pytest.mark.parametrize("call, message", [
    (lambda r, x: r.max_pool_forward(x.astype(np.float64), 2, 2, 0), "max_pool_forward: x must be a C-contiguous float32 4-D array"),
    (lambda r, x: r.max_pool_forward(x, 0, 2, 0), "max_pool_forward: k must be an integer >= 1"),
    (lambda r, x: r.avg_pool_forward(x, 7, 1, 0), "avg_pool_forward: a 7x7 kernel does not fit a 4x4 input"),
    (lambda r, x: r.avg_pool_forward(np.zeros((0, 3, 4, 4), np.float32), 2, 2, 0), "no empty axis"),
    (lambda r, x: r.avg_pool_backward(np.zeros((2, 3, 3, 2), np.float32), 4, 4, 2, 2, 0),
     "avg_pool_backward: g is 3x2 per channel, but the window makes 2x2 of a 4x4 input"),
    (lambda r, x: r.max_pool_backward(np.zeros((2, 3, 2, 2), np.float32), np.zeros((2, 3, 2, 2), np.int32), 4, 4, 2, 2, 0),
     "max_pool_backward: winner must be a C-contiguous int64 4-D array"),
    (lambda r, x: r.max_pool_backward(np.zeros((2, 3, 2, 2), np.float32), np.zeros((2, 3, 2, 1), np.int64), 4, 4, 2, 2, 0),
     "max_pool_backward: winner must have g's shape"),
])
def test_pool_kernels_name_bad_arguments(raw_rust, call, message):  # noqa: F811
    x = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(raw_rust, x)


# --- cross-entropy ----------------------------------------------------------------------------------

ULPS = 4  # exp and log: libm's and NumPy's SIMD float32 routines are each within a few ulps (≤ 2u·|v| per ulp)


def logp_bound(shifted, k):
    """|logp − exact| for logp = s − log Σ_j exp(s_j), s = x − max(x) (the same float32 in both backends):
    each exp within ULPS ulps (relative 2·ULPS·u), the row sum (every term positive, the largest 1)
    within γ_K relative, so log Σ within 2·ULPS·u + γ_K absolute (as 1.01×, for the log of 1 + δ), the
    log itself within ULPS ulps of |log Σ|, and the subtraction one rounding of |logp|."""
    s = shifted.astype(np.float64)
    lse = np.log(np.exp(s).sum(axis=1, keepdims=True))
    exact = s - lse
    return exact, 1.01 * (2 * ULPS * U + gamma_of(k)) + 2 * ULPS * U * np.abs(lse) + U * np.abs(exact)


def ce_forward(x, y, smoothing, backend_name):
    from apb_ref import ops as F
    with use_backend(backend_name), np.errstate(all="ignore"):
        xt = Tensor(x.copy(), requires_grad=True)
        loss = F.cross_entropy(xt, y, label_smoothing=smoothing)
        loss.backward()
    return loss, xt.grad


@needs_rust
@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 12), st.sampled_from([0.0, 0.1, 1 / 3, 0.05]), st.floats(0.1, 30),
       st.integers(0, 2**32 - 1))
def test_cross_entropy_is_within_a_few_ulps_of_exact(n, k, smoothing, scale, seed):
    """logp within `logp_bound`; the loss −Σ t·logp / N within Σ t·bound(logp) plus γ_{NK+1}·Σ|t·logp|
    (the products and the sum) over N, and 2u of |loss| (the rounding to float32 and the division);
    the gradient g·(exp(logp) − t)/N, from the same logp in both backends, within
    |g|/N·((2·ULPS + 1)·u·exp(logp) + 4u·|exp(logp) − t|), plus the subnormal spacing for each rounding
    of a result that underflows (exp, the product, the division)."""
    from types import SimpleNamespace

    from apb_ref.ops.norm_loss import CrossEntropy
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, k)) * scale).astype(np.float32)
    y = rng.integers(0, k, n)
    shifted = x - x.max(axis=1, keepdims=True)
    exact_logp, bound = logp_bound(shifted, k)
    t = np.full((n, k), smoothing / k, np.float32)
    t[np.arange(n), y] += 1.0 - smoothing
    t64 = t.astype(np.float64)
    exact_loss = -(t64 * exact_logp).sum() / n
    loss_bound = (1.01 * ((t64 * bound).sum() + gamma_of(n * k + 1) * np.abs(t64 * exact_logp).sum()) / n
                  + 2 * U * abs(exact_loss))
    with counting_twins() as calls:
        results = {b: ce_forward(x, y, smoothing, b) for b in ("numpy", "rust")}
    assert calls == {"cross_entropy_forward": 1, "cross_entropy_backward": 1}
    for name, (loss, gx) in results.items():
        assert loss.data.dtype == np.float32 and loss.data.shape == ()
        assert abs(float(loss.data) - exact_loss) <= loss_bound, name
        assert gx.dtype == np.float32 and gx.shape == x.shape
    # the backward alone, from one logp (each backend's forward's own is checked above)
    logp = (shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))).astype(np.float32)
    assert (np.abs(logp - exact_logp) <= bound).all()
    g = np.asarray(rng.standard_normal(), np.float32)
    e = np.exp(logp.astype(np.float64))
    exact_gx = float(g) * (e - t64) / n
    tiny = 2.0 ** -149  # the float32 subnormal spacing: the absolute error of a result that underflows
    gx_bound = abs(float(g)) / n * ((2 * ULPS + 1) * U * e + 4 * U * np.abs(e - t64) + ULPS * tiny) + 2 * tiny
    for name, ctx in (("numpy", SimpleNamespace(saved=(logp, t))),
                      ("rust", SimpleNamespace(saved=(logp, None), target=y.astype(np.int64), smoothing=smoothing))):
        with use_backend(name):
            gx, none = CrossEntropy.backward(ctx, g)
        assert none is None and gx.dtype == np.float32
        assert (np.abs(gx - exact_gx) <= gx_bound).all(), name


@needs_rust
def test_cross_entropy_twin_keeps_numpys_nan_and_infinity():
    """A NaN logit makes its row's logp and the loss NaN on both backends; a −inf logit a zero
    probability (its logp −inf, so with smoothing the loss is +inf, and without it NaN, 0·−inf)."""
    x = np.float32([[0.0, 1.0, 2.0], [0.5, np.nan, 0.0], [1.0, -np.inf, 0.0]])
    for smoothing, check in ((0.0, np.isnan), (0.1, np.isnan)):
        out = [ce_forward(x, np.array([0, 1, 2]), smoothing, b) for b in ("numpy", "rust")]
        assert all(check(float(loss.data)) for loss, _ in out)
        assert np.array_equal(np.isnan(out[0][1]), np.isnan(out[1][1]))
    x = x[[0, 2]]
    for smoothing, want in ((0.1, np.inf), (0.0, np.nan)):
        out = [float(ce_forward(x, np.array([0, 2]), smoothing, b)[0].data) for b in ("numpy", "rust")]
        assert np.array_equal(out, [want, want], equal_nan=True), (smoothing, out)


@needs_rust
def test_cross_entropy_kernels_name_bad_arguments(raw_rust):  # noqa: F811
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=re.escape("cross_entropy_forward: target must be a C-contiguous int64 1-D array")):
        raw_rust.cross_entropy_forward(x, np.zeros(2, np.int32), 0.0, 1.0)
    with pytest.raises(ValueError, match=re.escape("cross_entropy_forward: target must have 2 labels")):
        raw_rust.cross_entropy_forward(x, np.zeros(3, np.int64), 0.0, 1.0)
    with pytest.raises(ValueError, match=re.escape("cross_entropy_forward: target[1] = 3 is not a class in [0, 3)")):
        raw_rust.cross_entropy_forward(x, np.int64([0, 3]), 0.0, 1.0)
    with pytest.raises(ValueError, match=re.escape("cross_entropy_backward: logp must be a C-contiguous float32 2-D array")):
        raw_rust.cross_entropy_backward(1.0, x[0], np.zeros(2, np.int64), 0.0, 1.0)


@needs_rust
def test_optimizer_twins_step_aside_for_overlapping_arrays():
    """A gradient that is the parameter's own memory (or a state array overlapping another) leaves the
    step to NumPy instead of failing in the twin's borrow check."""
    for make in (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda ps: optim.Adam(ps, lr=0.01)):
        p = Param(np.linspace(-1, 1, 12, dtype=np.float32))
        q = Param(p.data.copy())
        opts = make([p]), make([q])
        with counting_twins() as calls:
            for _ in range(2):
                p.grad, q.grad = p.data, q.data.copy()
                with use_backend("rust"):
                    opts[0].step()
                with use_backend("numpy"):
                    opts[1].step()
        assert not calls and same_bits(p.data, q.data)
