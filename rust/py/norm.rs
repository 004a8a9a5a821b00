//! `batch_norm_forward`, `batch_norm_backward`: batch normalisation of a training step on float32
//! (N, C) or (N, C, H, W) arrays (`crate::train::norm`).

use numpy::ndarray::IxDyn;
use numpy::{PyArray1, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::args::{as_array, as_slice, describe, filled, has_dtype, resolve_threads, slice_of, value_error};
use crate::train::norm::{self, Dims};

/// A C-contiguous float32 (N, C) or (N, C, H, W) array with no empty axis, and its sizes.
fn batch<'py>(func: &str, name: &str, x: &Bound<'py, PyAny>) -> PyResult<(Bound<'py, PyUntypedArray>, Dims)> {
    let expected = format!("{func}: {name} must be a C-contiguous float32 (N, C) or (N, C, H, W) array");
    let arr = as_array(x, &expected)?;
    let shape = arr.shape().to_vec();
    if !matches!(shape.len(), 2 | 4) || !has_dtype::<f32>(arr) || !arr.is_c_contiguous() {
        return Err(value_error(format!("{expected}, {}", describe(arr))));
    }
    if shape.contains(&0) {
        return Err(value_error(format!(
            "{func}: {name} must have no empty axis, {}",
            describe(arr)
        )));
    }
    let hw = shape[2..].iter().product();
    Ok((
        arr.clone(),
        Dims {
            n: shape[0],
            c: shape[1],
            hw,
        },
    ))
}

/// A C-contiguous float32 vector of `len` values, borrowed read-only.
fn vector<'py>(
    func: &str,
    name: &str,
    v: &Bound<'py, PyAny>,
    len: usize,
) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    let expected = format!("{func}: {name} must be a C-contiguous float32 array of shape ({len},)");
    let arr = as_array(v, &expected)?;
    if arr.shape() != [len] || !has_dtype::<f32>(arr) || !arr.is_c_contiguous() {
        return Err(value_error(format!("{expected}, {}", describe(arr))));
    }
    slice_of::<f32>(func, name, arr)
}

/// Batch normalisation with batch statistics: (y, mean, var, inv_std) for x float32 (N, C[, H, W]),
/// γ and β float32 (C,), eps ≥ 0; var is biased, inv_std = 1/sqrt(var + eps).
#[pyfunction]
#[pyo3(signature = (x, gamma, beta, eps, threads=None))]
pub(crate) fn batch_norm_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    gamma: &Bound<'py, PyAny>,
    beta: &Bound<'py, PyAny>,
    eps: f64,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    const F: &str = "batch_norm_forward";
    let (xa, d) = batch(F, "x", x)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(value_error(format!(
            "{F}: eps must be a finite number >= 0, got {eps}"
        )));
    }
    let (gr, br) = (vector(F, "gamma", gamma, d.c)?, vector(F, "beta", beta, d.c)?);
    let threads = resolve_threads(F, threads)?;
    let xr = slice_of::<f32>(F, "x", &xa)?;
    let (xs, gs, bs) = (
        as_slice(F, "x", &xr)?,
        as_slice(F, "gamma", &gr)?,
        as_slice(F, "beta", &br)?,
    );
    let mut stats = norm::Stats::default();
    let y = filled::<f32, IxDyn>(py, F, xa.shape(), |ys| {
        stats = norm::forward(d, xs, gs, bs, eps, ys, threads).map_err(|e| format!("{F}: {e}"))?;
        Ok(())
    })?;
    let [mean, var, inv_std] =
        [stats.mean, stats.var, stats.inv_std].map(|v| PyArray1::from_vec(py, v).into_any());
    PyTuple::new(py, [y.into_any(), mean, var, inv_std])
}

/// The gradients of batch normalisation from g, the forward's input x and its mean and inv_std: (dx
/// or None when `input_grad` is False, Σg = dβ, Σg·x̂ = dγ), the sums float32 (C,).
#[pyfunction]
#[pyo3(signature = (g, x, gamma, mean, inv_std, input_grad=true, threads=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_backward<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    gamma: &Bound<'py, PyAny>,
    mean: &Bound<'py, PyAny>,
    inv_std: &Bound<'py, PyAny>,
    input_grad: bool,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    const F: &str = "batch_norm_backward";
    let (ga, d) = batch(F, "g", g)?;
    let (xa, _) = batch(F, "x", x)?;
    if xa.shape() != ga.shape() {
        return Err(value_error(format!(
            "{F}: x must have g's shape {:?}, {}",
            ga.shape(),
            describe(&xa)
        )));
    }
    let (gmr, mr, isr) = (
        vector(F, "gamma", gamma, d.c)?,
        vector(F, "mean", mean, d.c)?,
        vector(F, "inv_std", inv_std, d.c)?,
    );
    let threads = resolve_threads(F, threads)?;
    let (gr, xr) = (slice_of::<f32>(F, "g", &ga)?, slice_of::<f32>(F, "x", &xa)?);
    let (gs, xs) = (as_slice(F, "g", &gr)?, as_slice(F, "x", &xr)?);
    let (gm, ms, is) = (
        as_slice(F, "gamma", &gmr)?,
        as_slice(F, "mean", &mr)?,
        as_slice(F, "inv_std", &isr)?,
    );
    let mut sums = (vec![], vec![]);
    let mut run = |out: Option<&mut [f32]>| -> Result<(), String> {
        sums = norm::backward(d, gs, xs, gm, ms, is, out, threads).map_err(|e| format!("{F}: {e}"))?;
        Ok(())
    };
    let first = if input_grad {
        filled::<f32, IxDyn>(py, F, ga.shape(), |gx| run(Some(gx)))?.into_any()
    } else {
        py.detach(|| run(None)).map_err(value_error)?;
        py.None().into_bound(py)
    };
    let (g_sum, gx_sum) = sums;
    PyTuple::new(
        py,
        [
            first,
            PyArray1::from_vec(py, g_sum).into_any(),
            PyArray1::from_vec(py, gx_sum).into_any(),
        ],
    )
}

/// Batch normalisation in eval mode: (x − mean)·scale + beta per channel for x float32 (N, C[, H, W])
/// and float32 (C,) vectors, bit for bit NumPy's `(x - mean) * scale + beta`.
#[pyfunction]
#[pyo3(signature = (x, mean, scale, beta, threads=None))]
pub(crate) fn batch_norm_eval<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    mean: &Bound<'py, PyAny>,
    scale: &Bound<'py, PyAny>,
    beta: &Bound<'py, PyAny>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    const F: &str = "batch_norm_eval";
    let (xa, d) = batch(F, "x", x)?;
    let (mr, sr, br) = (
        vector(F, "mean", mean, d.c)?,
        vector(F, "scale", scale, d.c)?,
        vector(F, "beta", beta, d.c)?,
    );
    let threads = resolve_threads(F, threads)?;
    let xr = slice_of::<f32>(F, "x", &xa)?;
    let (xs, ms, ss, bs) = (
        as_slice(F, "x", &xr)?,
        as_slice(F, "mean", &mr)?,
        as_slice(F, "scale", &sr)?,
        as_slice(F, "beta", &br)?,
    );
    filled(py, F, xa.shape(), |ys| {
        norm::affine(d, xs, ms, ss, bs, ys, threads).map_err(|e| format!("{F}: {e}"))
    })
}
