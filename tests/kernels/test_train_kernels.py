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

from apb_ref import ops as F
from apb_ref.autograd import Tensor
from apb_ref.kernels import use_backend
from kernel_helpers import needs_rust, raw_rust  # noqa: F401
from strategies import conv_geometries

U = 2.0 ** -24


def gamma(length):
    return length * U / (1 - length * U)


def conv_products(x, w, g, stride, padding, backend):
    """y = conv2d(x, w) and the gradients of ⟨y, g⟩ with respect to x and w, on `backend`."""
    with use_backend(backend):
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        y = F.conv2d(xt, wt, stride=stride, padding=padding)
        (y * Tensor(g)).sum().backward()
    return y.data, xt.grad, wt.grad


def assert_within_rounding(got, exact, scale, length, what):
    bound = gamma(length) * scale
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
@pytest.mark.parametrize("stride, width", [(1, 18), (1, 9), (1, 7), (2, 18)])  # direct, direct but the weight gradient, im2col + GEMM twice
def test_every_isa_gives_the_same_bits(raw_rust, stride, width):  # noqa: F811
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 6, width)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    results = {}
    for isa in raw_rust.isa_available():
        y = raw_rust.conv2d_forward(x, w, stride, 1, isa=isa)
        g = np.ascontiguousarray(y[::-1])
        results[isa] = (y, raw_rust.conv2d_backward_input(g, w, 6, width, stride, 1, isa=isa),
                        raw_rust.conv2d_backward_weight(x, g, 3, 3, stride, 1, isa=isa))
    for isa, got in results.items():
        assert all(np.array_equal(a, b) for a, b in zip(got, results["scalar"])), isa


@needs_rust
def test_rust_weight_gradient_is_the_same_on_one_and_two_threads(raw_rust):  # noqa: F811
    rng = np.random.default_rng(1)
    x = rng.standard_normal((19, 4, 7, 7)).astype(np.float32)
    g = rng.standard_normal((19, 6, 7, 7)).astype(np.float32)
    for width in (7, 17):  # im2col + GEMM, the direct weight gradient
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
