//! `csr_matmul` and `csr_conv2d`: a CSR matrix times a dense matrix (`crate::spmm`) or times the
//! im2col columns of a map, computed from the map itself (`crate::conv`).

use numpy::{PyArray2, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::args::{
    as_slice, filled2, py_shape, resolve_isa, resolve_threads, slice_of, typed, value_error, window_args,
};
use crate::{conv, spmm};

/// CSR (M, K) × dense float32 (K, N) -> float32 (M, N). `indptr` int64 (M+1,), `indices` int32
/// (nnz,) in [0, K), `data` float32 (nnz,).
#[pyfunction]
#[pyo3(signature = (indptr, indices, data, x, threads=None, isa=None))]
pub(crate) fn csr_matmul<'py>(
    py: Python<'py>,
    indptr: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
    isa: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    const F: &str = "csr_matmul";
    let csr = CsrArgs::new(F, indptr, indices, data)?;
    let x_a = typed::<f32>(F, "x", x, "float32", 2)?;
    let (k, n) = match x_a.shape() {
        [k, n] => (*k, *n),
        _ => return Err(value_error(format!("{F}: x must be 2-D"))),
    };
    let isa = resolve_isa(F, isa)?;
    let threads = resolve_threads(F, threads)?;
    let x_ro = slice_of::<f32>(F, "x", &x_a)?;
    let xs = as_slice(F, "x", &x_ro)?;
    let (ip, ix, d, m) = csr.validated(F, k)?;
    filled2(py, F, m, n, |os| {
        spmm::csr_matmul(ip, ix, d, xs, k, n, isa, threads, os).map_err(|e| format!("{F}: {e}"))
    })
}

/// indptr, indices, data and the row count of a validated CSR matrix.
type CsrSlices<'a> = (&'a [i64], &'a [i32], &'a [f32], usize);

/// The CSR arrays of a sparse operand S, checked for dtype, ndim and contiguity and borrowed
/// read-only (csr_matmul, csr_conv2d).
struct CsrArgs<'py> {
    indptr: numpy::PyReadonlyArrayDyn<'py, i64>,
    indices: numpy::PyReadonlyArrayDyn<'py, i32>,
    data: numpy::PyReadonlyArrayDyn<'py, f32>,
}

impl<'py> CsrArgs<'py> {
    fn new(
        func: &str,
        indptr: &Bound<'py, PyAny>,
        indices: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            indptr: slice_of(func, "indptr", &typed::<i64>(func, "indptr", indptr, "int64", 1)?)?,
            indices: slice_of(
                func,
                "indices",
                &typed::<i32>(func, "indices", indices, "int32", 1)?,
            )?,
            data: slice_of(func, "data", &typed::<f32>(func, "data", data, "float32", 1)?)?,
        })
    }

    /// The three slices (indptr, indices, data), checked as a CSR matrix with `k` columns, and its
    /// row count.
    fn validated(&self, func: &str, k: usize) -> PyResult<CsrSlices<'_>> {
        let (ip, ix, d) = (
            as_slice(func, "indptr", &self.indptr)?,
            as_slice(func, "indices", &self.indices)?,
            as_slice(func, "data", &self.data)?,
        );
        let m = spmm::validate(ip, ix, d.len(), k).map_err(|e| value_error(format!("{func}: {e}")))?;
        Ok((ip, ix, d, m))
    }
}

/// The sparse residual of a conv from its input map: CSR (O, C·kh·kw) × float32 x (N, C, H, W) ->
/// float32 (O, N·Ho·Wo), equal to csr_matmul(S, im2col columns of x) up to float rounding; with
/// `signs`, of sign(x) (±1, sign(0) = +1). With `add_to` (a C-contiguous float32 (O, N·Ho·Wo) array)
/// the result is added to it in place and it is returned; no new array is made.
#[pyfunction]
#[pyo3(signature = (indptr, indices, data, x, kh, kw, stride=None, padding=None, signs=false, threads=None, *, add_to=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn csr_conv2d<'py>(
    py: Python<'py>,
    indptr: &Bound<'py, PyAny>,
    indices: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    kh: &Bound<'py, PyAny>,
    kw: &Bound<'py, PyAny>,
    stride: Option<&Bound<'py, PyAny>>,
    padding: Option<&Bound<'py, PyAny>>,
    signs: bool,
    threads: Option<&Bound<'py, PyAny>>,
    add_to: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    const F: &str = "csr_conv2d";
    let win = window_args(F, kh, kw, stride, padding)?;
    let threads = resolve_threads(F, threads)?;
    let csr = CsrArgs::new(F, indptr, indices, data)?;
    let x_a = typed::<f32>(F, "x", x, "float32", 4)?;
    let [n, c, h, w] = x_a.shape() else {
        return Err(value_error(format!("{F}: x must be 4-D")));
    };
    let shape = [*n, *c, *h, *w];
    let (ho, wo) = win
        .output(shape[2], shape[3])
        .map_err(|e| value_error(format!("{F}: {e}")))?;
    let (Some(k), Some(pixels)) = (
        shape[1].checked_mul(win.kh).and_then(|t| t.checked_mul(win.kw)),
        shape[0].checked_mul(ho).and_then(|p| p.checked_mul(wo)),
    ) else {
        return Err(value_error(format!(
            "{F}: c·kh·kw or the number of output pixels overflows"
        )));
    };
    let x_ro = slice_of::<f32>(F, "x", &x_a)?;
    let xs = as_slice(F, "x", &x_ro)?;
    let (ip, ix, d, m) = csr.validated(F, k)?;
    let run = |accumulate: bool, os: &mut [f32]| {
        conv::csr_conv2d(ip, ix, d, xs, shape, win, signs, accumulate, threads, os)
            .map_err(|e| format!("{F}: {e}"))
    };
    let Some(add_to) = add_to.filter(|a| !a.is_none()) else {
        return filled2(py, F, m, pixels, |os| run(false, os));
    };
    let acc = typed::<f32>(F, "add_to", add_to, "float32", 2)?;
    if acc.shape() != [m, pixels] {
        return Err(value_error(format!(
            "{F}: add_to must have shape (O, N·Ho·Wo) = {}, got {}",
            py_shape(&[m, pixels]),
            py_shape(acc.shape())
        )));
    }
    // The kernel reads x and the CSR arrays while it writes add_to: refuse any overlap. The borrow
    // check below sees only arrays with the same base object, not two views of one buffer.
    let may_share = py.import("numpy")?.getattr("may_share_memory")?;
    for (name, input) in [("x", x), ("data", data), ("indices", indices), ("indptr", indptr)] {
        if may_share.call1((add_to, input))?.is_truthy()? {
            return Err(value_error(format!(
                "{F}: add_to must not share memory with {name}"
            )));
        }
    }
    let acc = acc
        .cast_into::<PyArray2<f32>>()
        .map_err(|e| value_error(format!("{F}: add_to: {e}")))?;
    {
        // Fails (a ValueError) if add_to is read-only.
        let mut rw = acc
            .try_readwrite()
            .map_err(|e| value_error(format!("{F}: add_to: {e}")))?;
        let os = rw
            .as_slice_mut()
            .map_err(|e| value_error(format!("{F}: add_to: {e}")))?;
        py.detach(|| run(true, os)).map_err(value_error)?;
    }
    Ok(acc)
}
