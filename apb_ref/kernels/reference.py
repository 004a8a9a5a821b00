"""NumPy reference kernels: the readable oracle that every Rust kernel is tested against.

Bit conventions: see the docstring of `apb_ref.kernels`.
"""
from __future__ import annotations

import numbers

import numpy as np

WORD_BITS = 64


def words_for(k: int) -> int:
    """Number of uint64 words that hold `k` bits."""
    return -(-k // WORD_BITS)


def pack_bits(x) -> np.ndarray:
    """Pack the signs of a (rows, K) real matrix into a (rows, ceil(K/64)) uint64 matrix.

    Bit k % 64 of word k // 64 is 1 where x[row, k] < 0 (so 0 and -0.0 give bit 0, i.e. +1);
    padding bits past K are 0. Accepts float or integer input; NaN is rejected.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"pack_bits: x must be a 2-D array (rows, K), got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        # bool is refused on purpose: False/True has no sign, so the meaning would be a guess.
        raise ValueError(f"pack_bits: x must be a float or integer array, got dtype {x.dtype}")
    if x.dtype.kind == "f" and np.isnan(x).any():
        row, col = np.argwhere(np.isnan(x))[0]
        raise ValueError(f"pack_bits: x contains NaN (first at row {row}, column {col})")
    rows, k = x.shape
    words = words_for(k)
    neg = np.zeros((rows, words * WORD_BITS), dtype=bool)  # zero padding up to whole words
    neg[:, :k] = x < 0
    packed = np.packbits(neg, axis=1, bitorder="little")  # (rows, 8 * words) uint8, bit k at byte k//8
    # Little-endian bytes -> words: byte j of a word holds bits 8j..8j+7, whatever the host order.
    return packed.view("<u8").astype(np.uint64, copy=False).reshape(rows, words)


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
