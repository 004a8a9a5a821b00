//! `sgd_step`, `adam_step`: one optimizer step on one float32 parameter, in place
//! (`crate::train::optim`). The arrays written (the parameter, the momentum buffer, Adam's moments)
//! must be C-contiguous, aligned and writeable: they are never copied, so a copy cannot swallow the
//! update; a bad one is a ValueError naming it.

use numpy::{
    PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArray,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use super::args::{as_array, describe, has_dtype, resolve_threads, slice_of, value_error};
use crate::train::optim::{self, Adam, Buffer, Sgd};

/// `x` checked as a C-contiguous float32 array of `shape` (any shape when None).
fn float32<'py>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
    shape: Option<&[usize]>,
) -> PyResult<Bound<'py, PyUntypedArray>> {
    let expected = match shape {
        Some(s) => format!("{func}: {name} must be a C-contiguous float32 array of shape {s:?}"),
        None => format!("{func}: {name} must be a C-contiguous float32 array"),
    };
    let arr = as_array(x, &expected)?;
    if !has_dtype::<f32>(arr) || !arr.is_c_contiguous() || shape.is_some_and(|s| arr.shape() != s) {
        return Err(value_error(format!("{expected}, {}", describe(arr))));
    }
    Ok(arr.clone())
}

/// An array written in place, borrowed read-write (a read-only, misaligned or already borrowed one is
/// an error).
fn writable<'py>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
    shape: Option<&[usize]>,
) -> PyResult<PyReadwriteArrayDyn<'py, f32>> {
    let arr = float32(func, name, x, shape)?;
    let typed = arr
        .cast::<PyArrayDyn<f32>>()
        .map_err(|e| value_error(format!("{func}: {name}: {e}")))?;
    typed
        .try_readwrite()
        .map_err(|e| value_error(format!("{func}: {name} must be writeable and not aliased: {e}")))
}

fn read<'py>(
    func: &str,
    name: &str,
    x: &Bound<'py, PyAny>,
    shape: &[usize],
) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    let arr = float32(func, name, x, Some(shape))?;
    slice_of::<f32>(func, name, &arr)
}

fn mut_slice<'a>(
    func: &str,
    name: &str,
    rw: &'a mut PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<&'a mut [f32]> {
    rw.as_slice_mut()
        .map_err(|e| value_error(format!("{func}: {name}: {e}")))
}

fn hyper(func: &str, name: &str, v: f64) -> PyResult<f32> {
    if v.is_nan() {
        return Err(value_error(format!("{func}: {name} must be a number, got NaN")));
    }
    Ok(v as f32)
}

fn opt_hyper(func: &str, name: &str, v: Option<f64>) -> PyResult<Option<f32>> {
    v.map(|v| hyper(func, name, v)).transpose()
}

/// One SGD step in place: p −= lr·d, d = g (+ λ·p when weight_decay is given) passed through the
/// momentum buffer `buf` when it is given (`first`: the buffer is filled with d). `dampening` is
/// 1 − τ, None when τ = 0. The float hyper-parameters are rounded to float32, as NumPy 2 does.
#[pyfunction]
#[pyo3(signature = (p, g, buf, first, *, lr, momentum, dampening=None, weight_decay=None, nesterov=false,
                    threads=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgd_step<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    g: &Bound<'py, PyAny>,
    buf: Option<&Bound<'py, PyAny>>,
    first: bool,
    lr: f64,
    momentum: f64,
    dampening: Option<f64>,
    weight_decay: Option<f64>,
    nesterov: bool,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    const F: &str = "sgd_step";
    let h = Sgd {
        lr: hyper(F, "lr", lr)?,
        weight_decay: opt_hyper(F, "weight_decay", weight_decay)?,
        momentum: hyper(F, "momentum", momentum)?,
        dampening: opt_hyper(F, "dampening", dampening)?,
        nesterov,
    };
    let threads = resolve_threads(F, threads)?;
    let mut pw = writable(F, "p", p, None)?;
    let shape = pw.shape().to_vec();
    let gr = read(F, "g", g, &shape)?;
    let mut bw = buf
        .filter(|b| !b.is_none())
        .map(|b| writable(F, "buf", b, Some(&shape)))
        .transpose()?;
    let gs = gr.as_slice().map_err(|e| value_error(format!("{F}: g: {e}")))?;
    let ps = mut_slice(F, "p", &mut pw)?;
    let buffer = match bw.as_mut() {
        None => Buffer::None,
        Some(b) if first => Buffer::First(mut_slice(F, "buf", b)?),
        Some(b) => Buffer::Next(mut_slice(F, "buf", b)?),
    };
    py.detach(|| optim::sgd_step(&h, ps, gs, buffer, threads))
        .map_err(|e| value_error(format!("{F}: {e}")))
}

/// One Adam step in place on p and its moments m (`exp_avg`), v (`exp_avg_sq`). The scalars are the
/// NumPy step's: `l2` = λ (Adam) or `decay` = 1 − lr·λ (AdamW) or neither, 1 − β1, 1 − β2,
/// `bias2_sqrt` = √(1 − β2^t), `step_size` = lr/(1 − β1^t); each is rounded to float32.
#[pyfunction]
#[pyo3(signature = (p, m, v, g, *, beta1, one_minus_beta1, beta2, one_minus_beta2, bias2_sqrt, eps, step_size,
                    l2=None, decay=None, threads=None))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn adam_step<'py>(
    py: Python<'py>,
    p: &Bound<'py, PyAny>,
    m: &Bound<'py, PyAny>,
    v: &Bound<'py, PyAny>,
    g: &Bound<'py, PyAny>,
    beta1: f64,
    one_minus_beta1: f64,
    beta2: f64,
    one_minus_beta2: f64,
    bias2_sqrt: f64,
    eps: f64,
    step_size: f64,
    l2: Option<f64>,
    decay: Option<f64>,
    threads: Option<&Bound<'py, PyAny>>,
) -> PyResult<()> {
    const F: &str = "adam_step";
    if l2.is_some() && decay.is_some() {
        return Err(value_error(format!("{F}: give l2 or decay, not both")));
    }
    let h = Adam {
        l2: opt_hyper(F, "l2", l2)?,
        decay: opt_hyper(F, "decay", decay)?,
        beta1: hyper(F, "beta1", beta1)?,
        one_minus_beta1: hyper(F, "one_minus_beta1", one_minus_beta1)?,
        beta2: hyper(F, "beta2", beta2)?,
        one_minus_beta2: hyper(F, "one_minus_beta2", one_minus_beta2)?,
        bias2_sqrt: hyper(F, "bias2_sqrt", bias2_sqrt)?,
        eps: hyper(F, "eps", eps)?,
        step_size: hyper(F, "step_size", step_size)?,
    };
    let threads = resolve_threads(F, threads)?;
    let mut pw = writable(F, "p", p, None)?;
    let shape = pw.shape().to_vec();
    let mut mw = writable(F, "m", m, Some(&shape))?;
    let mut vw = writable(F, "v", v, Some(&shape))?;
    let gr = read(F, "g", g, &shape)?;
    let gs = gr.as_slice().map_err(|e| value_error(format!("{F}: g: {e}")))?;
    let (ps, ms, vs) = (
        mut_slice(F, "p", &mut pw)?,
        mut_slice(F, "m", &mut mw)?,
        mut_slice(F, "v", &mut vw)?,
    );
    py.detach(|| optim::adam_step(&h, ps, ms, vs, gs, threads))
        .map_err(|e| value_error(format!("{F}: {e}")))
}
