"""NumPy reference kernels: the readable oracle that every Rust kernel is tested against.

Bit conventions: see the docstring of `apb_ref.kernels`.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..parallel import over_slices

WORD_BITS = 64

# How a (rows, K) operand is laid out in memory: as is, or transposed to (K, rows) (im2col, pack_bits).
LAYOUTS = ("rows", "columns")


def sign_pm1(x: np.ndarray) -> np.ndarray:
    """sign with sign(0) = sign(−0.0) = +1 (the bit convention: the value pack_bits packs), in x's dtype."""
    return np.where(x < 0, np.array(-1, x.dtype), np.array(1, x.dtype))  # no float64 temporary


def words_for(k: int) -> int:
    """Number of uint64 words that hold `k` bits."""
    return -(-k // WORD_BITS)


def _position(index) -> str:
    """Where a bad value sits, as the packing error messages say it: "row r, column c", or for a
    batch "matrix b, row r, column c"."""
    return ", ".join(f"{axis} {i}" for axis, i in zip(("matrix", "row", "column")[-len(index):], index))


def pack_bits(x, *, layout="rows") -> np.ndarray:
    """Pack the signs of a (rows, K) real matrix into a (rows, ceil(K/64)) uint64 matrix.

    Bit k % 64 of word k // 64 is 1 where x[row, k] < 0 (so 0 and -0.0 give bit 0, i.e. +1);
    padding bits past K are 0. Accepts float or integer input; NaN is rejected.
    layout="columns": x is given transposed, (K, rows) — as `im2col(..., layout="columns")` makes it —
    and the result is the same (rows, W) matrix: bits are packed down the columns, so only the
    32x smaller bytes get transposed, never the float matrix. It may also be a batch (B, K, rows) of
    such matrices — an NCHW map seen as (N, C, H·W) packs each pixel's channels — whose packed rows
    follow one another: (B·rows, W).
    """
    x = np.asarray(x)
    if layout not in LAYOUTS:
        raise ValueError(f"pack_bits: layout must be one of {LAYOUTS}, got {layout!r}")
    if x.ndim != 2 and not (x.ndim == 3 and layout == "columns"):
        want = "(rows, K)" if layout == "rows" else "(K, rows) or (B, K, rows)"
        raise ValueError(f"pack_bits: x must be a 2-D array {want}, got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        # bool is refused on purpose: False/True has no sign, so the meaning would be a guess.
        raise ValueError(f"pack_bits: x must be a float or integer array, got dtype {x.dtype}")
    if x.dtype.kind == "f" and np.isnan(x).any():
        raise ValueError(f"pack_bits: x contains NaN (first at {_position(np.argwhere(np.isnan(x))[0])})")
    if x.ndim == 3:  # the batch's rows side by side: one (K, B·rows) matrix
        x = x.transpose(1, 0, 2).reshape(x.shape[1], x.shape[0] * x.shape[2])
    if layout == "columns":
        k, rows = x.shape
        kb = (k + 7) // 8
        neg = np.zeros((8 * kb, rows), dtype=np.uint8)
        neg[:k] = x < 0
        neg = neg.reshape(kb, 8, rows)  # neg[b, j] is row 8b + j: bit j of byte b
        column_bytes = neg[:, 0].copy()  # (kb, rows); shifting whole rows beats np.packbits(axis=0)
        for j in range(1, 8):
            column_bytes |= neg[:, j] << j
        packed = np.zeros((rows, 8 * words_for(k)), dtype=np.uint8)  # zero padding up to whole words
        packed[:, :kb] = column_bytes.T
    else:
        rows, k = x.shape
        neg = np.zeros((rows, words_for(k) * WORD_BITS), dtype=bool)  # zero padding up to whole words
        neg[:, :k] = x < 0
        packed = np.packbits(neg, axis=1, bitorder="little")  # (rows, 8 * words) uint8, bit k at byte k//8
    # Little-endian bytes -> words: byte j of a word holds bits 8j..8j+7, whatever the host order.
    return packed.view("<u8").astype(np.uint64, copy=False).reshape(rows, words_for(k))


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
        raise ValueError(
            f"unpack_bits: k={k} is larger than the packed capacity {words * WORD_BITS} "
            f"(packed has shape {packed.shape})"
        )
    as_bytes = np.ascontiguousarray(packed, dtype="<u8").view(np.uint8).reshape(rows, words * 8)
    bits = np.unpackbits(as_bytes, axis=1, count=int(k), bitorder="little")
    return 1.0 - 2.0 * bits.astype(np.float32)  # bit 1 -> -1, bit 0 -> +1


# --- argument checks shared by the kernels below ------------------------------------------------

def _check_k(func: str, k) -> int:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{func}: k must be a positive integer, got {k!r}")
    return int(k)


def _check_packed(func: str, name: str, x, k: int) -> np.ndarray:
    """A (rows, ceil(k/64)) uint64 operand whose padding bits past k are 0."""
    if not isinstance(x, np.ndarray) or x.dtype != np.uint64:
        got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{func}: {name} must be a uint64 numpy array (packed bits), got {got}")
    if x.ndim != 2:
        raise ValueError(f"{func}: {name} must be 2-D (rows, words), got shape {x.shape}")
    if x.shape[1] != words_for(k):
        raise ValueError(f"{func}: {name} has {x.shape[1]} words per row, but k = {k} needs "
                         f"ceil(k/64) = {words_for(k)}")
    if k % WORD_BITS and x.shape[0] and (x[:, -1] >> np.uint64(k % WORD_BITS)).any():
        row = int(np.flatnonzero(x[:, -1] >> np.uint64(k % WORD_BITS))[0])
        raise ValueError(f"{func}: {name} has non-zero padding bits past k = {k} (first in row {row}); "
                         "padding must be 0 (pack with pack_bits/pack_2bit)")
    return x


def _check_planes(func: str, names: tuple[str, str], hi, lo, k: int):
    hi, lo = _check_packed(func, names[0], hi, k), _check_packed(func, names[1], lo, k)
    if hi.shape != lo.shape:
        raise ValueError(f"{func}: {names[0]} and {names[1]} must have the same shape, "
                         f"got {hi.shape} and {lo.shape}")
    return hi, lo


# --- more packing -------------------------------------------------------------------------------

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
    if layout not in LAYOUTS:
        raise ValueError(f"pack_2bit: layout must be one of {LAYOUTS}, got {layout!r}")
    v = np.asarray(v)
    if (v.ndim != 2 and not (v.ndim == 3 and layout == "columns")) or v.dtype.kind not in "fiu":
        raise ValueError(f"pack_2bit: v must be a 2-D float or integer array (3-D with layout='columns'), "
                         f"got dtype {v.dtype} shape {v.shape}")
    magnitude = np.abs(v)
    bad = (magnitude != 1) & (magnitude != 3)  # NaN too; several times faster than np.isin
    if bad.any():
        at = np.argwhere(bad)[0]
        raise ValueError(f"pack_2bit: v must hold only -3, -1, 1, 3; got {v[tuple(at)].item()!r} at {_position(at)}")
    hi = np.where(v < 0, np.int8(-1), np.int8(1))
    return pack_bits(hi, layout=layout), pack_bits(v - 2 * hi, layout=layout)


def unpack_2bit(hi, lo, k) -> np.ndarray:
    """Inverse of `pack_2bit`: (rows, k) float32 in {−3, −1, 1, 3}."""
    return 2 * unpack_bits(hi, k) + unpack_bits(lo, k)


# --- popcount GEMMs -----------------------------------------------------------------------------

def _xor_popcount(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M, N) int64 popcount(a_i XOR b_j), in row blocks so the (rows, N, W) temporary stays small."""
    m, n, w = a.shape[0], b.shape[0], a.shape[1]
    out = np.empty((m, n), dtype=np.int64)
    step = max(1, (1 << 22) // max(1, n * w))
    for i in range(0, m, step):
        x = np.bitwise_xor(a[i:i + step, None, :], b[None, :, :])
        out[i:i + step] = np.bitwise_count(x).sum(axis=2, dtype=np.int64)
    return out


def _dot(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """±1 dot products of every row of a with every row of b: K − 2·popcount(a XOR b)."""
    return k - 2 * _xor_popcount(a, b)


def _check_k_range(func: str, k: int, weight_sum: int) -> int:
    k = _check_k(func, k)
    limit = np.iinfo(np.int32).max // weight_sum
    if k > limit:
        raise ValueError(f"{func}: k must be in [1, {limit}] (larger k could overflow the int32 result), got {k}")
    return k


def _finish(func: str, out: np.ndarray, scale, shift) -> np.ndarray:
    """The int32 products (exact: k is bounded so |out| fits), or, with `scale` and/or `shift` (float32,
    one per row), float32 out·scale[i] + shift[i]: a float32 multiply, then an add, as in the Rust
    epilogue (bit-identical)."""
    out = out.astype(np.int32)
    if scale is None and shift is None:
        return out
    m = out.shape[0]
    for name, v in (("scale", scale), ("shift", shift)):
        if v is not None and (not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.shape != (m,)):
            got = f"dtype {v.dtype} shape {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
            raise ValueError(f"{func}: {name} must be a float32 array with one value per row of a ({m},), got {got}")
    scale = np.ones(m, np.float32) if scale is None else scale
    shift = np.zeros(m, np.float32) if shift is None else shift
    return out.astype(np.float32) * scale[:, None] + shift[:, None]  # both defaults applied, as in Rust


def bgemm_1x1(a, b, k, *, scale=None, shift=None) -> np.ndarray:
    """out[i, j] = Σ_t a[i, t]·b[j, t] for ±1 rows packed along K: (M, W), (N, W) -> (M, N) int32.

    Every bgemm takes `scale` and `shift` (float32 (M,), keyword only): with either, the result is
    float32 out·scale[i] + shift[i] (a layer's α·B·X + bias without another pass over it)."""
    k = _check_k_range("bgemm_1x1", k, 1)
    a, b = _check_packed("bgemm_1x1", "a", a, k), _check_packed("bgemm_1x1", "b", b, k)
    return _finish("bgemm_1x1", _dot(a, b, k), scale, shift)


def bgemm_1x2(a, b_hi, b_lo, k, *, scale=None, shift=None) -> np.ndarray:
    """±1 rows of a times 2-bit rows v = 2·hi + lo of b: 2·(a·b_hi) + (a·b_lo), (M, N) int32."""
    k = _check_k_range("bgemm_1x2", k, 3)
    a = _check_packed("bgemm_1x2", "a", a, k)
    b_hi, b_lo = _check_planes("bgemm_1x2", ("b_hi", "b_lo"), b_hi, b_lo, k)
    return _finish("bgemm_1x2", 2 * _dot(a, b_hi, k) + _dot(a, b_lo, k), scale, shift)


def bgemm_2x2(a_hi, a_lo, b_hi, b_lo, k, *, scale=None, shift=None) -> np.ndarray:
    """2-bit × 2-bit: (2·ah + al)·(2·bh + bl) expanded into four binary products, (M, N) int32."""
    k = _check_k_range("bgemm_2x2", k, 9)
    a_hi, a_lo = _check_planes("bgemm_2x2", ("a_hi", "a_lo"), a_hi, a_lo, k)
    b_hi, b_lo = _check_planes("bgemm_2x2", ("b_hi", "b_lo"), b_hi, b_lo, k)
    out = (4 * _dot(a_hi, b_hi, k) + 2 * _dot(a_hi, b_lo, k)
           + 2 * _dot(a_lo, b_hi, k) + _dot(a_lo, b_lo, k))
    return _finish("bgemm_2x2", out, scale, shift)


# --- sparse × dense -----------------------------------------------------------------------------

def check_csr(func: str, indptr, indices, data, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a CSR (M, k) matrix; returns the three arrays."""
    for name, arr, dtype in (("indptr", indptr, np.int64), ("indices", indices, np.int32),
                             ("data", data, np.float32)):
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != 1:
            got = f"dtype {arr.dtype} shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ValueError(f"{func}: {name} must be a 1-D {np.dtype(dtype).name} array, got {got}")
    if indptr.size < 1 or indptr[0] != 0:
        raise ValueError(f"{func}: indptr must start with 0 and have M + 1 entries, got {indptr[:3]}...")
    if (np.diff(indptr) < 0).any():
        raise ValueError(f"{func}: indptr must be non-decreasing")
    if indptr[-1] != indices.size or indices.size != data.size:
        raise ValueError(f"{func}: indptr[-1] = {indptr[-1]}, len(indices) = {indices.size} and "
                         f"len(data) = {data.size} must be equal (nnz)")
    if indices.size and (indices.min() < 0 or indices.max() >= k):
        raise ValueError(f"{func}: indices must lie in [0, {k}) (K = rows of x), "
                         f"got values in [{indices.min()}, {indices.max()}]")
    return indptr, indices, data


def csr_matmul(indptr, indices, data, x) -> np.ndarray:
    """S @ x for S in CSR form (M, K) and a dense float32 x (K, N): (M, N) float32.

    Each nonzero S[i, c] adds S[i, c]·x[c, :] to row i: one gather of rows of x and a segmented
    sum (np.add.reduceat), so the loop over nonzeros runs inside NumPy.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2:
        got = f"dtype {x.dtype} shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"csr_matmul: x must be a 2-D float32 array (K, N), got {got}")
    indptr, indices, data = check_csr("csr_matmul", indptr, indices, data, x.shape[0])
    m, n = indptr.size - 1, x.shape[1]
    out = np.zeros((m, n), dtype=np.float32)
    rows = np.flatnonzero(np.diff(indptr))  # rows with at least one nonzero
    if rows.size and n:
        products = data[:, None] * x[indices]  # (nnz, N): each nonzero times its row of x
        out[rows] = np.add.reduceat(products, indptr[rows], axis=0)
    return out


# --- im2col -------------------------------------------------------------------------------------


def pad_hw(x: np.ndarray, pad_h: int, pad_w: int | None = None, value: float = 0.0) -> np.ndarray:
    """Constant-pad the two spatial axes (np.pad is several times slower for this one case)."""
    pad_w = pad_h if pad_w is None else pad_w
    if pad_h == 0 and pad_w == 0:
        return x
    n, c, h, w = x.shape
    xp = np.full((n, c, h + 2 * pad_h, w + 2 * pad_w), value, dtype=x.dtype)
    xp[:, :, pad_h:pad_h + h, pad_w:pad_w + w] = x
    return xp


def window(start: int, count: int, stride: int) -> slice:
    """The `count` positions start, start+stride, ... as a slice."""
    return slice(start, start + stride * (count - 1) + 1, stride)


def im2col(x, kh, kw, stride=1, padding=0, layout="rows") -> np.ndarray:
    """(N, C, H, W) float32 -> the conv's lowered input, zero padded.

    layout="rows": (N·Ho·Wo, C·kh·kw), one row per output pixel (n, ho, wo), columns ordered (c, i, j)
    like weight.reshape(O, -1): K is the last axis, as the bit kernels pack their operands.
    layout="columns": its transpose, (C·kh·kw, N·Ho·Wo) C-contiguous: the right operand of
    W (O, K) @ cols and of csr_matmul. Much cheaper to build: each of the kh·kw copies moves whole
    output rows, where the row layout gathers runs of kw values.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        got = f"dtype {x.dtype} shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"im2col: x must be a 4-D float32 array (N, C, H, W), got {got}")
    _check_conv_args("im2col", kh, kw, stride, padding)
    if layout not in LAYOUTS:
        raise ValueError(f"im2col: layout must be one of {LAYOUTS}, got {layout!r}")
    n, c, h, w = x.shape
    ho, wo = _out_size("im2col", n, h, w, kh, kw, stride, padding, c * kh * kw)
    x = pad_hw(x, padding)
    if layout == "columns":
        return im2col_columns(x, kh, kw, stride, ho, wo)
    sn, sc, sh, sw = x.strides
    view = np.lib.stride_tricks.as_strided(
        x, (n, ho, wo, c, kh, kw), (sn, sh * stride, sw * stride, sc, sh, sw), writeable=False)
    return view.reshape(n * ho * wo, c * kh * kw)


def im2col_columns(xp: np.ndarray, kh: int, kw: int, stride: int, ho: int, wo: int) -> np.ndarray:
    """(C·kh·kw, N·Ho·Wo) lowering of an already padded (N, C, Hp, Wp) array; no checks (the conv's
    autograd op calls it directly). Channels are copied in slices on all cores: the copy is memory-bound."""
    n, c = xp.shape[:2]
    cols = np.empty((c, kh, kw, n, ho, wo), dtype=xp.dtype)

    def fill(cs: slice) -> None:
        for i in range(kh):
            for j in range(kw):
                cols[cs, i, j] = xp[:, cs, window(i, ho, stride), window(j, wo, stride)].swapaxes(0, 1)
    over_slices(fill, c, cols.size)
    return cols.reshape(c * kh * kw, n * ho * wo)


# --- convolution on packed bits, and the sparse residual as a convolution -------------------------

def _check_conv_args(func: str, kh, kw, stride, padding) -> None:
    for name, v, low in (("kh", kh, 1), ("kw", kw, 1), ("stride", stride, 1), ("padding", padding, 0)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
            raise ValueError(f"{func}: {name} must be an integer ≥ {low}, got {v!r}")


def _out_size(func: str, n: int, h: int, w: int, kh: int, kw: int, stride: int, padding: int,
              per_pixel: int) -> tuple[int, int]:
    """(Ho, Wo), checking the kernel fits and that neither the padded input nor the result (each
    `per_pixel` elements per pixel) is absurdly large (say, a padding of 2**62)."""
    ho, wo = (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"{func}: a {kh}x{kw} kernel does not fit a {h}x{w} input with padding {padding}")
    largest = max(n * (h + 2 * padding) * (w + 2 * padding), n * ho * wo) * per_pixel
    if largest > np.iinfo(np.intp).max // 8:
        raise ValueError(f"{func}: padding {padding} (or the input size) makes arrays of {largest} elements")
    return ho, wo


def im2col_bits(bits, c, kh, kw, stride=1, padding=0) -> np.ndarray:
    """im2col on packed bits: the conv's lowered 1-bit input without a float copy.

    `bits` is a (N, H, W, ceil(c/64)) uint64 map: each pixel's c channel signs packed as by
    `pack_bits` (the rows of the NHWC activation). Returns (N·Ho·Wo, ceil(kh·kw·c/64)) uint64, one
    packed row per output pixel (n, ho, wo) with its K = kh·kw·c bits ordered (i, j, channel) —
    channels last, so each tap is one run of c bits (the weight must be packed in that order too).
    Taps that fall on the zero padding are bit 0 (+1), like `pack_bits` of a zero: the caller corrects
    for them. Equal to pack_bits of im2col's rows of the NHWC ±1 map, with columns (i, j, channel).
    """
    func = "im2col_bits"
    _check_conv_args(func, kh, kw, stride, padding)
    if not isinstance(c, numbers.Integral) or isinstance(c, bool) or c < 1:
        raise ValueError(f"{func}: c must be a positive integer, got {c!r}")
    if not isinstance(bits, np.ndarray) or bits.ndim != 4:
        got = f"shape {bits.shape}" if isinstance(bits, np.ndarray) else type(bits).__name__
        raise ValueError(f"{func}: bits must be a 4-D (N, H, W, words) uint64 array, got {got}")
    n, h, w, wc = bits.shape
    _check_packed(func, "bits", bits.reshape(n * h * w, wc), c)  # dtype, words per pixel, zero padding bits
    ho, wo = _out_size(func, n, h, w, kh, kw, stride, padding, max(wc, words_for(kh * kw * c)))
    taps = kh * kw
    if padding:
        padded = np.zeros((n, h + 2 * padding, w + 2 * padding, wc), dtype=np.uint64)
        padded[:, padding:padding + h, padding:padding + w] = bits
        bits = padded
    sn, sh, sw, sq = bits.strides
    view = np.lib.stride_tricks.as_strided(
        bits, (n, ho, wo, kh, kw, wc), (sn, sh * stride, sw * stride, sh, sw, sq), writeable=False)
    gathered = view.reshape(n * ho * wo, taps, wc)  # (P, taps, words): each tap's c bits
    if c % WORD_BITS == 0:  # whole words: concatenating the taps is the packed row
        return np.ascontiguousarray(gathered.reshape(n * ho * wo, taps * wc))
    if WORD_BITS % c == 0:  # one word per tap holding c bits: `per` taps share an output word
        per = WORD_BITS // c
        words = -(-taps // per)
        runs = np.zeros((n * ho * wo, words * per), dtype=np.uint64)
        runs[:, :taps] = gathered[:, :, 0]
        shifts = (np.arange(per, dtype=np.uint64) * np.uint64(c))
        return np.bitwise_or.reduce(runs.reshape(-1, words, per) << shifts, axis=2)
    # any other c: through one bit per byte
    flat = np.unpackbits(np.ascontiguousarray(gathered).view(np.uint8), axis=-1, bitorder="little")
    flat = flat.reshape(n * ho * wo, taps, wc * WORD_BITS)[:, :, :c].reshape(n * ho * wo, taps * c)
    k = taps * c
    out = np.zeros((n * ho * wo, words_for(k) * WORD_BITS), dtype=np.uint8)
    out[:, :k] = flat
    return np.packbits(out, axis=1, bitorder="little").view(np.uint64)


def csr_conv2d(indptr, indices, data, x, kh, kw, stride=1, padding=0, signs=False, *, add_to=None) -> np.ndarray:
    """The sparse residual S·X of a conv without building X: (O, N·Ho·Wo) float32.

    S is CSR (O, C·kh·kw) with columns ordered (channel, i, j) like weight.reshape(O, -1), x the
    (N, C, H, W) float32 input; with signs=True the input is sign(x) (±1, sign(0) = +1, the 1-bit
    activation) without a ±1 copy of x. Equal to csr_matmul(S, im2col(x, ..., layout="columns")) up
    to float rounding, but each column k of S that holds a non-zero reads its window of x directly (a
    strided view) and adds it, scaled, to the rows that use it: no (K, P) matrix, and columns of S
    that are all zero (most, at APB's densities) cost nothing. The zero padding stays 0 either way.

    With `add_to`, a C-contiguous float32 (O, N·Ho·Wo) array, S·X is added to it in place and it is
    returned (packed inference adds the residual to the popcount term without a second (O, P) array).
    """
    func = "csr_conv2d"
    inputs = (x, indptr, indices, data)  # as given: add_to may share memory with none of them
    _check_conv_args(func, kh, kw, stride, padding)
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
        got = f"dtype {x.dtype} shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise ValueError(f"{func}: x must be a 4-D float32 array (N, C, H, W), got {got}")
    n, c, h, w = x.shape
    indptr, indices, data = check_csr(func, indptr, indices, data, c * kh * kw)
    ho, wo = _out_size(func, n, h, w, kh, kw, stride, padding, max(c, len(indptr) - 1))
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    shape = (len(indptr) - 1, n * ho * wo)
    if add_to is None:
        out = np.zeros(shape, dtype=np.float32)
    elif (not isinstance(add_to, np.ndarray) or add_to.dtype != np.float32 or add_to.shape != shape
          or not add_to.flags.c_contiguous or not add_to.flags.writeable
          or any(np.may_share_memory(add_to, a) for a in inputs)):
        got = f"dtype {add_to.dtype} shape {add_to.shape}" if isinstance(add_to, np.ndarray) else type(add_to).__name__
        raise ValueError(f"{func}: add_to must be a writeable C-contiguous float32 array of shape (O, N·Ho·Wo) = "
                         f"{shape} that shares no memory with x or the CSR arrays, got {got}")
    else:
        out = add_to
    if not len(data):
        return out
    if signs:  # the oracle simply makes the ±1 copy (then pads it with zeros)
        x = sign_pm1(x)
    xp = pad_hw(x, padding)
    order = np.argsort(indices, kind="stable")  # the non-zeros grouped by column of S
    cols, starts = np.unique(indices[order], return_index=True)
    for col, lo, hi in zip(cols, starts, list(starts[1:]) + [len(order)]):
        ch, i, j = np.unravel_index(col, (c, kh, kw))
        patch = xp[:, ch, window(i, ho, stride), window(j, wo, stride)].reshape(1, -1)  # (1, P)
        nz = order[lo:hi]
        users, scale = rows[nz], data[nz, None]
        if len(np.unique(users)) == len(users):
            out[users] += scale * patch
        else:  # repeated (row, column) entries: each must add
            np.add.at(out, users, scale * patch)
    return out
