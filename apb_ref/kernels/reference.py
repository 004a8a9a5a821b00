"""NumPy reference kernels: the oracle every Rust kernel is tested against, each in its shortest
obviously-right form. No speed branches here (speed belongs to the Rust twins); argument checks live
in `contracts.py`, shared by all of them.

Bit conventions: see the docstring of `apb_ref.kernels`.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..ops.lowering import pad_hw, sign_pm1, window
from .contracts import (
    BCONV_OUTPUTS, LAYOUTS, WORD_BITS, check_array, check_choice, check_conv_args, check_csr, check_csr_rows,
    check_epilogue, check_flag, check_k, check_k_range, check_layout, check_packed, check_pixel_bits, check_planes,
    check_shaped, conv_output, describe, position, words_for,
)

__all__ = ["pack_bits", "unpack_bits", "pack_mask", "pack_2bit", "unpack_2bit", "bgemm_1x1", "bgemm_1x2",
           "bgemm_2x2", "csr_matmul", "im2col", "im2col_bits", "csr_conv2d", "bconv_1bit", "sign_pm1", "words_for",
           "LAYOUTS"]


# --- packing ------------------------------------------------------------------------------------

def _as_rows(x: np.ndarray, layout: str) -> np.ndarray:
    """The (rows, K) matrix a packing call means: x itself, or for layout="columns" the transpose of
    (K, rows), or of a batch (B, K, rows) whose matrices' rows follow one another."""
    if layout == "rows":
        return x
    if x.ndim == 3:
        return np.concatenate([m.T for m in x]) if len(x) else np.zeros((0, x.shape[1]), x.dtype)
    return x.T


def pack_bits(x, *, layout="rows") -> np.ndarray:
    """Pack the signs of a (rows, K) real matrix into a (rows, ceil(K/64)) uint64 matrix.

    Bit k % 64 of word k // 64 is 1 where x[row, k] < 0 (so 0 and -0.0 give bit 0, i.e. +1);
    padding bits past K are 0. Accepts float or integer input; NaN is rejected.
    layout="columns": x is given transposed, (K, rows) — as `im2col(..., layout="columns")` makes it —
    or as a batch (B, K, rows) of such matrices (an NCHW map seen as (N, C, H·W) packs each pixel's
    channels), whose packed rows follow one another: (B·rows, W). The result is what layout="rows"
    gives for the transposed matrix.
    """
    x = np.asarray(x)
    check_layout("pack_bits", layout)
    if x.ndim != 2 and not (x.ndim == 3 and layout == "columns"):
        want = "(rows, K)" if layout == "rows" else "(K, rows) or (B, K, rows)"
        raise ValueError(f"pack_bits: x must be a 2-D array {want}, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        # bool is refused on purpose: False/True has no sign, so the meaning would be a guess.
        raise ValueError(f"pack_bits: x must be a float or integer array, got dtype {x.dtype}")
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise ValueError(f"pack_bits: x contains NaN (first at {position(np.argwhere(np.isnan(x))[0])})")
    rows = _as_rows(x, layout)
    n, k = rows.shape
    bits = np.zeros((n, words_for(k) * WORD_BITS), dtype=bool)  # zero padding up to whole words
    bits[:, :k] = rows < 0
    # bit j of a word is byte j // 8, bit j % 8 (little endian both ways, whatever the host order)
    packed = np.packbits(bits, axis=1, bitorder="little")
    return packed.view("<u8").astype(np.uint64).reshape(n, words_for(k))


def unpack_bits(packed, k) -> np.ndarray:
    """Unpack a (rows, W) uint64 matrix from `pack_bits` into a (rows, k) float32 ±1 matrix."""
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint64:
        got = packed.dtype if isinstance(packed, np.ndarray) else type(packed).__name__
        raise ValueError(f"unpack_bits: packed must be a uint64 numpy array, got {got}")
    if packed.ndim != 2:
        raise ValueError(f"unpack_bits: packed must be 2-D (rows, words), got shape {packed.shape}")
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 0:
        raise ValueError(f"unpack_bits: k must be a non-negative integer, got {k!r}")
    rows, words = packed.shape
    if k > words * WORD_BITS:
        raise ValueError(f"unpack_bits: k={k} is larger than the packed capacity {words * WORD_BITS} "
                         f"(packed has shape {packed.shape})")
    as_bytes = np.ascontiguousarray(packed, dtype="<u8").view(np.uint8).reshape(rows, words * 8)
    bits = np.unpackbits(as_bytes, axis=1, count=int(k), bitorder="little")
    return 1.0 - 2.0 * bits.astype(np.float32)  # bit 1 -> -1, bit 0 -> +1


def pack_mask(bits) -> np.ndarray:
    """Pack a (rows, K) bool matrix as it is (True -> bit 1, which means −1) into (rows, W) uint64."""
    bits = np.asarray(bits)
    if bits.dtype != np.bool_ or bits.ndim != 2:
        raise ValueError(f"pack_mask: bits must be a 2-D bool array, got dtype {bits.dtype} shape {bits.shape}")
    return pack_bits(np.where(bits, np.int8(-1), np.int8(0)))


def pack_2bit(v, *, layout="rows") -> tuple[np.ndarray, np.ndarray]:
    """Split a (rows, K) matrix of {−3, −1, 1, 3} into two sign planes (hi, lo) with v = 2·hi + lo.

    hi = sign(v) and lo = sign(v − 2·hi): 3 → (+, +), 1 → (+, −), −1 → (−, +), −3 → (−, −).
    layout="columns": v is given as (K, rows), or a batch (B, K, rows); the planes are the same (see
    `pack_bits`).
    """
    check_layout("pack_2bit", layout)
    v = np.asarray(v)
    if (v.ndim != 2 and not (v.ndim == 3 and layout == "columns")) or v.dtype.kind not in "fiu":
        raise ValueError(f"pack_2bit: v must be a 2-D float or integer array (3-D with layout='columns'), "
                         f"got dtype {v.dtype} shape {v.shape}")
    bad = ~np.isin(v, (-3, -1, 1, 3))  # NaN too
    if bad.any():
        at = np.argwhere(bad)[0]
        raise ValueError(f"pack_2bit: v must hold only -3, -1, 1, 3; got {v[tuple(at)].item()!r} at {position(at)}")
    hi = np.where(v < 0, np.int8(-1), np.int8(1))
    return pack_bits(hi, layout=layout), pack_bits(v - 2 * hi, layout=layout)


def unpack_2bit(hi, lo, k) -> np.ndarray:
    """Inverse of `pack_2bit`: (rows, k) float32 in {−3, −1, 1, 3}."""
    return 2 * unpack_bits(hi, k) + unpack_bits(lo, k)


# --- popcount GEMMs -----------------------------------------------------------------------------

def _dot(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """±1 dot products of every row of a with every row of b: K − 2·popcount(a XOR b), (M, N) int64.
    One row of a at a time, so the temporary is (N, W) words, not (M, N, W)."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.int64)
    for i, row in enumerate(a):
        out[i] = k - 2 * np.bitwise_count(row ^ b).sum(axis=1, dtype=np.int64)
    return out


def _finish(func: str, out: np.ndarray, scale, shift) -> np.ndarray:
    """The int32 products (exact: k is bounded so |out| fits), or, with `scale` and/or `shift` (float32,
    one per row), float32 out·scale[i] + shift[i]: a float32 multiply, then an add, as in the Rust
    epilogue (bit-identical)."""
    out = out.astype(np.int32)
    if scale is None and shift is None:
        return out
    m = out.shape[0]
    check_epilogue(func, m, scale, shift)
    scale = np.ones(m, np.float32) if scale is None else scale
    shift = np.zeros(m, np.float32) if shift is None else shift
    return out.astype(np.float32) * scale[:, None] + shift[:, None]


def bgemm_1x1(a, b, k, *, scale=None, shift=None) -> np.ndarray:
    """out[i, j] = Σ_t a[i, t]·b[j, t] for ±1 rows packed along K: (M, W), (N, W) -> (M, N) int32.

    Every bgemm takes `scale` and `shift` (float32 (M,), keyword only): with either, the result is
    float32 out·scale[i] + shift[i] (a layer's α·B·X + bias without another pass over it)."""
    k = check_k_range("bgemm_1x1", k, 1)
    a, b = check_packed("bgemm_1x1", "a", a, k), check_packed("bgemm_1x1", "b", b, k)
    return _finish("bgemm_1x1", _dot(a, b, k), scale, shift)


def bgemm_1x2(a, b_hi, b_lo, k, *, scale=None, shift=None) -> np.ndarray:
    """±1 rows of a times 2-bit rows v = 2·hi + lo of b: 2·(a·b_hi) + (a·b_lo), (M, N) int32."""
    k = check_k_range("bgemm_1x2", k, 3)
    a = check_packed("bgemm_1x2", "a", a, k)
    b_hi, b_lo = check_planes("bgemm_1x2", ("b_hi", "b_lo"), b_hi, b_lo, k)
    return _finish("bgemm_1x2", 2 * _dot(a, b_hi, k) + _dot(a, b_lo, k), scale, shift)


def bgemm_2x2(a_hi, a_lo, b_hi, b_lo, k, *, scale=None, shift=None) -> np.ndarray:
    """2-bit × 2-bit: (2·ah + al)·(2·bh + bl) expanded into four binary products, (M, N) int32."""
    k = check_k_range("bgemm_2x2", k, 9)
    a_hi, a_lo = check_planes("bgemm_2x2", ("a_hi", "a_lo"), a_hi, a_lo, k)
    b_hi, b_lo = check_planes("bgemm_2x2", ("b_hi", "b_lo"), b_hi, b_lo, k)
    out = (4 * _dot(a_hi, b_hi, k) + 2 * _dot(a_hi, b_lo, k)
           + 2 * _dot(a_lo, b_hi, k) + _dot(a_lo, b_lo, k))
    return _finish("bgemm_2x2", out, scale, shift)


# --- sparse × dense -----------------------------------------------------------------------------

def csr_matmul(indptr, indices, data, x) -> np.ndarray:
    """S @ x for S in CSR form (M, K) and a dense float32 x (K, N): (M, N) float32.
    Row i of the result adds S[i, c]·x[c, :] over row i's non-zeros."""
    check_array("csr_matmul", "x", x, np.float32, 2, "(K, N)")
    indptr, indices, data = check_csr("csr_matmul", indptr, indices, data, x.shape[0])
    out = np.zeros((indptr.size - 1, x.shape[1]), dtype=np.float32)
    for i in range(indptr.size - 1):
        span = slice(indptr[i], indptr[i + 1])
        out[i] = data[span] @ x[indices[span]]
    return out


# --- im2col, on floats and on packed bits ---------------------------------------------------------

def im2col(x, kh, kw, stride=1, padding=0, layout="rows") -> np.ndarray:
    """(N, C, H, W) float32 -> the conv's lowered input, zero padded.

    layout="rows": (N·Ho·Wo, C·kh·kw), one row per output pixel (n, ho, wo), columns ordered (c, i, j)
    like weight.reshape(O, -1): K is the last axis, as the bit kernels pack their operands.
    layout="columns": its transpose, (C·kh·kw, N·Ho·Wo) C-contiguous: the right operand of
    W (O, K) @ cols and of csr_matmul.
    """
    check_array("im2col", "x", x, np.float32, 4, "(N, C, H, W)")
    check_conv_args("im2col", kh, kw, stride, padding)
    check_layout("im2col", layout)
    n, c, h, w = x.shape
    ho, wo = conv_output("im2col", n, h, w, kh, kw, stride, padding, c * kh * kw)
    xp = pad_hw(x, padding)
    taps = np.empty((c, kh, kw, n, ho, wo), dtype=x.dtype)
    for i in range(kh):  # tap (i, j) of every output pixel: one strided window of the padded map
        for j in range(kw):
            taps[:, i, j] = xp[:, :, window(i, ho, stride), window(j, wo, stride)].transpose(1, 0, 2, 3)
    cols = taps.reshape(c * kh * kw, n * ho * wo)  # rows (c, i, j), columns (n, ho, wo)
    return cols if layout == "columns" else np.ascontiguousarray(cols.T)


def im2col_bits(bits, c, kh, kw, stride=1, padding=0) -> np.ndarray:
    """im2col on packed bits: the conv's lowered 1-bit input without a float copy.

    `bits` is a (N, H, W, ceil(c/64)) uint64 map: each pixel's c channel signs packed as by
    `pack_bits` (the rows of the NHWC activation). Returns (N·Ho·Wo, ceil(kh·kw·c/64)) uint64, one
    packed row per output pixel (n, ho, wo) with its K = kh·kw·c bits ordered (i, j, channel) —
    channels last, so each tap is one run of c bits (the weight must be packed in that order too).
    Taps that fall on the zero padding are bit 0 (+1), like `pack_bits` of a zero: the caller corrects
    for them. Here: unpack to the ±1 map, im2col it, reorder K to (i, j, c), pack again.
    """
    func = "im2col_bits"
    check_conv_args(func, kh, kw, stride, padding)
    n, h, w, wc = check_pixel_bits(func, bits, c)
    ho, wo = conv_output(func, n, h, w, kh, kw, stride, padding, max(wc, words_for(kh * kw * c)))
    signs = unpack_bits(bits.reshape(n * h * w, wc), c).reshape(n, h, w, c).transpose(0, 3, 1, 2)
    # the zero padding, as pack_bits packs a zero, is +1: pad with +1 and im2col without padding
    cols = im2col(pad_hw(signs, padding, value=1.0), kh, kw, stride, 0, layout="columns")  # rows (c, i, j)
    taps_first = cols.reshape(c, kh * kw, -1).transpose(1, 0, 2).reshape(kh * kw * c, -1)  # rows (i, j, c)
    return pack_bits(taps_first, layout="columns")


def csr_conv2d(indptr, indices, data, x, kh, kw, stride=1, padding=0, signs=False, *, add_to=None) -> np.ndarray:
    """The sparse residual S·X of a conv: (O, N·Ho·Wo) float32.

    S is CSR (O, C·kh·kw) with columns ordered (channel, i, j) like weight.reshape(O, -1), x the
    (N, C, H, W) float32 input; with signs=True the input is sign(x) (±1, sign(0) = +1, the 1-bit
    activation). Here simply csr_matmul(S, im2col(x, ..., layout="columns")); the Rust twin reads each
    non-zero's window of x directly instead of building X. The zero padding stays 0 either way.

    With `add_to`, a C-contiguous float32 (O, N·Ho·Wo) array, S·X is added to it in place and it is
    returned (packed inference adds the residual to the popcount term without a second (O, P) array).
    """
    func = "csr_conv2d"
    inputs = (x, indptr, indices, data)  # as given: add_to may share memory with none of them
    check_conv_args(func, kh, kw, stride, padding)
    check_array(func, "x", x, np.float32, 4, "(N, C, H, W)")
    n, c, h, w = x.shape
    indptr, indices, data = check_csr(func, indptr, indices, data, c * kh * kw)
    ho, wo = conv_output(func, n, h, w, kh, kw, stride, padding, max(c, len(indptr) - 1))
    shape = (len(indptr) - 1, n * ho * wo)
    if add_to is not None and (
            not isinstance(add_to, np.ndarray) or add_to.dtype != np.float32 or add_to.shape != shape
            or not add_to.flags.c_contiguous or not add_to.flags.writeable
            or any(np.may_share_memory(add_to, a) for a in inputs)):
        raise ValueError(f"{func}: add_to must be a writeable C-contiguous float32 array of shape (O, N·Ho·Wo) = "
                         f"{shape} that shares no memory with x or the CSR arrays, got {describe(add_to)}")
    out = add_to if add_to is not None else np.zeros(shape, dtype=np.float32)
    if len(data):
        out += csr_matmul(indptr, indices, data, im2col(sign_pm1(x) if signs else x, kh, kw, stride, padding, "columns"))
    return out


# --- a whole binary conv layer on packed bits -------------------------------------------------------

def bconv_1bit(weights, bits, c, kh, kw, stride=1, padding=0, *, scale, shift, correction=None, csr=None,
               residual=None, clip=False, out="float"):
    """A binary conv layer from a packed 1-bit map to a float map and/or the next layer's packed bits,
    channels last in and out: (N, H, W, ceil(c/64)) uint64 -> (N, Ho, Wo, O).

    `weights` (O, ceil(K/64)) uint64 are ±1 rows packed along K = kh·kw·c in (i, j, channel) order, as
    `im2col_bits` lowers `bits`. Per output position and channel o, in this float32 order:

        y = f32(acc)·scale[o] + shift[o]   acc: the exact ±1 dot product of weights[o] with the window,
                                           padded taps +1 (bgemm_1x1 of im2col_bits; a multiply, an add)
        y -= correction[ho, wo, o]         optional (Ho, Wo, O): the caller's padding correction
        y += s                             optional csr = (indptr, indices, data) of an (O, K) matrix S,
                                           columns in the (i, j, channel) order; s = Σ data·x over row
                                           o's non-zeros, summed first, x the tap's sign, 0 on the padding
        y += residual[n, ho, wo, o]        optional (N, Ho, Wo, O)
        y = clip(y, -1, 1)                 if clip (hardtanh)

    out="float" returns y, float32 (N, Ho, Wo, O); "bits" its signs packed per pixel as `pack_bits`
    packs a row, uint64 (N, Ho, Wo, ceil(O/64)) (a NaN y is then an error); "both" the pair.

    The Rust twin follows this order, so without csr the two agree bit for bit. With csr only the
    sparse sums differ, by rounding (NumPy's BLAS sums in its own order): |rust − numpy| ≤
    (n_o + 3)·(eps·(|y₀| + Σ_row |data| + |residual|) + 2⁻¹⁴⁹), n_o the non-zeros of row o, eps = 2⁻²³
    and y₀ = y after the correction; so bits agree except where |y| is within that bound of 0.

    Here: the existing kernels composed; the sparse term is csr_conv2d of the unpacked ±1 map (zero
    padded), its columns renumbered to that kernel's (channel, i, j) order.
    """
    func = "bconv_1bit"
    check_choice(func, "out", out, BCONV_OUTPUTS)
    check_flag(func, "clip", clip)
    check_conv_args(func, kh, kw, stride, padding)
    n, h, w, wc = check_pixel_bits(func, bits, c)
    k = check_k_range(func, kh * kw * c, 1)
    ho, wo = conv_output(func, n, h, w, kh, kw, stride, padding, words_for(k))
    o = len(check_packed(func, "weights", weights, k))
    for name, v in (("scale", scale), ("shift", shift)):
        check_shaped(func, name, v, np.float32, (o,), "(O,)")
    if correction is not None:
        check_shaped(func, "correction", correction, np.float32, (ho, wo, o), "(Ho, Wo, O)")
    if residual is not None:
        check_shaped(func, "residual", residual, np.float32, (n, ho, wo, o), "(N, Ho, Wo, O)")
    if csr is not None:
        indptr, indices, data = check_csr_rows(func, csr, o, k)

    def channels_last(y):  # (O, N·Ho·Wo) -> (N, Ho, Wo, O)
        return np.ascontiguousarray(y.T).reshape(n, ho, wo, o)

    y = channels_last(bgemm_1x1(weights, im2col_bits(bits, c, kh, kw, stride, padding), k, scale=scale, shift=shift))
    if correction is not None:
        y = y - correction
    if csr is not None:
        signs = unpack_bits(bits.reshape(n * h * w, wc), c).reshape(n, h, w, c).transpose(0, 3, 1, 2)
        chw = (indices % c) * (kh * kw) + indices // c  # column (i, j, channel) -> (channel, i, j)
        y = y + channels_last(csr_conv2d(indptr, chw.astype(np.int32), data, signs, kh, kw, stride, padding))
    if residual is not None:
        y = y + residual
    if clip:
        y = np.clip(y, np.float32(-1), np.float32(1))
    if out == "float":
        return y
    if np.isnan(y).any():
        at = tuple(int(i) for i in np.argwhere(np.isnan(y))[0])
        raise ValueError(f"{func}: y is NaN at (n, ho, wo, o) = {at}; its sign is undefined (scale, shift, "
                         "correction, csr data and residual must be finite for packed output)")
    packed = pack_bits(y.reshape(n * ho * wo, o)).reshape(n, ho, wo, words_for(o))
    return packed if out == "bits" else (y, packed)
