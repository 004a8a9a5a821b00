//! `batch_norm_forward`, `batch_norm_backward`: batch normalisation of a training step on float32
//! (N, C) or (N, C, H, W) arrays (`crate::train::norm`).

use numpy::ndarray::IxDyn;
use numpy::{
    PyArray1, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::args::{
    as_array, as_slice, describe, empty, filled, has_dtype, resolve_threads, slice_of, value_error,
};
use super::elementwise::clip_range;
use crate::train::elementwise::Act;
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

/// The fused activation named by `act` ("identity", "relu", "hardtanh" with lo < hi as float32).
fn activation(func: &str, act: &str, lo: f64, hi: f64) -> PyResult<Act> {
    match act {
        "identity" => Ok(Act::Identity),
        "relu" => Ok(Act::Relu),
        "hardtanh" => {
            let (lo, hi) = clip_range(func, lo, hi)?;
            Ok(Act::Clip { lo, hi })
        }
        _ => Err(value_error(format!(
            "{func}: act must be 'identity', 'relu' or 'hardtanh', got {act:?}"
        ))),
    }
}

/// An optional float32 array of `like`'s shape (None stays None), borrowed read-only.
fn same_shape<'py>(
    func: &str,
    name: &str,
    v: Option<&Bound<'py, PyAny>>,
    like: &Bound<'py, PyUntypedArray>,
) -> PyResult<Option<PyReadonlyArrayDyn<'py, f32>>> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    let (arr, _) = batch(func, name, v)?;
    if arr.shape() != like.shape() {
        return Err(value_error(format!(
            "{func}: {name} must have shape {:?}, {}",
            like.shape(),
            describe(&arr)
        )));
    }
    slice_of::<f32>(func, name, &arr).map(Some)
}

/// Batch normalisation with batch statistics: (y, mean, var, inv_std) for x float32 (N, C[, H, W]),
/// γ and β float32 (C,), eps ≥ 0; var is biased, inv_std = 1/sqrt(var + eps). Fused after it, in the
/// same pass: y = act(y + residual) (`residual` of x's shape or None, `act` "identity", "relu" or
/// "hardtanh" clipping to [lo, hi]), bit for bit the separate ops.
#[pyfunction]
#[pyo3(signature = (x, gamma, beta, eps, residual=None, act="identity", lo=-1.0, hi=1.0, threads=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_forward<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    gamma: &Bound<'py, PyAny>,
    beta: &Bound<'py, PyAny>,
    eps: f64,
    residual: Option<&Bound<'py, PyAny>>,
    act: &str,
    lo: f64,
    hi: f64,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    const F: &str = "batch_norm_forward";
    let (xa, d) = batch(F, "x", x)?;
    let act = activation(F, act, lo, hi)?;
    let rr = same_shape(F, "residual", residual, &xa)?;
    let rs = rr.as_ref().map(|r| as_slice(F, "residual", r)).transpose()?;
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
        let then = norm::Epilogue { residual: rs, act };
        stats = norm::forward(d, xs, gs, bs, eps, then, ys, threads).map_err(|e| format!("{F}: {e}"))?;
        Ok(())
    })?;
    let [mean, var, inv_std] =
        [stats.mean, stats.var, stats.inv_std].map(|v| PyArray1::from_vec(py, v).into_any());
    PyTuple::new(py, [y.into_any(), mean, var, inv_std])
}

/// The gradients of batch normalisation from g, the forward's input x and its mean and inv_std: (dx
/// or None when `input_grad` is False, Σg = dβ, Σg·x̂ = dγ, g_act), the sums float32 (C,). With `y`
/// (the fused forward's output) g first goes back through the fused activation `act`; that gradient
/// is g_act (also the residual's gradient), else g_act is None.
#[pyfunction]
#[pyo3(signature = (g, x, gamma, mean, inv_std, input_grad=true, y=None, act="identity", lo=-1.0, hi=1.0,
                    threads=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch_norm_backward<'py>(
    py: Python<'py>,
    g: &Bound<'py, PyAny>,
    x: &Bound<'py, PyAny>,
    gamma: &Bound<'py, PyAny>,
    mean: &Bound<'py, PyAny>,
    inv_std: &Bound<'py, PyAny>,
    input_grad: bool,
    y: Option<&Bound<'py, PyAny>>,
    act: &str,
    lo: f64,
    hi: f64,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    const F: &str = "batch_norm_backward";
    let act = activation(F, act, lo, hi)?;
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
    let yr = same_shape(F, "y", y, &ga)?;
    let ys = yr.as_ref().map(|r| as_slice(F, "y", r)).transpose()?;
    let g_act = match ys {
        Some(_) => Some(empty::<f32, IxDyn>(py, F, ga.shape())?),
        None => None,
    };
    let mut g_act_rw = g_act.as_ref().map(|a| a.readwrite());
    let mut g_act_slice = match g_act_rw.as_mut() {
        Some(rw) => Some(
            rw.as_slice_mut()
                .map_err(|e| value_error(format!("{F}: g_act: {e}")))?,
        ),
        None => None,
    };
    let mut sums = (vec![], vec![]);
    let mut run = |out: Option<&mut [f32]>| -> Result<(), String> {
        let through = ys
            .zip(g_act_slice.take())
            .map(|(y, g_act)| norm::ActGrad { act, y, g_act });
        sums =
            norm::backward(d, gs, xs, gm, ms, is, through, out, threads).map_err(|e| format!("{F}: {e}"))?;
        Ok(())
    };
    let first = if input_grad {
        filled::<f32, IxDyn>(py, F, ga.shape(), |gx| run(Some(gx)))?.into_any()
    } else {
        py.detach(|| run(None)).map_err(value_error)?;
        py.None().into_bound(py)
    };
    let (g_sum, gx_sum) = sums;
    drop(g_act_rw);
    PyTuple::new(
        py,
        [
            first,
            PyArray1::from_vec(py, g_sum).into_any(),
            PyArray1::from_vec(py, gx_sum).into_any(),
            g_act.map_or_else(|| py.None().into_bound(py), |a| a.into_any()),
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
