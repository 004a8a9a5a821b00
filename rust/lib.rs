//! `apb_ref._kernels`: the Rust kernels of apb-ref, exposed to Python through PyO3.
//!
//! This file holds only the bindings: validate the arguments, release the GIL, call into a pure-Rust
//! module (`pack`, ...), and turn errors into Python `ValueError`s. Nothing here may panic across FFI.
//! Python code never imports this module directly; `apb_ref.kernels.backend` is the one seam.
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

pub mod pack;

use numpy::{PyArray2, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The crate version, e.g. "0.1.0".
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// Format a shape the way Python prints a tuple: `(3,)`, `(2, 5)`.
fn py_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Borrow `x` as a C-contiguous 2-D float32 array, or explain what came instead.
fn as_f32_matrix<'a, 'py>(
    func: &str,
    name: &str,
    x: &'a Bound<'py, PyAny>,
) -> PyResult<&'a Bound<'py, PyArray2<f32>>> {
    let expected = format!("{func}: {name} must be a C-contiguous float32 2-D array");
    let arr = x.cast::<PyUntypedArray>().map_err(|_| {
        let ty = x
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| "?".into());
        PyValueError::new_err(format!("{expected}, got an object of type {ty}"))
    })?;
    let dtype_ok = arr.dtype().is_equiv_to(&numpy::dtype::<f32>(x.py()));
    if arr.ndim() != 2 || !dtype_ok || !arr.is_c_contiguous() {
        let layout = if arr.is_c_contiguous() {
            ""
        } else {
            ", not C-contiguous"
        };
        return Err(PyValueError::new_err(format!(
            "{expected}, got dtype {} shape {}{layout}",
            arr.dtype(),
            py_shape(arr.shape())
        )));
    }
    x.cast::<PyArray2<f32>>()
        .map_err(|e| PyValueError::new_err(format!("{expected}: {e}")))
}

/// Pack the signs of a (rows, K) float32 matrix into a (rows, ceil(K/64)) uint64 matrix.
///
/// Bit `k % 64` of word `k / 64` is 1 where `x[row, k] < 0`; padding bits are 0. NaN is rejected.
#[pyfunction]
fn pack_bits<'py>(py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray2<u64>>> {
    let arr = as_f32_matrix("pack_bits", "x", x)?;
    let (rows, k) = (arr.shape()[0], arr.shape()[1]);
    let x_ro = arr
        .try_readonly()
        .map_err(|e| PyValueError::new_err(format!("pack_bits: x: {e}")))?;
    let xs = x_ro
        .as_slice()
        .map_err(|e| PyValueError::new_err(format!("pack_bits: x: {e}")))?;

    let out = PyArray2::<u64>::zeros(py, [rows, pack::words_for(k)], false);
    {
        let mut out_rw = out.readwrite();
        let os = out_rw
            .as_slice_mut()
            .map_err(|e| PyValueError::new_err(format!("pack_bits: output: {e}")))?;
        py.detach(|| pack::pack_rows(xs, k, os)).map_err(|e| {
            PyValueError::new_err(match e {
                pack::PackError::Nan { row, col } => {
                    format!("pack_bits: x contains NaN (first at row {row}, column {col})")
                }
                pack::PackError::Length(msg) => format!("pack_bits: {msg}"),
            })
        })?;
    }
    Ok(out)
}

#[pymodule]
fn _kernels(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(pack_bits, m)?)?;
    Ok(())
}
