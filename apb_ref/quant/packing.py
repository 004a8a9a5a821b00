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
