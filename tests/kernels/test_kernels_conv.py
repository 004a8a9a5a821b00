"""im2col_bits and csr_conv2d: the convolution pieces of 1-bit packed inference.

The NumPy references are checked against definitions built from other kernels (pack_bits of im2col's
rows reordered to (i, j, channel); csr_matmul of im2col's columns), and the Rust kernels against the
references on awkward shapes: channel counts around word sizes (1, 3, 16, 63, 64, 65, 128), strides,
paddings wider than the kernel, single pixels, and thread counts 1 and 2.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_helpers import needs_rust, random_csr
from kernel_helpers import raw_rust  # noqa: F401  (a fixture)

from apb_ref.kernels import backend, reference

CHANNELS = [1, 3, 16, 31, 32, 63, 64, 65, 100, 128]


@st.composite
def conv_cases(draw):
    """(x, c, kh, kw, stride, padding) with the kernel fitting the padded input."""
    c = draw(st.sampled_from(CHANNELS))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride, padding = draw(st.integers(1, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, kh - 2 * padding), 6))
    w = draw(st.integers(max(1, kw - 2 * padding), 6))
    n = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(np.float32)
    x[np.abs(x) < 0.3] = 0.0  # zeros must count as +1, like pack_bits
    return x, c, kh, kw, stride, padding


def pixel_bits(x):
    """(N, H, W, ceil(C/64)) uint64: each pixel's channel signs, as packed inference makes them."""
    n, c, h, w = x.shape
    return reference.pack_bits(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).reshape(-1, c)).reshape(n, h, w, -1)


def pm1(x):
    """sign(x) as float32 ±1, sign(0) = +1: written here, independently of the code under test."""
    return np.where(x < 0, np.float32(-1), np.float32(1))


def hwc_rows(x, kh, kw, stride, padding):
    """im2col rows of sign(x) with columns reordered (i, j, channel); padding taps are 0."""
    n, c = x.shape[:2]
    rows = reference.im2col(pm1(x), kh, kw, stride, padding)
    return np.ascontiguousarray(rows.reshape(-1, c, kh, kw).transpose(0, 2, 3, 1)).reshape(len(rows), -1)


@settings(max_examples=60, deadline=None)
@given(case=conv_cases())
def test_im2col_bits_is_pack_bits_of_the_hwc_im2col(case):
    x, c, kh, kw, stride, padding = case
    got = reference.im2col_bits(pixel_bits(x), c, kh, kw, stride, padding)
    want = reference.pack_bits(hwc_rows(x, kh, kw, stride, padding))  # a 0 (padding) packs as +1
    np.testing.assert_array_equal(got, want)


@settings(max_examples=60, deadline=None)
@given(case=conv_cases(), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), signs=st.booleans())
def test_csr_conv2d_is_csr_matmul_of_the_im2col(case, density, signs):
    x, c, kh, kw, stride, padding = case
    _, (indptr, indices, data) = random_csr(np.random.default_rng(c), 5, c * kh * kw, density)
    inp = pm1(x) if signs else x
    want = reference.csr_matmul(indptr, indices, data, reference.im2col(inp, kh, kw, stride, padding, "columns"))
    got = reference.csr_conv2d(indptr, indices, data, x, kh, kw, stride, padding, signs=signs)
    assert_sums_close(got, want, (indptr, indices, data), inp, (kh, kw, stride, padding))


def assert_sums_close(got, want, csr, inp, conv):
    """got and want are the same sums of products added in different orders: each may differ by
    float32 rounding, at most about (terms)·eps of the sum of the terms' magnitudes."""
    indptr, indices, data = csr
    magnitude = reference.csr_matmul(indptr, indices, np.abs(data),
                                     reference.im2col(np.abs(inp), *conv, layout="columns"))
    terms = max(1, int(np.diff(indptr).max(initial=0)))
    bound = 2 * terms * np.finfo(np.float32).eps * magnitude + 1e-30
    assert got.shape == want.shape and (np.abs(got - want) <= bound).all()


def csr_conv2d_impls():
    """The NumPy reference, and the raw Rust binding when it is built."""
    rust = "rust" in backend.available_backends()
    return [reference.csr_conv2d] + ([backend._rust.csr_conv2d] if rust else [])


@pytest.mark.parametrize("fn", csr_conv2d_impls(), ids=lambda fn: fn.__module__)
@pytest.mark.parametrize("hw", [(0, 3), (3, 0), (0, 0)])
def test_csr_conv2d_of_an_empty_map_with_padding_is_zero(fn, hw):
    """A 0-high or 0-wide map padded by 1 still has 1×1 outputs (windows of padding only): zeros."""
    x = np.zeros((1, 2, *hw), np.float32)
    out = fn(np.array([0, 1]), np.array([0], np.int32), np.array([1.0], np.float32), x, 1, 1, 1, 1)
    h, w = hw
    assert out.shape == (1, (h + 2) * (w + 2)) and not out.any()


def test_csr_conv2d_adds_repeated_entries():
    x = np.ones((1, 1, 3, 3), np.float32)
    indptr, indices, data = np.array([0, 2]), np.array([4, 4], np.int32), np.array([1.0, 2.0], np.float32)
    np.testing.assert_array_equal(reference.csr_conv2d(indptr, indices, data, x, 3, 3, 1, 1)[0, 4], 3.0)


@needs_rust
@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=60, deadline=None)
@given(case=conv_cases())
def test_rust_im2col_bits_equals_the_reference(raw_rust, threads, case):
    x, c, kh, kw, stride, padding = case
    bits = pixel_bits(x)
    got = raw_rust.im2col_bits(bits, c, kh, kw, stride, padding, threads=threads)
    assert got.dtype == np.uint64 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, reference.im2col_bits(bits, c, kh, kw, stride, padding))


@needs_rust
@pytest.mark.parametrize("threads", [1, 2])
@settings(max_examples=60, deadline=None)
@given(case=conv_cases(), density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), signs=st.booleans())
def test_rust_csr_conv2d_equals_the_reference(raw_rust, threads, case, density, signs):
    x, c, kh, kw, stride, padding = case
    _, (indptr, indices, data) = random_csr(np.random.default_rng(c + 1), 4, c * kh * kw, density)
    args = (indptr, indices, data, x, kh, kw, stride, padding)
    got = raw_rust.csr_conv2d(*args, signs=signs, threads=threads)
    want = reference.csr_conv2d(*args, signs=signs)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert_sums_close(got, want, (indptr, indices, data), pm1(x) if signs else x, (kh, kw, stride, padding))


@pytest.mark.parametrize("fn", csr_conv2d_impls(), ids=lambda fn: fn.__module__)
def test_csr_conv2d_adds_to_a_given_array_in_place(fn):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 6, 7)).astype(np.float32)
    _, (indptr, indices, data) = random_csr(rng, 3, 5 * 9, 0.2)
    fresh = fn(indptr, indices, data, x, 3, 3, 2, 1, signs=True)
    base = rng.standard_normal(fresh.shape).astype(np.float32)
    acc = base.copy()
    assert fn(indptr, indices, data, x, 3, 3, 2, 1, signs=True, add_to=acc) is acc
    np.testing.assert_allclose(acc, base + fresh, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("fn", csr_conv2d_impls(), ids=lambda fn: fn.__module__)
def test_csr_conv2d_refuses_a_bad_add_to(fn):
    x = np.ones((1, 4, 3, 3), np.float32)  # 3x3 conv, padding 1: (O, 9) out
    csr = (np.array([0, 1, 1, 2, 2]), np.array([0, 5], np.int32), np.array([1.0, 2.0], np.float32))
    read_only = np.zeros((4, 9), np.float32)
    read_only.flags.writeable = False
    for bad in [np.zeros((4, 8), np.float32), np.zeros((4, 9)), np.zeros((9, 4), np.float32).T, read_only,
                x.reshape(4, 9), [[0.0] * 9] * 4]:
        with pytest.raises(ValueError, match="csr_conv2d.*add_to"):
            fn(*csr, x, 3, 3, 1, 1, add_to=bad)
    assert (read_only == 0).all()
    # Two arrays over one buffer have different base objects: still refused, x and data alike.
    raw = bytearray(np.ones(4 * 9 + 2, np.float32).tobytes())
    shared_x = np.frombuffer(memoryview(raw), np.float32)[:36].reshape(1, 4, 3, 3)
    shared_data = np.frombuffer(memoryview(raw), np.float32)[36:]
    over = {"start": np.frombuffer(memoryview(raw), np.float32)[:36], "end": np.frombuffer(memoryview(raw), np.float32)[2:]}
    for args, add_to in [((*csr, shared_x), over["start"]), ((csr[0], csr[1], shared_data, x), over["end"])]:
        with pytest.raises(ValueError, match="csr_conv2d.*add_to"):
            fn(*args, 3, 3, 1, 1, add_to=add_to.reshape(4, 9))

BAD_IM2COL_BITS = [
    ((np.zeros((1, 2, 2, 1), np.uint32), 16, 1, 1), "uint64"),
    ((np.zeros((1, 2, 2, 2), np.uint64), 16, 1, 1), "words"),
    ((np.zeros((2, 2, 1), np.uint64), 16, 1, 1), "4-D"),
    ((np.zeros((1, 2, 2, 1), np.uint64), 16, 3, 3), "does not fit"),
    ((np.full((1, 2, 2, 1), 1 << 40, np.uint64), 16, 1, 1), "padding bits"),
    ((np.zeros((1, 2, 2, 1), np.uint64), 16, 0, 1), "kh"),
    ((np.zeros((1, 2, 2, 1), np.uint64), 0, 1, 1), "c must"),
]


@pytest.mark.parametrize("args, words", BAD_IM2COL_BITS)
def test_im2col_bits_rejects_bad_input(args, words):
    with pytest.raises(ValueError, match="im2col_bits") as reference_error:
        reference.im2col_bits(*args)
    assert words in str(reference_error.value)
    if "rust" in backend.available_backends():
        with pytest.raises(ValueError, match="im2col_bits") as rust_error:
            backend._rust.im2col_bits(*args)
        assert words in str(rust_error.value)


def test_csr_conv2d_rejects_bad_input():
    x = np.zeros((1, 2, 3, 3), np.float32)
    ok = (np.array([0, 1]), np.array([17], np.int32), np.array([1.0], np.float32))
    for fn in csr_conv2d_impls():
        fn(*ok, x, 3, 3)  # column 17 < 2·3·3: fine
        with pytest.raises(ValueError, match="csr_conv2d.*indices"):
            fn(ok[0], np.array([18], np.int32), ok[2], x, 3, 3)
        with pytest.raises(ValueError, match="csr_conv2d.*x"):
            fn(*ok, x.astype(np.float64), 3, 3)
        with pytest.raises(ValueError, match="csr_conv2d.*fit"):
            fn(*ok, x, 5, 5)
        with pytest.raises(ValueError, match="csr_conv2d.*stride"):
            fn(*ok, x, 3, 3, 0)
        with pytest.raises(ValueError, match="csr_conv2d"):  # 2·padding overflows: an error, not a wrong size
            fn(*ok, x, 3, 3, 1, 2**63 - 1)


def test_huge_arguments_are_value_errors_not_wrong_sizes():
    bits = np.zeros((1, 5, 5, 1), np.uint64)
    impls = [reference.im2col_bits] + ([backend._rust.im2col_bits] if "rust" in backend.available_backends() else [])
    for fn in impls:
        with pytest.raises(ValueError, match="im2col_bits"):
            fn(bits, 3, 1, 1, 1, 2**63 - 1)
        with pytest.raises(ValueError, match="im2col_bits"):
            fn(np.zeros((1, 1, 1, 1), np.uint64), 1, 2**62, 2**62, 2**62, 2**61)
