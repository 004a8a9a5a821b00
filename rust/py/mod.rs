//! The PyO3 bindings: validate the arguments, release the GIL, call into a pure-Rust module
//! (`bits`, `bgemm`, `spmm`, `conv`), and turn errors into Python `ValueError`s naming the function
//! and the argument. Nothing here may panic across FFI: no `unwrap`/`expect`, no indexing that user
//! input can push out of range, outputs allocated through `numpy.empty` (a failed allocation is a
//! Python `MemoryError`, not a panic). Python code never imports `apb_ref._kernels` directly;
//! `apb_ref.kernels.backend` is the one seam. The exact contracts are in `apb_ref/kernels/CONTRACTS.md`.
//!
//! * `args.rs`: argument plumbing shared by every binding;
//! * `bits.rs`: `pack_bits`, `pack_mask`, `pack_2bit`;
//! * `bgemm.rs`: `bgemm_1x1`, `bgemm_1x2`, `bgemm_2x2`;
//! * `prepared.rs`: `bgemm_prepare` (a B operand packed once, the `PreparedB` class), `bgemm_prepared`;
//! * `sparse.rs`: `csr_matmul`, `csr_conv2d`;
//! * `conv.rs`: `im2col_bits`;
//! * `bconv.rs`: `bconv_1bit`, a whole binary conv layer on packed bits;
//! * `net.rs`: the `BinaryNet` class, a chain of binary convs prepared once;
//! * `elementwise.rs`: `relu_forward`, `relu_backward`, `hardtanh_forward`, `hardtanh_backward`,
//!   `sign_forward`;
//! * `loss.rs`: `cross_entropy_forward`, `cross_entropy_backward` (float32);
//! * `norm.rs`: `batch_norm_forward`, `batch_norm_backward`, `batch_norm_eval` (float32);
//! * `optim.rs`: `sgd_step`, `adam_step` (float32, in place);
//! * `pool.rs`: `max_pool_forward`, `max_pool_backward`, `avg_pool_forward`, `avg_pool_backward` (float32);
//! * `quant.rs`: `dorefa_forward`, `dorefa_backward`, `apb_forward`, `apb_backward` (float32);
//! * `train.rs`: `conv2d_forward`, `conv2d_backward_input`, `conv2d_backward_weight`, `conv2d_backward`
//!   (float32, training);
//! * here: `version`, `isa_available`, `isa_selected`, `threads_selected`.
//!
//! `lib.rs` registers them all in the `#[pymodule]`.

mod args;
pub(crate) mod bconv;
pub(crate) mod bgemm;
pub(crate) mod bits;
pub(crate) mod conv;
pub(crate) mod elementwise;
pub(crate) mod loss;
pub(crate) mod net;
pub(crate) mod norm;
pub(crate) mod optim;
pub(crate) mod pool;
pub(crate) mod prepared;
pub(crate) mod quant;
pub(crate) mod sparse;
pub(crate) mod train;

use pyo3::prelude::*;

use crate::{isa, threads};
use args::value_error;

/// The crate version, e.g. "0.1.0".
#[pyfunction]
pub(crate) fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Names of the instruction-set paths this CPU can run, best first (always ends with "scalar").
#[pyfunction]
pub(crate) fn isa_available() -> Vec<&'static str> {
    isa::available().into_iter().map(|i| i.name()).collect()
}

/// The path a kernel call without `isa=` uses: `APB_KERNEL_ISA` if set, else the best available.
#[pyfunction]
pub(crate) fn isa_selected() -> PyResult<&'static str> {
    isa::resolve(None, "isa").map(|i| i.name()).map_err(value_error)
}

/// The thread count a kernel call without `threads=` uses: `APB_NUM_THREADS` if set, else every core.
#[pyfunction]
pub(crate) fn threads_selected() -> PyResult<usize> {
    threads::resolve(None, "threads").map_err(value_error)
}
