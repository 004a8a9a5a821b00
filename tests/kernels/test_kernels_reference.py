"""The NumPy reference kernels (apb_ref.kernels.reference) against independent oracles.

* a dense float64 oracle: unpack to ±1 / {−3, −1, 1, 3} float64 matrices (with shifts, not the code under
  test) and matmul;
* for the 2-bit kernels, a second oracle: the three-plane identities of METHODS §1.9 (magnitude mask,
  sign of the ±3 entries, sign of the ±1 entries), which share nothing with the two-plane v = 2·hi + lo
  expansion the kernels use;
* an explicit loop im2col, apb_ref.testing.conv2d_reference, and scipy.sparse when it is installed.
"""
import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from kernel_helpers import (
    assert_close_scaled,
    last_word_mask,
    random_csr,
    unpack_2bit_f64,
    unpack_pm1,
    words_for,
)
from strategies import PACK_KS, row_counts

from apb_ref.kernels import reference
from apb_ref.testing import conv2d_reference

INT32_MAX = np.iinfo(np.int32).max
WEIGHT_SUM = {"bgemm_1x1": 1, "bgemm_1x2": 3, "bgemm_2x2": 9}  # largest |out| / K


def gemm_dims():
    """(M, N, K, seed) with M, N in 1..9 and K straddling word boundaries."""
    return st.tuples(row_counts(), row_counts(), st.sampled_from(PACK_KS), st.integers(0, 2**32 - 1))


def pm1(rng, rows, k):
    return rng.choice(np.array([-1.0, 1.0]), size=(rows, k))


def two_bit(rng, rows, k):
    return rng.choice(np.array([-3.0, -1.0, 1.0, 3.0]), size=(rows, k))


# --- popcount GEMMs against the dense float64 product ------------------------------------------------

EDGE_DIMS = [(1, 1, 1, 0), (1, 9, 577, 1), (9, 1, 64, 2), (1, 1, 65, 3)]


def _with_edges(test):
    for dims in EDGE_DIMS:
        test = example(dims=dims)(test)
    return test


@settings(max_examples=40, deadline=None)
@given(dims=gemm_dims())
@_with_edges
def test_bgemm_1x1_equals_dense_product(dims):
    m, n, k, seed = dims
    rng = np.random.default_rng(seed)
    a, b = pm1(rng, m, k), pm1(rng, n, k)
    pa, pb = reference.pack_bits(a), reference.pack_bits(b)
    np.testing.assert_array_equal(unpack_pm1(pa, k), a)  # the packing the product relies on
    out = reference.bgemm_1x1(pa, pb, k)
    assert out.dtype == np.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(out, a @ b.T)


@settings(max_examples=40, deadline=None)
@given(dims=gemm_dims())
@_with_edges
def test_bgemm_1x2_equals_dense_product(dims):
    m, n, k, seed = dims
    rng = np.random.default_rng(seed)
    a, v = pm1(rng, m, k), two_bit(rng, n, k)
    pa, (hi, lo) = reference.pack_bits(a), reference.pack_2bit(v)
    np.testing.assert_array_equal(unpack_2bit_f64(hi, lo, k), v)
    out = reference.bgemm_1x2(pa, hi, lo, k)
    assert out.dtype == np.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(out, a @ v.T)


@settings(max_examples=40, deadline=None)
@given(dims=gemm_dims())
@_with_edges
def test_bgemm_2x2_equals_dense_product(dims):
    m, n, k, seed = dims
    rng = np.random.default_rng(seed)
    u, v = two_bit(rng, m, k), two_bit(rng, n, k)
    (ah, al), (bh, bl) = reference.pack_2bit(u), reference.pack_2bit(v)
    out = reference.bgemm_2x2(ah, al, bh, bl, k)
    assert out.dtype == np.int32 and out.shape == (m, n)
    np.testing.assert_array_equal(out, u @ v.T)


@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (0, 0)])
def test_bgemm_empty_m_or_n(shape):
    m, n = shape
    a, b = np.zeros((m, 2), np.uint64), np.zeros((n, 2), np.uint64)
    assert reference.bgemm_1x1(a, b, 100).shape == (m, n)
    assert reference.bgemm_1x2(a, b, b, 100).shape == (m, n)
    out = reference.bgemm_2x2(a, a, b, b, 100)
    assert out.shape == (m, n) and out.dtype == np.int32


# --- packing --------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(dims=gemm_dims(), dtype=st.sampled_from([np.int8, np.int16, np.int64, np.float32, np.float64]))
def test_pack_2bit_round_trip_and_planes(dims, dtype):
    rows, _, k, seed = dims
    v = two_bit(np.random.default_rng(seed), rows, k).astype(dtype)
    hi, lo = reference.pack_2bit(v)
    assert hi.dtype == lo.dtype == np.uint64 and hi.shape == lo.shape == (rows, words_for(k))
    back = reference.unpack_2bit(hi, lo, k)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, v)
    # The planes themselves: hi bit = 1[v < 0], lo bit = 1[v ∈ {1, −3}]; padding bits are 0.
    np.testing.assert_array_equal(unpack_pm1(hi, k) < 0, v < 0)
    np.testing.assert_array_equal(unpack_pm1(lo, k) < 0, np.isin(v, (1, -3)))
    assert not (hi[:, -1] & ~last_word_mask(k)).any() and not (lo[:, -1] & ~last_word_mask(k)).any()


@settings(max_examples=40, deadline=None)
@given(bits=st.tuples(row_counts(), st.sampled_from(PACK_KS)).flatmap(lambda s: hnp.arrays(np.bool_, s)))
def test_pack_mask_equals_pack_bits_of_minus_one_where_true(bits):
    got = reference.pack_mask(bits)
    np.testing.assert_array_equal(got, reference.pack_bits(np.where(bits, -1, 1)))
    np.testing.assert_array_equal(unpack_pm1(got, bits.shape[1]) < 0, bits)


# --- the three-plane identities (METHODS §1.9), a second oracle for the 2-bit kernels ---------------

def three_planes(v):
    """(Mk, A, Bp) packed with pack_mask from v ∈ {−3, −1, 1, 3}: Mk = 1[|v| = 3], A = sign bit of the
    ±3 entries, Bp = sign bit of the ±1 entries (bit 1 = negative, as everywhere)."""
    v = np.asarray(v)
    big, neg = np.abs(v) == 3, v < 0
    return reference.pack_mask(big), reference.pack_mask(neg & big), reference.pack_mask(neg & ~big)


def _pop(x, y, region):
    """(M, N) popcount((x_i ⊕ y_j) ∧ region_ij); x (M, W), y (N, W), region (M, N, W)."""
    return np.bitwise_count((x[:, None, :] ^ y[None, :, :]) & region).sum(axis=-1, dtype=np.int64)


def _count(region):
    return np.bitwise_count(region).sum(axis=-1, dtype=np.int64)


def _valid(k, w):
    """(W,) uint64 with the first k bits set: ¬ must not switch the padding on."""
    valid = np.full(w, np.uint64(2**64 - 1))
    valid[-1] = last_word_mask(k)
    return valid


def three_plane_1x2(a, v, k):
    """Σ_t w_t·v_t for packed ±1 rows `a` (M, W) and 2-bit rows v (N, K): K + 2C − 6·S1 − 2·S2."""
    mk, big_sign, small_sign = three_planes(v)
    not_mk = ~mk & _valid(k, mk.shape[1])
    c = _count(mk)[None, :]
    s1 = _pop(a, big_sign, mk[None, :, :])
    s2 = _pop(a, small_sign, not_mk[None, :, :])
    return k + 2 * c - 6 * s1 - 2 * s2


def three_plane_2x2(u, v, k):
    """Σ_t u_t·v_t = 9(C1 − 2S1) + 3(C2 + C3 − 2S2 − 2S3) + (K − C_or − 2S4)."""
    ma, aa, ba = three_planes(u)
    mb, ab, bb = three_planes(v)
    valid = _valid(k, ma.shape[1])
    ma3, mb3 = ma[:, None, :], mb[None, :, :]
    r1 = ma3 & mb3
    r2 = ma3 & ~mb3 & valid
    r3 = ~ma3 & mb3 & valid
    either = ma3 | mb3
    r4 = ~either & valid
    s1, s2, s3, s4 = _pop(aa, ab, r1), _pop(aa, bb, r2), _pop(ba, ab, r3), _pop(ba, bb, r4)
    return (9 * (_count(r1) - 2 * s1) + 3 * (_count(r2) + _count(r3) - 2 * s2 - 2 * s3)
            + (k - _count(either) - 2 * s4))


@settings(max_examples=40, deadline=None)
@given(dims=gemm_dims())
@_with_edges
def test_three_plane_identities_agree_with_two_plane_kernels(dims):
    m, n, k, seed = dims
    rng = np.random.default_rng(seed)
    a, u, v = pm1(rng, m, k), two_bit(rng, m, k), two_bit(rng, n, k)
    pa = reference.pack_bits(a)
    want_1x2, want_2x2 = three_plane_1x2(pa, v, k), three_plane_2x2(u, v, k)
    # The oracle is itself right (it must not agree with the kernels by sharing a mistake) ...
    np.testing.assert_array_equal(want_1x2, a @ v.T)
    np.testing.assert_array_equal(want_2x2, u @ v.T)
    # ... and the two-plane kernels equal it exactly.
    np.testing.assert_array_equal(reference.bgemm_1x2(pa, *reference.pack_2bit(v), k), want_1x2)
    np.testing.assert_array_equal(reference.bgemm_2x2(*reference.pack_2bit(u), *reference.pack_2bit(v), k),
                                  want_2x2)


# --- extreme values ---------------------------------------------------------------------------------

def _extreme_operands(kind, rng, m, n, k, sign):
    """Operands whose rows are all the same vector s (A) and sign·s (B) at full magnitude."""
    s = pm1(rng, 1, k)
    a_rows, b_rows = np.repeat(s, m, axis=0), np.repeat(sign * s, n, axis=0)
    if kind == "bgemm_1x1":
        return reference.pack_bits(a_rows), reference.pack_bits(b_rows)
    if kind == "bgemm_1x2":
        return (reference.pack_bits(a_rows), *reference.pack_2bit(3 * b_rows))
    return (*reference.pack_2bit(3 * a_rows), *reference.pack_2bit(3 * b_rows))


@pytest.mark.parametrize("kind", list(WEIGHT_SUM))
@pytest.mark.parametrize("k", [*PACK_KS, 4608])
@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("pattern", ["constant", "random"])
def test_all_equal_and_all_opposite_give_plus_minus_weight_times_k(kind, k, sign, pattern):
    rng = _ConstRng() if pattern == "constant" else np.random.default_rng(k)
    ops = _extreme_operands(kind, rng, 3, 2, k, sign)
    out = getattr(reference, kind)(*ops, k)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, np.full((3, 2), sign * WEIGHT_SUM[kind] * k))


class _ConstRng:
    """Stands in for a Generator: every 'random' ±1 vector is all +1."""

    @staticmethod
    def choice(values, size):
        return np.ones(size)


def _all_ones_plane(k):
    p = np.full((1, words_for(k)), np.uint64(2**64 - 1))
    p[:, -1] = last_word_mask(k)
    return p


def test_largest_k_does_not_overflow_2x2():
    k = INT32_MAX // 9  # 238_609_294 bits: one row per operand is 30 MB
    zeros, ones = np.zeros((1, words_for(k)), np.uint64), _all_ones_plane(k)
    # v = 3 is (hi, lo) = (+, +), bits (0, 0); v = −3 is bits (1, 1).
    assert reference.bgemm_2x2(zeros, zeros, zeros, zeros, k).tolist() == [[9 * k]]
    assert reference.bgemm_2x2(zeros, zeros, ones, ones, k).tolist() == [[-9 * k]]
    assert 9 * k <= INT32_MAX


def test_largest_k_does_not_overflow_1x2():
    k = INT32_MAX // 3  # 89 MB per row
    zeros = np.zeros((1, words_for(k)), np.uint64)
    assert reference.bgemm_1x2(zeros, zeros, zeros, k).tolist() == [[3 * k]]


@pytest.mark.parametrize("kind", list(WEIGHT_SUM))
def test_k_above_the_int32_limit_is_refused(kind):
    limit = INT32_MAX // WEIGHT_SUM[kind]
    # k is checked before the operands, so tiny arrays suffice (W does not match k, on purpose).
    small = np.zeros((1, 1), np.uint64)
    n_planes = {"bgemm_1x1": 2, "bgemm_1x2": 3, "bgemm_2x2": 4}[kind]
    with pytest.raises(ValueError, match=rf"{kind}: k must be in \[1, {limit}\] .*overflow.*got {limit + 1}"):
        getattr(reference, kind)(*[small] * n_planes, limit + 1)


# --- sparse × dense --------------------------------------------------------------------------------

def csr_dims():
    """(M, K, N, density, fraction of empty rows, seed)."""
    return st.tuples(row_counts(), st.integers(1, 40), row_counts(),
                     st.sampled_from([0.0, 0.05, 0.3, 0.7, 1.0]), st.sampled_from([0.0, 0.3]),
                     st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None)
@given(dims=csr_dims())
@example(dims=(1, 1, 1, 1.0, 0.0, 0))
@example(dims=(4, 7, 1, 0.0, 0.0, 1))     # nnz = 0
@example(dims=(1, 40, 9, 0.3, 0.0, 2))
@example(dims=(9, 5, 3, 0.7, 0.3, 3))     # empty rows
def test_csr_matmul_equals_dense_product(dims):
    m, k, n, density, empty_rows, seed = dims
    rng = np.random.default_rng(seed)
    dense, (indptr, indices, data) = random_csr(rng, m, k, density, empty_rows)
    x = (rng.standard_normal((k, n)) * 10.0 ** rng.integers(-3, 4, size=(k, 1))).astype(np.float32)
    got = reference.csr_matmul(indptr, indices, data, x)
    assert got.dtype == np.float32 and got.shape == (m, n)
    d64, x64 = dense.astype(np.float64), x.astype(np.float64)
    assert_close_scaled(got, d64 @ x64, np.abs(d64) @ np.abs(x64))
    np.testing.assert_array_equal(got[np.diff(indptr) == 0], 0.0)  # empty rows are exactly 0
    try:
        import scipy.sparse
    except ImportError:
        return
    sp = scipy.sparse.csr_matrix((data, indices, indptr), shape=(m, k))
    assert_close_scaled(got, sp.astype(np.float64) @ x64, np.abs(d64) @ np.abs(x64))


def test_csr_matmul_empty_shapes():
    x = np.ones((3, 4), np.float32)
    out = reference.csr_matmul(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), x)
    assert out.shape == (0, 4) and out.dtype == np.float32
    out = reference.csr_matmul(np.array([0, 1], np.int64), np.array([2], np.int32), np.ones(1, np.float32),
                               np.ones((3, 0), np.float32))
    assert out.shape == (1, 0)


# --- im2col ----------------------------------------------------------------------------------------

def im2col_loops(x, kh, kw, stride, padding):
    """The definition, one element at a time."""
    n, c, h, w = x.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    out = np.empty((n * ho * wo, c * kh * kw), x.dtype)
    for b in range(n):
        for oi in range(ho):
            for oj in range(wo):
                row = (b * ho + oi) * wo + oj
                col = 0
                for ch in range(c):
                    for i in range(kh):
                        for j in range(kw):
                            r, s = oi * stride + i - padding, oj * stride + j - padding
                            inside = 0 <= r < h and 0 <= s < w
                            out[row, col] = x[b, ch, r, s] if inside else 0.0
                            col += 1
    return out


def im2col_dims():
    """(N, C, H, W, kh, kw, stride, padding, O, seed)."""
    return st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6),
                     st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2),
                     st.integers(1, 3), st.integers(0, 2**32 - 1))


@settings(max_examples=40, deadline=None)
@given(dims=im2col_dims())
@example(dims=(1, 1, 1, 1, 1, 1, 1, 0, 1, 0))
@example(dims=(2, 3, 5, 4, 3, 2, 2, 2, 2, 1))
def test_im2col_equals_loops_and_gives_the_convolution(dims):
    n, c, h, w, kh, kw, stride, padding, o, seed = dims
    assume(h + 2 * padding >= kh and w + 2 * padding >= kw)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    cols = reference.im2col(x, kh, kw, stride, padding)
    want = im2col_loops(x, kh, kw, stride, padding)
    assert cols.dtype == np.float32 and cols.shape == want.shape
    np.testing.assert_array_equal(cols, want)
    columns = reference.im2col(x, kh, kw, stride, padding, layout="columns")
    assert columns.flags.c_contiguous
    np.testing.assert_array_equal(columns, want.T)

    weight = rng.standard_normal((o, c, kh, kw))
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    y = (cols.astype(np.float64) @ weight.reshape(o, -1).T).reshape(n, ho, wo, o).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(y, conv2d_reference(x.astype(np.float64), weight, stride, padding),
                               rtol=1e-12, atol=1e-12)


# --- bad input names the argument --------------------------------------------------------------------

U = np.uint64


def _p(rows, words, value=0):
    return np.full((rows, words), U(value), np.uint64)


BAD_CALLS = [
    # packed operands
    (lambda: reference.bgemm_1x1(np.zeros((2, 1)), _p(2, 1), 3), r"bgemm_1x1: a must be a uint64 .*float64"),
    (lambda: reference.bgemm_1x1(_p(2, 1), np.zeros((2, 1), np.uint32), 3), r"bgemm_1x1: b must be a uint64 .*uint32"),
    (lambda: reference.bgemm_1x1([[0]], _p(2, 1), 3), r"bgemm_1x1: a must be a uint64 .*list"),
    (lambda: reference.bgemm_1x1(np.zeros(2, np.uint64), _p(2, 1), 3), r"bgemm_1x1: a must be 2-D .*\(2,\)"),
    (lambda: reference.bgemm_1x2(_p(2, 1), np.zeros((2, 1, 1), np.uint64), _p(2, 1), 3),
     r"bgemm_1x2: b_hi must be 2-D .*\(2, 1, 1\)"),
    (lambda: reference.bgemm_1x1(_p(2, 2), _p(2, 1), 64), r"bgemm_1x1: a has 2 words per row, but k = 64 needs"),
    (lambda: reference.bgemm_1x1(_p(2, 1), _p(2, 2), 64), r"bgemm_1x1: b has 2 words per row, but k = 64 needs"),
    (lambda: reference.bgemm_1x1(_p(2, 2), _p(2, 2), 64), r"bgemm_1x1: a has 2 words per row, but k = 64 needs "
                                                          r"ceil\(k/64\) = 1"),
    (lambda: reference.bgemm_1x1(_p(2, 1), _p(2, 1), 0), r"bgemm_1x1: k must be a positive integer, got 0"),
    (lambda: reference.bgemm_1x1(_p(2, 1), _p(2, 1), True), r"bgemm_1x1: k must be a positive integer, got True"),
    (lambda: reference.bgemm_2x2(*[_p(2, 1)] * 4, 3.0), r"bgemm_2x2: k must be a positive integer, got 3.0"),
    (lambda: reference.bgemm_1x1(_p(2, 1), _p(2, 1), -5), r"bgemm_1x1: k must be a positive integer, got -5"),
    (lambda: reference.bgemm_1x1(_p(2, 1), _p(2, 1, 1 << 3), 3),
     r"bgemm_1x1: b has non-zero padding bits past k = 3 \(first in row 0\)"),
    (lambda: reference.bgemm_2x2(_p(2, 1), _p(2, 1), _p(2, 1), _p(2, 1, 1 << 63), 63),
     r"bgemm_2x2: b_lo has non-zero padding bits past k = 63"),
    (lambda: reference.bgemm_1x2(_p(2, 1), _p(2, 1), _p(3, 1), 3),
     r"bgemm_1x2: b_hi and b_lo must have the same shape, got \(2, 1\) and \(3, 1\)"),
    (lambda: reference.bgemm_2x2(_p(2, 1), _p(1, 1), _p(2, 1), _p(2, 1), 3),
     r"bgemm_2x2: a_hi and a_lo must have the same shape"),
    # packing
    (lambda: reference.pack_2bit(np.array([[1, 2, 3]])), 
     # (the NumPy message shows the repr of a NumPy scalar, "np.int64(2)"; Rust says "2")
     r"pack_2bit: v must hold only -3, -1, 1, 3; got (np\.int64\()?2\)? at row 0, column 1"),
    (lambda: reference.pack_2bit(np.array([[1.0, np.nan]])), r"pack_2bit: v must hold only .*nan"),
    (lambda: reference.pack_2bit(np.array([1, 3])), r"pack_2bit: v must be a 2-D .*\(2,\)"),
    (lambda: reference.pack_2bit(np.array([["1"]])), r"pack_2bit: v must be a 2-D float or integer array"),
    (lambda: reference.pack_bits(np.array([[1.0, -2.0, np.nan]], np.float32)),
     r"pack_bits: x contains NaN \(first at row 0, column 2\)"),
    (lambda: reference.pack_mask(np.ones((2, 3), np.int8)), r"pack_mask: bits must be a 2-D bool array, got dtype int8"),
    (lambda: reference.pack_mask(np.ones(3, bool)), r"pack_mask: bits must be a 2-D bool array.*\(3,\)"),
    # CSR
    (lambda: reference.csr_matmul(np.array([0, 1, 2], np.int64), np.array([0, 1, 2], np.int32),
                                  np.ones(3, np.float32), np.ones((3, 2), np.float32)),
     r"csr_matmul: indptr\[-1\] = 2, len\(indices\) = 3 and len\(data\) = 3 must be equal"),
    (lambda: reference.csr_matmul(np.array([0, 1, 2], np.int64), np.array([0, 1], np.int32),
                                  np.ones(3, np.float32), np.ones((3, 2), np.float32)),
     r"csr_matmul: .*len\(data\) = 3 must be equal"),
    (lambda: reference.csr_matmul(np.array([0, 2, 1, 2], np.int64), np.array([0, 1], np.int32),
                                  np.ones(2, np.float32), np.ones((3, 2), np.float32)),
     r"csr_matmul: indptr must be non-decreasing"),
    (lambda: reference.csr_matmul(np.array([1, 2], np.int64), np.array([0], np.int32),
                                  np.ones(1, np.float32), np.ones((3, 2), np.float32)),
     r"csr_matmul: indptr must start with 0"),
    (lambda: reference.csr_matmul(np.zeros(0, np.int64), np.zeros(0, np.int32),
                                  np.zeros(0, np.float32), np.ones((3, 2), np.float32)),
     r"csr_matmul: indptr must start with 0 and have M \+ 1 entries"),
    (lambda: reference.csr_matmul(np.array([0, 2], np.int64), np.array([0, 3], np.int32),
                                  np.ones(2, np.float32), np.ones((3, 2), np.float32)),
     r"csr_matmul: indices must lie in \[0, 3\).*got values in \[0, 3\]"),
    (lambda: reference.csr_matmul(np.array([0, 2], np.int64), np.array([-1, 0], np.int32),
                                  np.ones(2, np.float32), np.ones((3, 2), np.float32)),
     r"csr_matmul: indices must lie in \[0, 3\)"),
    (lambda: reference.csr_matmul(np.array([0, 1], np.int64), np.array([0], np.int64),
                                  np.ones(1, np.float32), np.ones((3, 2), np.float32)),
     r"csr_matmul: indices must be a 1-D int32 array, got dtype int64"),
    (lambda: reference.csr_matmul(np.array([0, 1], np.int32), np.array([0], np.int32),
                                  np.ones(1, np.float32), np.ones((3, 2), np.float32)),
     r"csr_matmul: indptr must be a 1-D int64 array, got dtype int32"),
    (lambda: reference.csr_matmul(np.array([0, 1], np.int64), np.array([0], np.int32),
                                  np.ones(1, np.float64), np.ones((3, 2), np.float32)),
     r"csr_matmul: data must be a 1-D float32 array, got dtype float64"),
    (lambda: reference.csr_matmul(np.array([0, 1], np.int64), np.array([0], np.int32),
                                  np.ones(1, np.float32), np.ones((3, 2))),
     r"csr_matmul: x must be a 2-D float32 array \(K, N\), got dtype float64"),
    (lambda: reference.csr_matmul(np.array([0, 1], np.int64), np.array([0], np.int32),
                                  np.ones(1, np.float32), np.ones(3, np.float32)),
     r"csr_matmul: x must be a 2-D float32 array \(K, N\), got dtype float32 shape \(3,\)"),
    # im2col
    (lambda: reference.im2col(np.ones((1, 1, 2, 2), np.float32), 3, 3, 1, 0),
     r"im2col: a 3x3 kernel does not fit a 2x2 input with padding 0"),
    (lambda: reference.im2col(np.ones((1, 1, 4, 4), np.float32), 3, 3, 1, -1),
     r"im2col: padding must be an integer ≥ 0, got -1"),
    (lambda: reference.im2col(np.ones((1, 4, 4), np.float32), 3, 3), r"im2col: x must be a 4-D float32 array"),
    (lambda: reference.im2col(np.ones((1, 1, 4, 4), np.float32), 3, 3, layout="cols"),
     r"im2col: layout must be one of \('rows', 'columns'\), got 'cols'"),
    (lambda: reference.im2col(np.ones((1, 1, 4, 4)), 3, 3), r"im2col: x must be a 4-D float32 .*float64"),
    (lambda: reference.im2col(np.ones((1, 1, 4, 4), np.float32), 3, 3, 0), r"im2col: stride must be an integer ≥ 1"),
    (lambda: reference.im2col(np.ones((1, 1, 4, 4), np.float32), 0, 3), r"im2col: kh must be an integer ≥ 1"),
]


@pytest.mark.parametrize("call, message", BAD_CALLS, ids=[f"bad{i}" for i in range(len(BAD_CALLS))])
def test_bad_input_raises_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- non-contiguous inputs: NumPy copies, the answer is the same -----------------------------------------

def _fortran(a):
    f = np.asfortranarray(a)[:, ::1]
    assert not f.flags.c_contiguous
    return f


def _every_other_row(a):
    v = np.repeat(a, 2, axis=0)[::2]
    assert not v.flags.c_contiguous and v.shape == a.shape
    return v


def _every_other_1d(a):
    v = np.repeat(a, 2)[::2]
    assert not v.flags.c_contiguous or v.size <= 1
    return v


@pytest.mark.parametrize("layout", [_fortran, _every_other_row])
def test_non_contiguous_inputs_give_the_same_answer(layout):
    rng = np.random.default_rng(5)
    m, n, k = 5, 4, 577
    a, u, v = pm1(rng, m, k), two_bit(rng, m, k), two_bit(rng, n, k)
    pa, (uh, ul), (vh, vl) = reference.pack_bits(a), reference.pack_2bit(u), reference.pack_2bit(v)
    L = layout
    np.testing.assert_array_equal(reference.bgemm_1x1(L(pa), L(vh), k), reference.bgemm_1x1(pa, vh, k))
    np.testing.assert_array_equal(reference.bgemm_1x2(L(pa), L(vh), L(vl), k), a @ v.T)
    np.testing.assert_array_equal(reference.bgemm_2x2(L(uh), L(ul), L(vh), L(vl), k), u @ v.T)
    np.testing.assert_array_equal(reference.pack_bits(L(a)), pa)
    np.testing.assert_array_equal(reference.pack_bits(L(a.T.copy()).T), pa)  # transposed view
    np.testing.assert_array_equal(reference.pack_2bit(L(u))[0], uh)
    np.testing.assert_array_equal(reference.pack_2bit(L(u))[1], ul)
    np.testing.assert_array_equal(reference.pack_mask(L(u < 0)), uh)
    np.testing.assert_array_equal(reference.unpack_2bit(L(uh), L(ul), k), u)

    dense, (indptr, indices, data) = random_csr(rng, 6, 9, 0.4)
    x = rng.standard_normal((9, 5)).astype(np.float32)
    want = reference.csr_matmul(indptr, indices, data, x)
    got = reference.csr_matmul(_every_other_1d(indptr), _every_other_1d(indices), _every_other_1d(data), L(x))
    np.testing.assert_array_equal(got, want)

    img = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    view = np.ascontiguousarray(img.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(reference.im2col(view, 3, 2, 2, 1), reference.im2col(img, 3, 2, 2, 1))
