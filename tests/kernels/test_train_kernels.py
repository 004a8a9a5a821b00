"""The Rust training kernels against their NumPy twins (the ops' own code), in float32.

Every result entry is a sum of L products (L: the reduction length of that product). Computed in
float32 in any order, a sum differs from the exact one by at most γ_L·Σ|terms|, γ_L = L·u/(1 − L·u)
with u = 2⁻²⁴ (Higham, Accuracy and Stability of Numerical Algorithms, §3.1). Both backends are
checked against the exact float64 result with that bound, so neither may be worse than float32
rounding allows, whatever order the GEMMs sum in.
"""
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from apb_ref import ops as F
from apb_ref.autograd import Tensor
from apb_ref.kernels import use_backend
from apb_ref.quant.activations import sign_ste
from kernel_helpers import counting_twins, needs_rust, raw_rust  # noqa: F401
from strategies import conv_geometries, float32_values

U = 2.0 ** -24


def gamma_of(length):
    return length * U / (1 - length * U)


def conv_products(x, w, g, stride, padding, backend):
    """y = conv2d(x, w) and the gradients of ⟨y, g⟩ with respect to x and w, on `backend`."""
    with use_backend(backend):
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, stride=stride, padding=padding)
        (y * Tensor(g)).sum().backward()
    return y.data, xt.grad, wt.grad


def assert_within_rounding(got, exact, scale, length, what):
    bound = gamma_of(length) * scale
    err = np.abs(got.astype(np.float64) - exact)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), f"{what}: |error| {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


@needs_rust
@settings(max_examples=60, deadline=None)
@given(conv_geometries(), st.integers(0, 2**32 - 1))
def test_rust_conv_products_are_within_float32_rounding(geometry, seed):
    n, c, h, w, o, k, stride, padding = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, k, k)).astype(np.float32)
    ho, wo = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    g = rng.standard_normal((n, o, ho, wo)).astype(np.float32)
    exact = conv_products(*(a.astype(np.float64) for a in (x, wt, g)), stride, padding, "numpy")
    scale = conv_products(*(np.abs(a).astype(np.float64) for a in (x, wt, g)), stride, padding, "numpy")
    # reduction lengths: forward C·k², input gradient at most O·k² (stride 1), weight gradient N·Ho·Wo
    lengths = (c * k * k, o * k * k, n * ho * wo)
    for backend in ("numpy", "rust"):
        got = conv_products(x, wt, g, stride, padding, backend)
        for name, r, e, s, length in zip(("y", "gx", "gw"), got, exact, scale, lengths):
            assert r.dtype == np.float32 and r.shape == e.shape
            assert_within_rounding(r, e, s, length, f"{backend} {name} of {geometry}")


@needs_rust
@pytest.mark.parametrize("stride, width, out", [(1, 18, 6), (1, 18, 8), (1, 9, 6), (1, 7, 6), (2, 18, 6)])
def test_every_isa_gives_the_same_bits(raw_rust, stride, width, out):  # noqa: F811
    """Direct path (8 output channels: both gradients from one padded g), im2col + GEMM; every ISA gives
    the scalar path's bits, and conv2d_backward gives the two separate gradients' bits."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((19, 5, 6, width)).astype(np.float32)
    w = rng.standard_normal((out, 5, 3, 3)).astype(np.float32)
    results = {}
    for isa in raw_rust.isa_available():
        y = raw_rust.conv2d_forward(x, w, stride, 1, isa=isa)
        g = np.ascontiguousarray(y[::-1])
        results[isa] = (y, raw_rust.conv2d_backward_input(g, w, 6, width, stride, 1, isa=isa),
                        raw_rust.conv2d_backward_weight(x, g, 3, 3, stride, 1, isa=isa),
                        *raw_rust.conv2d_backward(x, g, w, stride, 1, isa=isa))
    for isa, (y, gx, gw, gx2, gw2) in results.items():
        assert np.array_equal(gx, gx2) and np.array_equal(gw, gw2), isa
        assert all(np.array_equal(a, b) for a, b in zip((y, gx, gw), results["scalar"])), isa


@needs_rust
def test_rust_weight_gradient_is_the_same_on_one_and_two_threads(raw_rust):  # noqa: F811
    rng = np.random.default_rng(1)
    x = rng.standard_normal((19, 4, 7, 7)).astype(np.float32)
    g = rng.standard_normal((19, 6, 7, 7)).astype(np.float32)
    for width in (7, 17):  # im2col + GEMM, the direct path
        xw, gw = np.ascontiguousarray(np.resize(x, (19, 4, 7, width))), np.ascontiguousarray(np.resize(g, (19, 6, 7, width)))
        one, two = (raw_rust.conv2d_backward_weight(xw, gw, 3, 3, 1, 1, threads=t) for t in (1, 2))
        assert np.array_equal(one, two)


@needs_rust
@pytest.mark.parametrize("call, message", [
    (lambda r, x, w: r.conv2d_forward(x.astype(np.float64), w), "x must be a C-contiguous float32 4-D array"),
    (lambda r, x, w: r.conv2d_forward(np.ascontiguousarray(x[:, :2]), w), "x's channels and w's input channels: 2 != 3"),
    (lambda r, x, w: r.conv2d_forward(x, w, stride=0), "stride must be an integer >= 1"),
    (lambda r, x, w: r.conv2d_forward(np.zeros((2, 3, 1, 1), np.float32), w), "does not fit"),
    (lambda r, x, w: r.conv2d_forward(x, w, threads=0), "threads must be an integer in [1,"),
    (lambda r, x, w: r.conv2d_backward_input(np.zeros((2, 4, 5, 5), np.float32), w, 6, 6, 1, 1), "g is 5x5 per channel"),
    (lambda r, x, w: r.conv2d_backward_weight(x, np.zeros((3, 4, 6, 6), np.float32), 3, 3, 1, 1), "batch sizes: 3 != 2"),
    (lambda r, x, w: r.conv2d_backward(x, np.zeros((2, 5, 6, 6), np.float32), w, 1, 1),
     "g's channels and w's output channels: 5 != 4"),
    (lambda r, x, w: r.conv2d_backward(x, np.zeros((2, 4, 5, 6), np.float32), w, 1, 1), "g is 5x6 per channel"),
    (lambda r, x, w: r.conv2d_forward(np.zeros((0, 3, 6, 6), np.float32), w), "no empty axis"),
])
def test_rust_conv_kernels_name_bad_arguments(raw_rust, call, message):  # noqa: F811
    x = np.zeros((2, 3, 6, 6), np.float32)
    w = np.zeros((4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(raw_rust, x, w)


@needs_rust
def test_float64_convs_stay_in_numpy_so_the_gradient_checks_check_numpy():
    from apb_ref.ops import accel
    with use_backend("rust"):
        assert accel.kernel("conv2d_forward", np.zeros(1, np.float32)) is not None
        assert accel.kernel("conv2d_forward", np.zeros(1, np.float64)) is None
    with use_backend("numpy"):
        assert accel.kernel("conv2d_forward", np.zeros(1, np.float32)) is None


# --- batch norm ------------------------------------------------------------------------------------

def batch_norm_forward(x, gamma, beta, backend, eps=1e-5):
    with use_backend(backend):
        running = np.zeros(x.shape[1], x.dtype), np.ones(x.shape[1], x.dtype)
        return F.batch_norm(Tensor(x), Tensor(gamma), Tensor(beta), *running, training=True, momentum=0.1,
                            eps=eps).data


@needs_rust
@settings(max_examples=40, deadline=None)
@given(st.integers(2, 9), st.integers(1, 5), st.sampled_from([(), (1, 1), (3, 5), (8, 8)]), st.floats(-50, 50),
       st.integers(0, 2**32 - 1))
def test_batch_norm_forward_is_within_float32_rounding(n, c, spatial, offset, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c) + spatial) * rng.uniform(0.1, 10) + offset).astype(np.float32)
    gamma, beta = (rng.standard_normal(c).astype(np.float32) for _ in range(2))
    m = x.size // c
    axes = (0,) + tuple(range(2, x.ndim))
    per = (1, -1) + (1,) * (x.ndim - 2)
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=axes)
    s = 1 / np.sqrt(((x64 - mu.reshape(per)) ** 2).mean(axis=axes) + 1e-5)  # 1/σ
    xhat = (x64 - mu.reshape(per)) * s.reshape(per)
    exact = xhat * gamma.reshape(per) + beta.reshape(per)
    # μ from a sum of m terms; σ² from m squares (its relative error, halved by the square root, plus
    # the roundings of 1/sqrt); then x̂ = (x − μ)·(1/σ) and γ·x̂ + β, a few roundings each
    err_mu = (gamma_len := gamma_of(m) + U) * np.abs(x64).mean(axis=axes)
    err_xhat = (s * err_mu).reshape(per) + np.abs(xhat) * (gamma_len + 4 * U)
    bound = np.abs(gamma).reshape(per) * err_xhat + 2 * U * (np.abs(gamma.reshape(per) * xhat) + np.abs(beta).reshape(per))
    for backend in ("numpy", "rust"):
        got = batch_norm_forward(x, gamma, beta, backend).astype(np.float64)
        worst = np.max(np.abs(got - exact) - bound)
        assert worst <= 0, f"{backend}: beyond the bound by {worst:.3g}"


@needs_rust
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.integers(1, 5), st.sampled_from([(), (3, 5), (8, 8)]), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_batch_norm_backward_is_within_float32_rounding(n, c, spatial, input_grad, seed):
    from types import SimpleNamespace

    from apb_ref.ops import BatchNormTrain
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((n, c) + spatial).astype(np.float32)
    x = (rng.standard_normal(g.shape) * 3 + 1).astype(np.float32)
    gamma, inv_std = rng.standard_normal(c).astype(np.float32), rng.uniform(0.1, 10, c).astype(np.float32)
    mean = rng.standard_normal(c).astype(np.float32)
    m, axes, per = g.size // c, (0,) + tuple(range(2, g.ndim)), (1, -1) + (1,) * (g.ndim - 2)
    xhat = (x - mean.reshape(per)) * inv_std.reshape(per)  # what both backends normalise with (float32)
    g64, h64 = g.astype(np.float64), xhat.astype(np.float64)
    g_sum, gh_sum = g64.sum(axis=axes), (g64 * h64).sum(axis=axes)
    scale = (gamma.astype(np.float64) * inv_std).reshape(per)
    exact_gx = (g64 - (g_sum / m).reshape(per) - h64 * (gh_sum / m).reshape(per)) * scale
    gm = gamma_of(m + 1)  # a sum of m terms (products rounded once more)
    sum_bound, gh_bound = gm * np.abs(g64).sum(axis=axes), gm * np.abs(g64 * h64).sum(axis=axes)
    gx_bound = np.abs(scale) * ((sum_bound / m).reshape(per) + np.abs(h64) * (gh_bound / m).reshape(per)
                                + 4 * U * (np.abs(g64) + np.abs(g_sum / m).reshape(per)
                                           + np.abs(h64 * (gh_sum / m).reshape(per)))) + 2 * U * np.abs(exact_gx)
    for backend in ("numpy", "rust"):
        # the NumPy forward saves x̂, the Rust one x and the mean
        saved = (xhat, inv_std, gamma) if backend == "numpy" else (None, inv_std, gamma, x, mean)
        ctx = SimpleNamespace(saved=saved, needs_grad=(input_grad, True, True))
        with use_backend(backend):
            gx, d_gamma, d_beta = BatchNormTrain.backward(ctx, g)
        assert np.all(np.abs(d_beta - g_sum) <= sum_bound + U * np.abs(g_sum)), backend
        assert np.all(np.abs(d_gamma - gh_sum) <= gh_bound + U * np.abs(gh_sum)), backend
        if input_grad:
            assert gx.dtype == np.float32 and np.all(np.abs(gx - exact_gx) <= gx_bound), backend
        else:
            assert gx is None


@needs_rust
@pytest.mark.parametrize("call, message", [
    (lambda r, x, v: r.batch_norm_forward(x.astype(np.float64), v, v, 1e-5), "x must be a C-contiguous float32"),
    (lambda r, x, v: r.batch_norm_forward(x[0], v, v, 1e-5), "(N, C) or (N, C, H, W)"),
    (lambda r, x, v: r.batch_norm_forward(x, v[:2], v, 1e-5), "gamma must be a C-contiguous float32 array of shape (3,)"),
    (lambda r, x, v: r.batch_norm_forward(x, v, v, -1.0), "eps must be a finite number >= 0"),
    (lambda r, x, v: r.batch_norm_backward(x, x[:1].copy(), v, v, v), "x must have g's shape"),
    (lambda r, x, v: r.batch_norm_backward(x, x, v, v[:1], v), "mean must be a C-contiguous float32 array of shape (3,)"),
])
def test_batch_norm_kernels_name_bad_arguments(raw_rust, call, message):  # noqa: F811
    x, v = np.zeros((2, 3, 4, 4), np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=re.escape(message)):
        call(raw_rust, x, v)


@needs_rust
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.sampled_from([(1, 1), (3, 5), (8, 8)]),
       st.sampled_from(["relu", "hardtanh"]), st.booleans(), st.integers(0, 2**32 - 1))
def test_fused_batch_norm_act_gives_the_separate_ops_bits(n, c, spatial, act, residual, seed):
    """act(batch_norm(x) + r) in one Rust kernel equals batch norm, add and activation run one by one
    on the Rust backend, forward and every gradient, bit for bit."""
    rng = np.random.default_rng(seed)
    shape = (n, c, *spatial)
    if n * spatial[0] * spatial[1] < 2:
        return
    x, g = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    r = rng.standard_normal(shape).astype(np.float32) if residual else None
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    results = []
    for fused in (True, False):
        with counting_twins() as calls, use_backend("rust"):
            ts = [Tensor(a.copy(), requires_grad=True) for a in (x, gamma, beta, *(() if r is None else (r,)))]
            running = np.zeros(c, np.float32), np.ones(c, np.float32)
            rt = ts[3] if r is not None else None
            if fused:
                y = F.batch_norm_act(ts[0], ts[1], ts[2], *running, residual=rt, act=act, lo=-0.5, hi=0.75)
            else:
                y = F.batch_norm(ts[0], ts[1], ts[2], *running, True)
                y = y if rt is None else y + rt
                y = F.relu(y) if act == "relu" else F.hardtanh(y, -0.5, 0.75)
            y.backward(g)
        separate = sum(calls.get(f"{a}_{d}", 0) for a in ("relu", "hardtanh") for d in ("forward", "backward"))
        assert calls.get("batch_norm_forward") == calls.get("batch_norm_backward") == 1
        assert separate == (0 if fused else 2)  # the fused kernel ran the activation itself
        results.append([y.data, *running, *(t.grad for t in ts)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# --- activations -----------------------------------------------------------------------------------

@needs_rust
@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=4, max_side=9), elements=float32_values()),
       st.integers(0, 2**32 - 1))
def test_activations_equal_numpy_bit_for_bit(x, seed):
    g = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    g.flat[:: 3] = x.flat[:: 3]  # infinities and signed zeros in g too
    results = {}
    for backend in ("numpy", "rust"):
        with use_backend(backend):
            out = []
            for act in (F.relu, lambda t: F.hardtanh(t, -1.0, 0.5), lambda t: sign_ste(t, "clipped")):
                xt = Tensor(x.copy(), requires_grad=True)
                y = act(xt)
                y.backward(g)
                out += [y.data, xt.grad]
        results[backend] = out
    for a, b in zip(*results.values()):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        same_bits = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))  # any NaN payload
        assert same_bits.all()


@needs_rust
def test_activation_kernels_name_bad_arguments(raw_rust):  # noqa: F811
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=re.escape("relu_forward: x must be a C-contiguous float32 array")):
        raw_rust.relu_forward(x.astype(np.float64))
    with pytest.raises(ValueError, match=re.escape("relu_backward: y must have shape [2, 3]")):
        raw_rust.relu_backward(x, x[:1].copy())
    with pytest.raises(ValueError, match=re.escape("hardtanh_forward: need lo < hi")):
        raw_rust.hardtanh_forward(x, 1.0, -1.0)


@needs_rust
@settings(max_examples=30, deadline=None)
@given(st.integers(1, 9), st.integers(1, 5), st.sampled_from([(), (3, 5), (8, 8)]), st.integers(0, 2**32 - 1))
def test_batch_norm_eval_equals_numpy_bit_for_bit(n, c, spatial, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c) + spatial) * 4 + 1).astype(np.float32)
    gamma, beta, mean = (rng.standard_normal(c).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.01, 5, c).astype(np.float32)
    out = {}
    for backend in ("numpy", "rust"):
        with use_backend(backend):
            out[backend] = F.batch_norm(Tensor(x), Tensor(gamma), Tensor(beta), mean.copy(), var.copy(),
                                        training=False, momentum=0.1, eps=1e-5).data
    assert out["rust"].dtype == np.float32 and np.array_equal(out["numpy"].view(np.uint32), out["rust"].view(np.uint32))


@needs_rust
def test_edge_inputs_behave_as_on_numpy():
    """A NaN in a channel reaches the running variance on both backends; an empty batch stays in NumPy."""
    x = np.random.default_rng(3).standard_normal((4, 2, 3, 3)).astype(np.float32)
    x[1, 0, 2, 2] = np.nan
    w = np.ones((3, 2, 3, 3), np.float32)
    for backend in ("numpy", "rust"):
        with use_backend(backend):
            running = np.zeros(2, np.float32), np.ones(2, np.float32)
            F.batch_norm(Tensor(x), Tensor(np.ones(2, np.float32)), Tensor(np.zeros(2, np.float32)), *running,
                         training=True, momentum=0.1, eps=1e-5)
            assert np.isnan(running[1][0]) and np.isfinite(running[1][1]), backend
            empty = F.conv2d(Tensor(np.zeros((0, 2, 5, 5), np.float32)), Tensor(w), padding=1)
            assert empty.shape == (0, 3, 5, 5), backend
