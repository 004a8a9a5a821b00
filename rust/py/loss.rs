//! `cross_entropy_forward`, `cross_entropy_backward`: cross-entropy with label smoothing on float32
//! (N, K) logits and int64 (N,) labels (`crate::train::loss`).

use numpy::ndarray::IxDyn;
use numpy::{PyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::args::{as_slice, describe, filled, resolve_threads, slice_of, typed, value_error};
use crate::train::loss::{self, Targets};

/// A C-contiguous float32 (N, K) array with no empty axis, and (N, K).
fn matrix<'py>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, PyUntypedArray>, usize, usize)> {
    let arr = typed::<f32>(func, name, x, "float32", 2)?;
    let (n, k) = (arr.shape()[0], arr.shape()[1]);
    if n == 0 || k == 0 {
        return Err(value_error(format!(
            "{func}: {name} must have no empty axis, {}",
            describe(&arr)
        )));
    }
    Ok((arr, n, k))
}

/// The labels, int64 (N,).
fn labels<'py>(func: &str, target: &Bound<'py, PyAny>, n: usize) -> PyResult<Bound<'py, PyUntypedArray>> {
    let arr = typed::<i64>(func, "target", target, "int64", 1)?;
    if arr.shape()[0] != n {
        return Err(value_error(format!(
            "{func}: target must have {n} labels, {}",
            describe(&arr)
        )));
    }
    Ok(arr)
}

/// (Σ t·logp as a float, logp float32 (N, K)) with t = (1 − ε)·onehot(target) + ε/K from `off` = ε/K
/// and `on` = 1 − ε (each rounded to float32, t at the label their float32 sum); the loss is −Σ/N.
#[pyfunction]
#[pyo3(signature = (logits, target, off, on, threads=None))]
pub(crate) fn cross_entropy_forward<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    off: f64,
    on: f64,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    const F: &str = "cross_entropy_forward";
    let (xa, n, k) = matrix(F, "logits", logits)?;
    let ta = labels(F, target, n)?;
    let threads = resolve_threads(F, threads)?;
    let (xr, tr) = (
        slice_of::<f32>(F, "logits", &xa)?,
        slice_of::<i64>(F, "target", &ta)?,
    );
    let (xs, ts) = (as_slice(F, "logits", &xr)?, as_slice(F, "target", &tr)?);
    let t = Targets::new(off, on);
    let mut total = 0.0;
    let logp = filled::<f32, IxDyn>(py, F, &[n, k], |ls| {
        total = loss::forward(xs, k, ts, &t, ls, threads).map_err(|e| format!("{F}: {e}"))?;
        Ok(())
    })?;
    PyTuple::new(py, [total.into_pyobject(py)?.into_any(), logp.into_any()])
}

/// g·(exp(logp) − t)/N, float32 (N, K), for the loss's upstream gradient g (a float32 value).
#[pyfunction]
#[pyo3(signature = (g, logp, target, off, on, threads=None))]
pub(crate) fn cross_entropy_backward<'py>(
    py: Python<'py>,
    g: f64,
    logp: &Bound<'py, PyAny>,
    target: &Bound<'py, PyAny>,
    off: f64,
    on: f64,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const F: &str = "cross_entropy_backward";
    let (la, n, k) = matrix(F, "logp", logp)?;
    let ta = labels(F, target, n)?;
    let threads = resolve_threads(F, threads)?;
    let (lr, tr) = (
        slice_of::<f32>(F, "logp", &la)?,
        slice_of::<i64>(F, "target", &ta)?,
    );
    let (ls, ts) = (as_slice(F, "logp", &lr)?, as_slice(F, "target", &tr)?);
    let t = Targets::new(off, on);
    filled(py, F, &[n, k], |out| {
        loss::backward(g as f32, ls, k, ts, &t, out, threads).map_err(|e| format!("{F}: {e}"))
    })
}
