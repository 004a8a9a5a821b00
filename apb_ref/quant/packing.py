"""Building blocks of the methods' packed forms (`WeightQuantizer.pack`): sign planes, CSR rows
in the smallest index types, and k-bit codes packed as bit planes. The file format (apb_ref.packed.format) stores whatever these return."""
from __future__ import annotations

import numpy as np

from ..kernels import pack_bits


def smallest_uint(max_value: int) -> np.dtype:
    """The narrowest unsigned dtype that holds `max_value` (indices are stored at their smallest width)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_value <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def pack_signs(signs: np.ndarray) -> np.ndarray:
    """A (rows, K) ±1 matrix as (rows, ceil(K/64)) uint64 sign bits (the kernels' convention)."""
    return pack_bits(signs)


def csr_rows(values: np.ndarray, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The entries of a (rows, K) matrix where `keep` is True, as CSR (row pointers, column indices in
    the smallest unsigned types that hold them, float32 values)."""
    rows, cols = np.nonzero(keep)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=values.shape[0]))])
    return {"csr_indptr": indptr.astype(smallest_uint(int(indptr[-1]))),
            "csr_indices": cols.astype(smallest_uint(max(values.shape[1] - 1, 0))),
            "csr_values": values[rows, cols].astype(np.float32)}


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned k-bit codes (nnz,) as (bits, ⌈nnz/8⌉) uint8: plane p holds bit p of every code."""
    return np.stack([np.packbits(((codes >> p) & 1).astype(np.uint8)) for p in range(bits)]).reshape(bits, -1)


def unpack_codes(planes: np.ndarray, nnz: int) -> np.ndarray:
    """The inverse of `pack_codes`: (nnz,) int64 codes."""
    bits = planes.shape[0]
    return sum(np.unpackbits(planes[p])[:nnz].astype(np.int64) << p for p in range(bits)) if bits else np.zeros(nnz, np.int64)


# --- Golomb-Rice coding of sparse positions (SBNN's packed form, METHODS §3.6) -----------------------
# The positions of a layer's minority value are coded by their gaps: g_j = pos_j − pos_{j−1} − 1
# (pos_{−1} = −1), each split by a per-layer parameter k into a quotient g >> k, written in unary
# (that many 0 bits, then a 1), and a k-bit remainder g mod 2^k. The quotients form one bit stream and
# the remainders another (the same bits as the interleaved code, laid out so that both decode with
# array operations). Both streams are np.packbits bytes (most significant bit first, zero padding).
MAX_RICE_K = 40  # remainders of up to 40 bits: enough for gaps in any layer of up to 2^40 weights


def binary_entropy(p: float) -> float:
    """H(p) = −p·log2 p − (1 − p)·log2(1 − p) in bits (0 at p = 0 and p = 1)."""
    return float(-sum(x * np.log2(x) for x in (p, 1.0 - p) if x > 0))


def rice_gaps(positions: np.ndarray) -> np.ndarray:
    """The gaps g_j = pos_j − pos_{j−1} − 1 of strictly increasing positions (int64)."""
    return np.diff(np.asarray(positions, np.int64), prepend=-1) - 1


def rice_bits(gaps: np.ndarray, k: int) -> int:
    """Bits of the Rice code of `gaps` with parameter k: Σ_j (⌊g_j/2^k⌋ + 1 + k)."""
    return int(np.right_shift(gaps, k).sum()) + len(gaps) * (1 + k)


def rice_parameter(gaps: np.ndarray) -> int:
    """The k in [0, MAX_RICE_K] with the fewest bits (the smallest such k)."""
    top = min(MAX_RICE_K, int(gaps.max(initial=0)).bit_length())
    costs = [rice_bits(gaps, k) for k in range(top + 1)]
    return int(np.argmin(costs))


def rice_encode(positions: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Strictly increasing non-negative positions → (k, quotient stream, remainder stream), both uint8:
    ⌈(Σ_j ⌊g_j/2^k⌋ + n)/8⌉ and ⌈n·k/8⌉ bytes for n positions."""
    gaps = rice_gaps(positions)
    if len(gaps) and gaps.min() < 0:
        raise ValueError("rice_encode: positions must be non-negative and strictly increasing")
    k = rice_parameter(gaps)
    q = np.right_shift(gaps, k)
    unary = np.zeros(int(q.sum()) + len(q), np.uint8)
    unary[np.cumsum(q + 1) - 1] = 1  # each quotient: q zeros, then a one
    r = gaps & ((1 << k) - 1)
    r_bits = (r[:, None] >> np.arange(k - 1, -1, -1)) & 1  # (n, k), most significant bit first
    return k, np.packbits(unary), np.packbits(r_bits.astype(np.uint8).ravel())


def rice_decode(quotients: np.ndarray, remainders: np.ndarray, count: int, k: int, length: int) -> np.ndarray:
    """The inverse of `rice_encode`: `count` positions in [0, length) as int64, strictly increasing.

    The streams are untrusted: everything is checked before it is used, and any inconsistency is a
    ValueError. Work and memory are bounded by the streams' own sizes (8 bits per byte), never by the
    claimed count or length: the quotient stream must hold exactly `count` one bits, the last in its
    last byte; the remainder stream exactly ⌈count·k/8⌉ bytes with zero padding; and the decoded
    positions must end below `length`."""
    for name, a in (("quotients", quotients), ("remainders", remainders)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 1:
            raise ValueError(f"rice_decode: {name} must be a 1-D uint8 array, got "
                             f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if not 0 <= k <= MAX_RICE_K:
        raise ValueError(f"rice_decode: k must be in [0, {MAX_RICE_K}], got {k}")
    if not 0 <= count <= 8 * len(quotients):  # each position takes at least one quotient bit
        raise ValueError(f"rice_decode: {len(quotients)} quotient bytes cannot hold {count} positions")
    if len(remainders) != -(-count * k // 8):
        raise ValueError(f"rice_decode: expected {-(-count * k // 8)} remainder bytes for {count} positions "
                         f"of {k} bits, got {len(remainders)}")
    ones = np.flatnonzero(np.unpackbits(quotients))
    if len(ones) != count or (count and ones[-1] < 8 * (len(quotients) - 1)) or (not count and len(quotients)):
        raise ValueError(f"rice_decode: the quotient stream must end with its {count}th one bit in its last "
                         f"byte, got {len(ones)} one bits in {len(quotients)} bytes")
    r_bits = np.unpackbits(remainders)
    if r_bits[count * k:].any():
        raise ValueError("rice_decode: the remainder stream's padding bits are not zero")
    q = np.diff(ones, prepend=-1) - 1
    r = (r_bits[:count * k].reshape(count, k).astype(np.int64) << np.arange(k - 1, -1, -1)).sum(axis=1)
    end = (int(q.sum()) << k) + int(r.sum()) + count  # last position + 1, in Python ints (no overflow)
    if end > length:
        raise ValueError(f"rice_decode: the positions run to {end - 1}, past the last index {length - 1}")
    return np.cumsum((q << k) + r + 1) - 1
