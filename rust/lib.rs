//! `apb_ref._kernels`: the Rust kernels of apb-ref, exposed to Python through PyO3.
//!
//! The crate is a small kernel library with its Python bindings on top:
//!
//! * `bits`: sign-bit packing, values (float32, int8, bool bytes, 2-bit values) -> u64 bit planes;
//! * `bgemm`: the popcount GEMMs on packed planes (microkernels per ISA, B panels in `bgemm/panel.rs`);
//! * `spmm`: CSR sparse × dense float32;
//! * `conv`: im2col on packed bits and the sparse residual of a convolution from its input map;
//! * `bconv`: a whole binary conv layer on a packed map (gather, popcount GEMM, epilogue, packed signs
//!   of the result) in one pass over the output positions;
//! * `train`: float32 kernels of a training step (conv2d forward and backward, batch norm, activations, pooling, cross-entropy, quantizers, optimizer steps);
//! * `isa`: instruction-set detection and selection, and the one dispatch idiom every kernel uses;
//! * `threads`: thread counts and the task runner;
//! * `py`: the PyO3 bindings (argument checks, errors as `ValueError`, the GIL released while a kernel
//!   runs; nothing there may panic across FFI). This file lists the modules and registers the
//!   functions in the `#[pymodule]`.
//!
//! Python code never imports this module directly; `apb_ref.kernels.backend` is the one seam. The
//! exact contracts are in `apb_ref/kernels/CONTRACTS.md`.
//!
//! # Bit conventions (the same text lives in `apb_ref/kernels/__init__.py`)
//!
//! * 1-bit values are ±1. They are packed 64 per `u64` along the reduction axis K (the last axis), in
//!   little-endian bit order: element `k` of a row goes to word `k / 64`, bit `k % 64`.
//! * Bit 1 means −1 (value < 0, like the IEEE sign bit); bit 0 means +1. So sign(0) = sign(−0.0) = +1.
//! * Padding (K rounded up to a multiple of 64) is bit 0 in every operand, so it adds nothing to
//!   `popcount(a ^ b)`: a ±1 dot product of true length K is `K − 2·popcount(a ^ b)`.
//! * 2-bit signed values `{−3, −1, +1, +3}·(s/2)` are stored as two sign planes `hi`, `lo`, each packed
//!   as above with each bit meaning ±1, and `v = 2·hi + lo`.
//!
//! # Instruction sets and threads
//!
//! Every kernel takes `isa=None` (`"avx512"`, `"avx2"` or `"scalar"`; else the environment variable
//! `APB_KERNEL_ISA`, else the best this CPU has; see `isa.rs`) where it has SIMD paths, and
//! `threads=None` (else `APB_NUM_THREADS`, else every core; see `threads.rs`).

#![deny(unsafe_op_in_unsafe_fn)]
// The microkernels index several register arrays with one loop variable (`acc[i][v]` from `a[i]`
// and `b[v]`); iterator chains would hide that shape.
#![allow(clippy::needless_range_loop)]

pub mod bconv;
pub mod bgemm;
pub mod bits;
pub mod conv;
pub mod isa;
mod lines;
pub mod net;
mod py;
pub mod spmm;
#[cfg(test)]
mod test_rng;
pub mod threads;
pub mod train;

use pyo3::prelude::*;

#[pymodule]
fn _kernels(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(py::version, m)?)?;
    m.add_function(wrap_pyfunction!(py::conv::im2col_bits, m)?)?;
    m.add_function(wrap_pyfunction!(py::sparse::csr_conv2d, m)?)?;
    m.add_function(wrap_pyfunction!(py::bconv::bconv_1bit, m)?)?;
    m.add_class::<py::net::BinaryNet>()?;
    m.add_function(wrap_pyfunction!(py::isa_available, m)?)?;
    m.add_function(wrap_pyfunction!(py::isa_selected, m)?)?;
    m.add_function(wrap_pyfunction!(py::threads_selected, m)?)?;
    m.add_function(wrap_pyfunction!(py::bits::pack_bits, m)?)?;
    m.add_function(wrap_pyfunction!(py::bits::pack_mask, m)?)?;
    m.add_function(wrap_pyfunction!(py::bits::pack_2bit, m)?)?;
    m.add_function(wrap_pyfunction!(py::bgemm::bgemm_1x1, m)?)?;
    m.add_function(wrap_pyfunction!(py::bgemm::bgemm_1x2, m)?)?;
    m.add_function(wrap_pyfunction!(py::bgemm::bgemm_2x2, m)?)?;
    m.add_function(wrap_pyfunction!(py::bgemm::xor_popcount_peak, m)?)?;
    m.add_function(wrap_pyfunction!(py::prepared::bgemm_prepare, m)?)?;
    m.add_function(wrap_pyfunction!(py::prepared::bgemm_prepared, m)?)?;
    m.add_class::<py::prepared::PreparedB>()?;
    m.add_function(wrap_pyfunction!(py::sparse::csr_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(py::train::conv2d_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::train::conv2d_backward_input, m)?)?;
    m.add_function(wrap_pyfunction!(py::train::conv2d_backward_weight, m)?)?;
    m.add_function(wrap_pyfunction!(py::train::conv2d_backward, m)?)?;
    m.add_function(wrap_pyfunction!(py::norm::batch_norm_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::norm::batch_norm_backward, m)?)?;
    m.add_function(wrap_pyfunction!(py::norm::batch_norm_eval, m)?)?;
    m.add_function(wrap_pyfunction!(py::elementwise::relu_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::elementwise::relu_backward, m)?)?;
    m.add_function(wrap_pyfunction!(py::elementwise::hardtanh_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::elementwise::hardtanh_backward, m)?)?;
    m.add_function(wrap_pyfunction!(py::elementwise::sign_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::optim::sgd_step, m)?)?;
    m.add_function(wrap_pyfunction!(py::optim::adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(py::quant::dorefa_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::quant::dorefa_backward, m)?)?;
    m.add_function(wrap_pyfunction!(py::quant::apb_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::quant::apb_backward, m)?)?;
    m.add_function(wrap_pyfunction!(py::pool::max_pool_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::pool::max_pool_backward, m)?)?;
    m.add_function(wrap_pyfunction!(py::pool::avg_pool_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::pool::avg_pool_backward, m)?)?;
    m.add_function(wrap_pyfunction!(py::loss::cross_entropy_forward, m)?)?;
    m.add_function(wrap_pyfunction!(py::loss::cross_entropy_backward, m)?)?;
    Ok(())
}
