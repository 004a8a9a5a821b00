"""Kernels of apb-ref: NumPy references (`reference`) and the backend seam (`backend`) that runs them in
NumPy or in the Rust extension `apb_ref._kernels`. Call kernels through this package or `backend`.

Bit conventions (decided once; the Rust crate docs in rust/lib.rs say the same):

* 1-bit values are ±1. A row is packed 64 values per ``uint64`` along the reduction axis K (the last
  axis), in little-endian bit order: element ``k`` of a row goes to word ``k // 64``, bit ``k % 64``.
  A (rows, K) matrix becomes a (rows, ceil(K/64)) ``uint64`` matrix.
* Bit 1 means −1 (the value is < 0, like the IEEE sign bit); bit 0 means +1. So sign(0) = sign(−0.0) = +1.
* Padding, from K up to the next multiple of 64, is bit 0 in every operand, so it adds nothing to
  ``popcount(a XOR b)``. A ±1 dot product of true length K is therefore ``K − 2·popcount(a XOR b)``;
  always use the true K, never the padded one.
* 2-bit signed values ``{−3, −1, +1, +3}·(s/2)`` are stored as two sign planes ``hi`` and ``lo``, each
  packed as above with each bit meaning ±1, and ``v = 2·hi + lo``.
"""
from .backend import (  # noqa: F401
    KERNEL_NAMES,
    available_backends,
    bconv_1bit,
    binary_net,
    bgemm_1x1,
    bgemm_1x2,
    bgemm_2x2,
    csr_conv2d,
    csr_matmul,
    get_backend,
    im2col,
    im2col_bits,
    pack_2bit,
    pack_bits,
    pack_mask,
    rust_version,
    set_backend,
    unpack_2bit,
    unpack_bits,
    use_backend,
)

__all__ = ["available_backends", "get_backend", "set_backend", "use_backend", "rust_version", *KERNEL_NAMES]
