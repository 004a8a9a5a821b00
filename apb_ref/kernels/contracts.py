"""The kernels' argument contracts (apb_ref/kernels/CONTRACTS.md), checked in one place: every NumPy
oracle validates through these functions, and their messages are the ones the Rust bindings give for
the same mistakes. Each raises ValueError naming the function and the argument, what was expected and
what came."""
from __future__ import annotations

import numbers

import numpy as np

from ..ops.lowering import conv_output_size

WORD_BITS = 64

# How a (rows, K) operand is laid out in memory: as is, or transposed to (K, rows) (im2col, pack_bits).
LAYOUTS = ("rows", "columns")

# What bconv_1bit returns: its float map, the map's packed signs, or both (in that order).
BCONV_OUTPUTS = ("float", "bits", "both")


def words_for(k: int) -> int:
    """Number of uint64 words that hold `k` bits."""
    return -(-k // WORD_BITS)


def describe(x) -> str:
    """What an argument is, for error messages: dtype and shape of an array, else its type."""
    return f"dtype {x.dtype} shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__


def check_array(func: str, name: str, x, dtype, ndim: int, what: str) -> np.ndarray:
    """An ndarray of exactly `dtype` and `ndim` dimensions (`what` names the expected shape)."""
    if not isinstance(x, np.ndarray) or x.dtype != dtype or x.ndim != ndim:
        raise ValueError(f"{func}: {name} must be a {ndim}-D {np.dtype(dtype).name} array {what}, got {describe(x)}")
    return x


def check_layout(func: str, layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"{func}: layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def check_choice(func: str, name: str, value, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{func}: {name} must be one of {choices}, got {value!r}")
    return value


def check_flag(func: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{func}: {name} must be True or False, got {value!r}")
    return value


def check_shaped(func: str, name: str, x, dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
    """An ndarray of exactly `dtype` and `shape` (`what` names the axes, e.g. "(N, Ho, Wo, O)")."""
    if not isinstance(x, np.ndarray) or x.dtype != dtype or x.shape != tuple(shape):
        raise ValueError(f"{func}: {name} must be a {np.dtype(dtype).name} array of shape {what} = "
                         f"{tuple(shape)}, got {describe(x)}")
    return x


def check_epilogue(func: str, m: int, scale, shift) -> None:
    """scale and shift: None or float32 (M,), one value per row of the first operand."""
    for name, v in (("scale", scale), ("shift", shift)):
        if v is not None and (not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.shape != (m,)):
            raise ValueError(f"{func}: {name} must be a float32 array with one value per row of a ({m},), got {describe(v)}")


def position(index) -> str:
    """Where a bad value sits, as the packing error messages say it: "row r, column c", or for a
    batch "matrix b, row r, column c"."""
    return ", ".join(f"{axis} {i}" for axis, i in zip(("matrix", "row", "column")[-len(index):], index))




def check_k(func: str, k) -> int:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{func}: k must be a positive integer, got {k!r}")
    return int(k)


def check_packed(func: str, name: str, x, k: int) -> np.ndarray:
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


def check_planes(func: str, names: tuple[str, str], hi, lo, k: int):
    hi, lo = check_packed(func, names[0], hi, k), check_packed(func, names[1], lo, k)
    if hi.shape != lo.shape:
        raise ValueError(f"{func}: {names[0]} and {names[1]} must have the same shape, "
                         f"got {hi.shape} and {lo.shape}")
    return hi, lo



def check_k_range(func: str, k: int, weight_sum: int) -> int:
    k = check_k(func, k)
    limit = np.iinfo(np.int32).max // weight_sum
    if k > limit:
        raise ValueError(f"{func}: k must be in [1, {limit}] (larger k could overflow the int32 result), got {k}")
    return k



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



def check_csr_rows(func: str, csr, m: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """csr: a tuple (indptr, indices, data) of an (m, k) CSR matrix (`check_csr`, and m rows)."""
    if not isinstance(csr, tuple) or len(csr) != 3:
        raise ValueError(f"{func}: csr must be None or a tuple (indptr, indices, data), got {describe(csr)}")
    indptr, indices, data = check_csr(f"{func}: csr", *csr, k)
    if indptr.size != m + 1:
        raise ValueError(f"{func}: csr has {indptr.size - 1} rows (len(indptr) - 1), but weights has O = {m}")
    return indptr, indices, data


def check_pixel_bits(func: str, bits, c) -> tuple[int, int, int, int]:
    """A packed map (N, H, W, ceil(c/64)) uint64, each pixel's c channel signs with zero padding bits;
    returns its shape."""
    if not isinstance(c, numbers.Integral) or isinstance(c, bool) or c < 1:
        raise ValueError(f"{func}: c must be a positive integer, got {c!r}")
    if not isinstance(bits, np.ndarray) or bits.ndim != 4:
        got = f"shape {bits.shape}" if isinstance(bits, np.ndarray) else type(bits).__name__
        raise ValueError(f"{func}: bits must be a 4-D (N, H, W, words) uint64 array, got {got}")
    n, h, w, wc = bits.shape
    check_packed(func, "bits", bits.reshape(n * h * w, wc), c)  # dtype, words per pixel, zero padding bits
    return n, h, w, wc


def check_conv_args(func: str, kh, kw, stride, padding) -> None:
    for name, v, low in (("kh", kh, 1), ("kw", kw, 1), ("stride", stride, 1), ("padding", padding, 0)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
            raise ValueError(f"{func}: {name} must be an integer ≥ {low}, got {v!r}")


def conv_output(func: str, n: int, h: int, w: int, kh: int, kw: int, stride: int, padding: int,
              per_pixel: int) -> tuple[int, int]:
    """(Ho, Wo), checking the kernel fits and that neither the padded input nor the result (each
    `per_pixel` elements per pixel) is absurdly large (say, a padding of 2**62)."""
    ho, wo = conv_output_size(h, kh, stride, padding), conv_output_size(w, kw, stride, padding)
    if ho < 1 or wo < 1:
        raise ValueError(f"{func}: a {kh}x{kw} kernel does not fit a {h}x{w} input with padding {padding}")
    largest = max(n * (h + 2 * padding) * (w + 2 * padding), n * ho * wo) * per_pixel
    if largest > np.iinfo(np.intp).max // 8:
        raise ValueError(f"{func}: padding {padding} (or the input size) makes arrays of {largest} elements")
    return ho, wo


