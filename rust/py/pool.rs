//! `max_pool_forward`, `max_pool_backward`, `avg_pool_forward`, `avg_pool_backward`: pooling of a
//! training step on float32 NCHW arrays (`crate::train::pool`).

use numpy::ndarray::IxDyn;
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::args::{
    as_slice, count_arg, describe, empty, filled, resolve_threads, slice_of, typed, value_error,
};
use crate::train::pool::{self, Pool};

/// A C-contiguous 4-D array of `T` with no empty axis.
fn nchw<'py, T: numpy::Element>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
    want: &str,
) -> PyResult<(Bound<'py, PyUntypedArray>, [usize; 4])> {
    let arr = typed::<T>(func, name, x, want, 4)?;
    let shape: [usize; 4] = arr
        .shape()
        .try_into()
        .map_err(|_| value_error(format!("{func}: {name} must be 4-D")))?;
    if shape.contains(&0) {
        return Err(value_error(format!(
            "{func}: {name} must have no empty axis, {}",
            describe(&arr)
        )));
    }
    Ok((arr, shape))
}

/// The window arguments and the geometry over `planes` planes of h×w.
fn geometry(
    func: &str,
    planes: usize,
    (h, w): (usize, usize),
    k: &Bound<'_, PyAny>,
    stride: &Bound<'_, PyAny>,
    padding: &Bound<'_, PyAny>,
) -> PyResult<Pool> {
    let k = count_arg(func, "k", Some(k), None, 1)?;
    let stride = count_arg(func, "stride", Some(stride), None, 1)?;
    let padding = count_arg(func, "padding", Some(padding), None, 0)?;
    Pool::new(planes, h, w, k, stride, padding).map_err(|e| value_error(format!("{func}: {e}")))
}

/// The output gradient g, float32 (N, C, Ho, Wo) of the geometry `p`.
fn output_grad<'py>(
    func: &str,
    g: &Bound<'py, PyAny>,
    h: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    window: [&Bound<'py, PyAny>; 3],
) -> PyResult<(Bound<'py, PyUntypedArray>, [usize; 4], Pool)> {
    let (ga, [n, c, gh, gw]) = nchw::<f32>(func, "g", g, "float32")?;
    let h = count_arg(func, "h", Some(h), None, 1)?;
    let w = count_arg(func, "w", Some(w), None, 1)?;
    let [k, stride, padding] = window;
    let p = geometry(func, n * c, (h, w), k, stride, padding)?;
    if (gh, gw) != (p.ho, p.wo) {
        return Err(value_error(format!(
            "{func}: g is {gh}x{gw} per channel, but the window makes {}x{} of a {h}x{w} input",
            p.ho, p.wo
        )));
    }
    Ok((ga, [n, c, h, w], p))
}

/// Max pooling: (y, winner), winner int64 (N, C, Ho, Wo) the index i·k + j of each window's first
/// maximum (or first NaN), as NumPy's argmax; the padding is −inf.
#[pyfunction]
#[pyo3(signature = (x, k, stride, padding, threads=None))]
pub(crate) fn max_pool_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    stride: &Bound<'py, PyAny>,
    padding: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    const F: &str = "max_pool_forward";
    let (xa, [n, c, h, w]) = nchw::<f32>(F, "x", x, "float32")?;
    let p = geometry(F, n * c, (h, w), k, stride, padding)?;
    let threads = resolve_threads(F, threads)?;
    let xr = slice_of::<f32>(F, "x", &xa)?;
    let xs = as_slice(F, "x", &xr)?;
    let out = [n, c, p.ho, p.wo];
    let winner = empty::<i64, IxDyn>(py, F, &out)?; // max_forward writes every winner
    let mut wr = winner
        .try_readwrite()
        .map_err(|e| value_error(format!("{F}: winner: {e}")))?;
    let ws = wr
        .as_slice_mut()
        .map_err(|e| value_error(format!("{F}: winner: {e}")))?;
    let y = filled::<f32, IxDyn>(py, F, &out, |ys| {
        pool::max_forward(&p, xs, ys, ws, threads).map_err(|e| format!("{F}: {e}"))
    })?;
    drop(wr);
    PyTuple::new(py, [y.into_any(), winner.into_any()])
}

/// The input gradient of max pooling from g and the forward's winners, float32 (N, C, h, w).
#[pyfunction]
#[pyo3(signature = (g, winner, h, w, k, stride, padding, threads=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn max_pool_backward<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    winner: &Bound<'py, PyAny>,
    h: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    stride: &Bound<'py, PyAny>,
    padding: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const F: &str = "max_pool_backward";
    let (ga, shape, p) = output_grad(F, g, h, w, [k, stride, padding])?;
    let (wa, _) = nchw::<i64>(F, "winner", winner, "int64")?;
    if wa.shape() != ga.shape() {
        return Err(value_error(format!(
            "{F}: winner must have g's shape {:?}, {}",
            ga.shape(),
            describe(&wa)
        )));
    }
    let threads = resolve_threads(F, threads)?;
    let (gr, wr) = (slice_of::<f32>(F, "g", &ga)?, slice_of::<i64>(F, "winner", &wa)?);
    let (gs, ws) = (as_slice(F, "g", &gr)?, as_slice(F, "winner", &wr)?);
    filled(py, F, &shape, |dx| {
        pool::max_backward(&p, gs, ws, dx, threads).map_err(|e| format!("{F}: {e}"))
    })
}

/// Average pooling: the mean of each k×k window, the zero padding counted.
#[pyfunction]
#[pyo3(signature = (x, k, stride, padding, threads=None))]
pub(crate) fn avg_pool_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    stride: &Bound<'py, PyAny>,
    padding: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const F: &str = "avg_pool_forward";
    let (xa, [n, c, h, w]) = nchw::<f32>(F, "x", x, "float32")?;
    let p = geometry(F, n * c, (h, w), k, stride, padding)?;
    let threads = resolve_threads(F, threads)?;
    let xr = slice_of::<f32>(F, "x", &xa)?;
    let xs = as_slice(F, "x", &xr)?;
    filled(py, F, &[n, c, p.ho, p.wo], |ys| {
        pool::avg_forward(&p, xs, ys, threads).map_err(|e| format!("{F}: {e}"))
    })
}

/// The input gradient of average pooling, float32 (N, C, h, w).
#[pyfunction]
#[pyo3(signature = (g, h, w, k, stride, padding, threads=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn avg_pool_backward<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    h: &Bound<'py, PyAny>,
    w: &Bound<'py, PyAny>,
    k: &Bound<'py, PyAny>,
    stride: &Bound<'py, PyAny>,
    padding: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const F: &str = "avg_pool_backward";
    let (ga, shape, p) = output_grad(F, g, h, w, [k, stride, padding])?;
    let threads = resolve_threads(F, threads)?;
    let gr = slice_of::<f32>(F, "g", &ga)?;
    let gs = as_slice(F, "g", &gr)?;
    filled(py, F, &shape, |dx| {
        pool::avg_backward(&p, gs, dx, threads).map_err(|e| format!("{F}: {e}"))
    })
}
